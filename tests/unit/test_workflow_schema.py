"""The published JSON Schema: committed, current, and in agreement with the models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from maestro.model.schema_export import schema_text
from maestro.model.workflow import (
    SCHEMA_ID,
    STEP_TYPES,
    WorkflowValidationError,
    parse_workflow,
    workflow_json_schema,
)

COMMITTED = Path(__file__).parents[2] / "docs" / "workflow.schema.json"

EXAMPLES: list[dict[str, Any]] = [
    {"name": "smallest", "steps": [{"id": "only", "type": "noop"}]},
    {
        "name": "order-alert",
        "description": "Tell ops about large orders",
        "steps": [
            {
                "id": "fetch",
                "type": "noop",
                "name": "Fetch the order",
                "actionConfig": {"orderId": "{{ input.orderId }}", "nested": {"a": [1, None]}},
                "timeoutSeconds": 5,
                "retry": {"maxAttempts": 4, "initialDelaySeconds": 0.2, "maxDelaySeconds": 30},
            },
            {"id": "wait", "type": "delay", "needs": ["fetch"], "actionConfig": {"seconds": 90}},
            {
                "id": "wait_more",
                "type": "delay",
                "needs": ["wait"],
                "actionConfig": {"seconds": "{{ input.extraWait }}"},
            },
            {
                "id": "approve",
                "type": "approval",
                "needs": ["wait_more"],
                "if": "{{ steps.fetch.output.total > 1000 }}",
                "actionConfig": {
                    "title": "Ship {{ input.orderId }}?",
                    "description": None,
                    "assignees": ["ops@example.com"],
                },
            },
        ],
    },
]


def one_step(**step: Any) -> dict[str, Any]:
    return {"name": "w", "steps": [{"id": "a", "type": "noop", **step}]}


def config(step_type: str, **action_config: Any) -> dict[str, Any]:
    return one_step(type=step_type, actionConfig=action_config)


# Each is rejected by the models too; the schema must agree.
INVALID: list[tuple[str, dict[str, Any]]] = [
    ("unknown top-level field", {**EXAMPLES[0], "owner": "me"}),
    ("unknown step field", one_step(x=1)),
    ("snake_case field", one_step(timeout_seconds=1)),
    ("unknown step type", one_step(type="telegram")),
    ("missing type", {"name": "w", "steps": [{"id": "a"}]}),
    ("bad id", one_step(id="1a")),
    ("no steps", {"name": "w", "steps": []}),
    ("empty name", {**EXAMPLES[0], "name": ""}),
    ("zero timeout", one_step(timeoutSeconds=0)),
    ("string timeout", one_step(timeoutSeconds="5")),
    ("retry field", one_step(retry={"tries": 2})),
    ("delay text", config("delay", seconds="5")),
    ("delay too long", config("delay", seconds=3e6)),
    ("approval without title", config("approval")),
    ("approval extra field", config("approval", title="t", cc=[])),
]

ANNOTATIONS = {"title", "description", "default", "discriminator", "$schema", "$id", "$defs"}


def validate(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    """A small JSON Schema validator for exactly the keywords our schema uses.

    jsonschema is not a dependency of this project; an unexpected keyword fails the
    test instead of being ignored, so this cannot silently accept too much.
    """
    unknown = set(schema) - ANNOTATIONS - set(_KEYWORDS) - {"$ref"}
    assert not unknown, f"the test validator does not understand {unknown}"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(instance, root["$defs"][name], root)
    problems: list[str] = []
    for keyword, check in _KEYWORDS.items():
        if keyword in schema:
            problems += check(instance, schema, root)
    return problems


def _type(instance: Any, schema: dict[str, Any], _: dict[str, Any]) -> list[str]:
    is_number = isinstance(instance, int | float) and not isinstance(instance, bool)
    matches = {
        "object": isinstance(instance, dict),
        "array": isinstance(instance, list),
        "string": isinstance(instance, str),
        "number": is_number,
        "integer": is_number and float(instance).is_integer(),
        "boolean": isinstance(instance, bool),
        "null": instance is None,
    }[schema["type"]]
    return [] if matches else [f"{instance!r} is not of type {schema['type']}"]


def _properties(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    if not isinstance(instance, dict):
        return []
    problems = [f"missing {key}" for key in schema.get("required", []) if key not in instance]
    for key, value in instance.items():
        if key in schema["properties"]:
            problems += validate(value, schema["properties"][key], root)
        elif schema.get("additionalProperties", True) is False:
            problems.append(f"additional property {key!r}")
    return problems


def _items(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    if not isinstance(instance, list):
        return []
    return [problem for item in instance for problem in validate(item, schema["items"], root)]


def _bound(keyword: str, ok: Any) -> Any:
    def check(instance: Any, schema: dict[str, Any], _: dict[str, Any]) -> list[str]:
        applies = {
            "string": isinstance(instance, str),
            "array": isinstance(instance, list),
            "number": isinstance(instance, int | float) and not isinstance(instance, bool),
        }
        kind = {"Length": "string", "Items": "array"}.get(keyword[3:], "number")
        if not applies[kind] or ok(instance, schema[keyword]):
            return []
        return [f"{instance!r} fails {keyword}={schema[keyword]}"]

    return check


def _any_of(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    passing = [s for s in schema["anyOf"] if not validate(instance, s, root)]
    return [] if passing else [f"{instance!r} matches none of anyOf"]


def _one_of(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> list[str]:
    passing = [s for s in schema["oneOf"] if not validate(instance, s, root)]
    return [] if len(passing) == 1 else [f"{instance!r} matches {len(passing)} of oneOf"]


_KEYWORDS = {
    "type": _type,
    "properties": _properties,
    "required": lambda *_: [],  # checked with properties
    "additionalProperties": lambda *_: [],  # checked with properties
    "items": _items,
    "minLength": _bound("minLength", lambda v, b: len(v) >= b),
    "maxLength": _bound("maxLength", lambda v, b: len(v) <= b),
    "minItems": _bound("minItems", lambda v, b: len(v) >= b),
    "maxItems": _bound("maxItems", lambda v, b: len(v) <= b),
    "minimum": _bound("minimum", lambda v, b: v >= b),
    "maximum": _bound("maximum", lambda v, b: v <= b),
    "exclusiveMinimum": _bound("exclusiveMinimum", lambda v, b: v > b),
    "pattern": lambda v, s, _: (
        [] if not isinstance(v, str) or re.search(s["pattern"], v) else [f"{v!r} fails pattern"]
    ),
    "const": lambda v, s, _: [] if v == s["const"] else [f"{v!r} is not {s['const']!r}"],
    "anyOf": _any_of,
    "oneOf": _one_of,
}


def test_the_committed_schema_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == schema_text(), (
        "docs/workflow.schema.json is out of date; regenerate it with "
        "`uv run python -m maestro.model.schema_export > docs/workflow.schema.json`"
    )


def test_schema_text_is_the_schema() -> None:
    assert json.loads(schema_text()) == workflow_json_schema()
    assert schema_text().endswith("}\n")


def test_schema_identity() -> None:
    schema = workflow_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID == "https://maestro.dev/schemas/workflow.json"
    assert schema["title"] == "Maestro workflow definition"
    assert schema["required"] == ["name", "steps"]


def test_every_object_refuses_unknown_fields_except_noop_config() -> None:
    schema = workflow_json_schema()
    objects = [("root", schema), *schema["$defs"].items()]
    for name, definition in objects:
        assert definition["additionalProperties"] is False, name
    noop_config = schema["$defs"]["NoopStep"]["properties"]["actionConfig"]
    assert noop_config["additionalProperties"] is True


def test_steps_are_a_union_discriminated_by_type() -> None:
    steps = workflow_json_schema()["properties"]["steps"]
    assert steps["items"]["discriminator"]["propertyName"] == "type"
    assert set(steps["items"]["discriminator"]["mapping"]) == set(STEP_TYPES)
    assert len(steps["items"]["oneOf"]) == len(STEP_TYPES)


def test_the_if_field_is_published_under_its_json_name() -> None:
    step = workflow_json_schema()["$defs"]["NoopStep"]["properties"]
    assert "if" in step
    assert "if_" not in step
    assert "actionConfig" in step


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["name"])
def test_the_schema_and_the_models_accept_the_examples(example: dict[str, Any]) -> None:
    schema = workflow_json_schema()
    assert validate(example, schema, schema) == []
    parse_workflow(example)


@pytest.mark.parametrize(("case", "document"), INVALID, ids=[case for case, _ in INVALID])
def test_the_schema_and_the_models_reject_the_same_mistakes(
    case: str, document: dict[str, Any]
) -> None:
    schema = workflow_json_schema()
    assert validate(document, schema, schema) != [], case
    with pytest.raises(WorkflowValidationError):
        parse_workflow(document)


def test_the_test_validator_is_not_trivially_permissive() -> None:
    schema = workflow_json_schema()
    assert validate({"name": "w", "steps": [{"id": "a", "type": "noop", "x": 1}]}, schema, schema)
    assert validate(math.inf, {"type": "number", "maximum": 5}, schema)
    assert validate(True, {"type": "number"}, schema)
    assert validate("a", {"anyOf": [{"type": "number"}, {"type": "null"}]}, schema)
