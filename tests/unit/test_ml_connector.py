"""The ml connector's pure parts: tensor validation, confidence rules, dotted paths, describe."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from maestro.connectors.ml import describe, extract_confidence, infer_path, resolve_path
from maestro.model.ml_step import MlStepConfig, check_tensor


def step(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "connection": "models",
        "model": "classifier",
        "inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
    }
    config.update(overrides)
    return config


# --- tensors ---


def test_valid_tensor_is_flattened_and_converted() -> None:
    assert check_tensor([2, 2], "FP32", [[1, 2.5], ["3", 4]]) == ([2, 2], [1, 2.5, 3.0, 4])
    assert check_tensor(["2"], "INT8", ["-5", 7.0]) == ([2], [-5, 7])
    assert check_tensor([2], "BOOL", [True, "false"]) == ([2], [True, False])
    assert check_tensor([1], "BYTES", ["hello"]) == ([1], ["hello"])
    assert check_tensor([], "FP64", [1.5]) == ([], [1.5])  # a scalar
    assert check_tensor([0, 3], "INT32", []) == ([0, 3], [])


@pytest.mark.parametrize(
    ("shape", "datatype", "data", "message"),
    [
        ([1, 3], "FP32", [1, 2], "shape [1, 3] needs 3 elements, data has 2"),
        ([2], "FP32", [1, 2, 3], "needs 2 elements, data has 3"),
        ([2], "FP128", [1, 2], "datatype must be one of"),
        ([-1], "FP32", [], "non-negative integers"),
        ([1.5], "FP32", [1], "non-negative integers"),
        ("2", "FP32", [1, 2], "shape must be a list"),
        ([1], "FP32", "1", "data must be a list"),
        ([1], "UINT8", [256], "out of range for UINT8"),
        ([1], "UINT16", [-1], "out of range for UINT16"),
        ([1], "INT8", [-129], "out of range for INT8"),
        ([1], "INT64", [2**63], "out of range for INT64"),
        ([1], "INT32", [1.5], "must be an integer"),
        ([1], "INT32", [True], "must be an integer"),
        ([1], "INT32", ["x"], "must be an integer"),
        ([1], "FP16", [70000], "out of range for FP16"),
        ([1], "FP32", [1e39], "out of range for FP32"),
        ([1], "FP64", [float("nan")], "finite"),
        ([1], "FP32", [False], "must be a number"),
        ([1], "FP32", ["abc"], "must be a number"),
        ([1], "BOOL", [1], "true or false"),
        ([1], "BYTES", [1], "must be a string"),
    ],
)
def test_invalid_tensors(shape: Any, datatype: str, data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_tensor(shape, datatype, data)


def test_step_model_checks_tensors() -> None:
    with pytest.raises(ValidationError, match="needs 3 elements, data has 2"):
        MlStepConfig.model_validate(
            step(inputs=[{"name": "f", "shape": [3], "datatype": "FP32", "data": [1, 2]}])
        )
    with pytest.raises(ValidationError):
        MlStepConfig.model_validate(
            step(inputs=[{"name": "f", "shape": [1], "datatype": "FLOAT", "data": [1]}])
        )
    parsed = MlStepConfig.model_validate(
        step(inputs=[{"name": "f", "shape": [2, 1], "datatype": "INT64", "data": [["1"], [2]]}])
    )
    assert parsed.inputs is not None
    assert parsed.inputs[0].data == [1, 2]


def test_templates_are_checked_after_rendering() -> None:
    # At definition time, templated shape/data pass; rendered, they are checked.
    MlStepConfig.model_validate(
        step(
            inputs=[
                {"name": "f", "shape": "{{ input.shape }}", "datatype": "FP32", "data": [1]},
                {"name": "g", "shape": [2], "datatype": "FP32", "data": "{{ input.x }}"},
                {"name": "h", "shape": [3], "datatype": "FP32", "data": ["{{ input.y }}"]},
            ]
        )
    )
    with pytest.raises(ValidationError, match="data must be a list"):
        MlStepConfig.model_validate(
            step(inputs=[{"name": "g", "shape": [2], "datatype": "FP32", "data": "1,2"}])
        )


def test_step_model_rules() -> None:
    with pytest.raises(ValidationError, match="not both"):
        MlStepConfig.model_validate(step(payload={"x": 1}))
    with pytest.raises(ValidationError, match="start with '/'"):
        MlStepConfig.model_validate({"connection": "m", "model": "x", "path": "predict"})
    with pytest.raises(ValidationError, match="start with '/'"):
        MlStepConfig.model_validate({"connection": "m", "model": "x", "path": "http://evil/"})
    with pytest.raises(ValidationError, match=r"'\.\.'"):
        MlStepConfig.model_validate({"connection": "m", "model": "x", "path": "/a/../b"})
    with pytest.raises(ValidationError, match="dotted path"):
        MlStepConfig.model_validate(step(confidencePath="outputs..data"))
    with pytest.raises(ValidationError, match="Extra inputs"):
        MlStepConfig.model_validate(step(unknown=1))
    parsed = MlStepConfig.model_validate(step(outputs=["probabilities", {"name": "label"}]))
    assert parsed.outputs is not None
    assert [o.name for o in parsed.outputs] == ["probabilities", "label"]
    assert parsed.model_dump(by_alias=True)["confidencePath"] is None


# --- dotted paths and confidence ---

KSERVE = {
    "model_name": "classifier",
    "outputs": [
        {"name": "label", "shape": [1], "datatype": "INT64", "data": [0]},
        {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]},
    ],
}


def test_resolve_path() -> None:
    assert resolve_path(KSERVE, "outputs.1.data.0") == 0.25
    assert resolve_path(KSERVE, "outputs.-1.data.-1") == 0.75
    assert resolve_path(KSERVE, "outputs.probabilities.data.1") == 0.75
    assert resolve_path(KSERVE, "model_name") == "classifier"
    assert resolve_path({"a": {"0": 5}}, "a.0") == 5  # a number segment is a key in an object
    for missing in ("outputs.2", "outputs.nope", "outputs.1.data.9", "x", "model_name.y"):
        with pytest.raises(KeyError):
            resolve_path(KSERVE, missing)


def test_confidence_explicit_output_wins() -> None:
    response = {
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "data": [0.9, 0.1]},
            {"name": "Confidence", "datatype": "FP32", "data": [0.42, 0.99]},
        ]
    }
    assert extract_confidence(response, None, "kserve-v2") == 0.42


def test_confidence_from_probabilities_is_the_largest() -> None:
    assert extract_confidence(KSERVE, None, "kserve-v2") == 0.75
    nested = {"outputs": [{"name": "class_probs", "datatype": "FP64", "data": [[0.1], [0.6]]}]}
    assert extract_confidence(nested, None, "kserve-v2") == 0.6


def test_confidence_falls_back_to_first_fp_output_then_none() -> None:
    response = {
        "outputs": [
            {"name": "label", "datatype": "INT64", "data": [7]},
            {"name": "logit", "datatype": "FP16", "data": [0.3, 0.8]},
            {"name": "other", "datatype": "FP32", "data": [5.0]},
        ]
    }
    assert extract_confidence(response, None, "kserve-v2") == 0.8
    only_ints = {"outputs": [{"name": "label", "datatype": "INT64", "data": [7]}]}
    assert extract_confidence(only_ints, None, "kserve-v2") is None
    assert extract_confidence({"outputs": []}, None, "kserve-v2") is None
    assert extract_confidence(None, None, "kserve-v2") is None


def test_confidence_path() -> None:
    assert extract_confidence(KSERVE, "outputs.1.data.0", "kserve-v2") == 0.25
    body = {"predictions": [{"label": "cat", "score": 0.91}]}
    assert extract_confidence(body, "predictions.0.score", "json") == 0.91
    with pytest.raises(ValueError, match="no '3'"):
        extract_confidence(body, "predictions.3.score", "json")
    with pytest.raises(ValueError, match="holds a str"):
        extract_confidence(body, "predictions.0.label", "json")


def test_confidence_json_defaults() -> None:
    assert extract_confidence({"confidence": 0.5, "x": 1}, None, "json") == 0.5
    assert extract_confidence({"confidence": "high"}, None, "json") is None
    assert extract_confidence({"outputs": KSERVE["outputs"]}, None, "json") == 0.75
    assert extract_confidence({"predictions": [0.9]}, None, "json") is None
    assert extract_confidence([1, 2], None, "json") is None


# --- urls and describe ---


def test_infer_path() -> None:
    assert infer_path("classifier", None) == "/v2/models/classifier/infer"
    assert infer_path("a b", "2") == "/v2/models/a%20b/versions/2/infer"
    for bad in ("..", "a/b", "a\\b", "x\n"):
        with pytest.raises(ValueError, match=r"actionConfig\.model must not be"):
            infer_path(bad, None)
    with pytest.raises(ValueError, match=r"actionConfig\.version must not be"):
        infer_path("ok", "../1")


def test_describe_kserve() -> None:
    described = describe(step(version="2", outputs=["probabilities"], parameters={"k": 1}))
    assert described == {
        "kind": "ml",
        "connection": "models",
        "model": "classifier",
        "version": "2",
        "method": "POST",
        "protocol": "kserve-v2",
        "url": "/v2/models/classifier/versions/2/infer under connection 'models'",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "elements": 3}],
        "outputs": ["probabilities"],
        "parameters": ["k"],
        "headerNames": ["Idempotency-Key", "X-Model-Name", "X-Model-Version"],
        "auth": "from connection 'models', if it has one",
        "confidence": "default rule",
    }


def test_describe_json_and_templates() -> None:
    described = describe(
        {
            "connection": "models",
            "model": "sentiment",
            "payload": {"instances": ["{{ input.text }}"]},
            "path": "/predict",
            "confidencePath": "predictions.0.score",
        }
    )
    assert described["protocol"] == "json"
    assert described["url"] == "/predict under connection 'models'"
    assert described["confidence"] == "predictions.0.score"
    assert "payload" not in described  # no data in descriptions
    templated = describe(
        step(
            model="{{ input.model }}",
            inputs=[{"name": "f", "shape": [2], "datatype": "FP32", "data": "{{ input.x }}"}],
        )
    )
    assert templated["inputs"][0]["elements"] == "templated"


def test_describe_invalid_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"actionConfig\.connection"):
        describe({"model": "x"})
