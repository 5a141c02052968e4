"""Typed ``actionConfig`` of the ``ml`` step (a call to a model server).

Values may be templates: a string holding ``{{``/``{%``/``{#`` is accepted wherever a value is
expected (a tensor's ``shape`` or ``data``, or one of their elements) and the tensor checks are
skipped until it is rendered; the handler validates the rendered config again with this same
model, when every check applies.

Tensor checks (KServe v2 / Open Inference Protocol): ``datatype`` is one of :data:`DATATYPES`;
``shape`` is a list of non-negative integers; ``data`` is a list, flat or nested (row-major),
with exactly ``prod(shape)`` elements; elements fit their datatype (``BOOL``: true/false;
integers in range; ``FP*``: finite numbers; ``BYTES``: strings). Text produced by a template is
converted ("5" -> 5 for ``INT32``, "true" -> true for ``BOOL``). After validation ``data`` is
flat and ``shape`` holds integers.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from maestro.model.connections import NAME_PATTERN

__all__ = [
    "DATATYPES",
    "InferTensor",
    "MlStepConfig",
    "RequestedOutput",
    "check_tensor",
    "is_template",
]

DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

_INT_RANGES: dict[str, tuple[int, int]] = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
_FP_LIMITS: dict[str, float] = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": math.inf}
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
MAX_TENSOR_ELEMENTS = 10_000_000
_PATH_SEGMENT = re.compile(r"^[^.\s]+$")


def is_template(value: Any) -> bool:
    """Whether ``value`` holds a template string anywhere (it is checked once rendered)."""
    if isinstance(value, str):
        return any(marker in value for marker in _TEMPLATE_MARKERS)
    if isinstance(value, list):
        return any(is_template(item) for item in value)
    if isinstance(value, dict):
        return any(is_template(item) for item in value.values())
    return False


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    pending: list[Any] = [iter(data)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, list):
                pending.append(iter(item))
                break
            flat.append(item)
            if len(flat) > MAX_TENSOR_ELEMENTS:
                raise ValueError(f"more than {MAX_TENSOR_ELEMENTS} elements")
        else:
            pending.pop()
    return flat


def _element(datatype: str, value: Any, index: int) -> Any:
    where = f"data element {index}"
    if datatype == "BOOL":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{where} must be true or false for BOOL")
    if datatype == "BYTES":
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} must be a string for BYTES")
    if datatype in _INT_RANGES:
        number: Any = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                raise ValueError(f"{where} must be an integer for {datatype}") from None
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"{where} must be an integer for {datatype}")
        low, high = _INT_RANGES[datatype]
        if not low <= number <= high:
            raise ValueError(f"{where} is out of range for {datatype} ({low}..{high})")
        return number
    # FP16, FP32, FP64
    real: Any = value
    if isinstance(value, str):
        try:
            real = float(value.strip())
        except ValueError:
            raise ValueError(f"{where} must be a number for {datatype}") from None
    if isinstance(real, bool) or not isinstance(real, int | float):
        raise ValueError(f"{where} must be a number for {datatype}")
    if isinstance(real, float) and not math.isfinite(real):
        raise ValueError(f"{where} must be a finite number for {datatype}")
    if abs(real) > _FP_LIMITS[datatype]:
        raise ValueError(f"{where} is out of range for {datatype}")
    return real


def check_tensor(shape: Any, datatype: str, data: Any) -> tuple[list[int], list[Any]]:
    """The concrete shape and the flat, converted data of a tensor; ValueError if invalid."""
    if datatype not in DATATYPES:
        raise ValueError(f"datatype must be one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list):
        raise ValueError("shape must be a list of non-negative integers")
    dims: list[int] = []
    for dim in shape:
        if isinstance(dim, str) and dim.strip().isdigit():
            dim = int(dim.strip())
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ValueError("shape must be a list of non-negative integers")
        dims.append(dim)
    if not isinstance(data, list):
        raise ValueError("data must be a list (flat or nested, row-major)")
    expected = math.prod(dims)
    if expected > MAX_TENSOR_ELEMENTS:
        raise ValueError(f"shape {dims} has more than {MAX_TENSOR_ELEMENTS} elements")
    flat = _flatten(data)
    if len(flat) != expected:
        raise ValueError(
            f"shape {dims} needs {expected} element{'s' if expected != 1 else ''}, "
            f"data has {len(flat)}"
        )
    return dims, [_element(datatype, value, i) for i, value in enumerate(flat)]


class _StepConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class InferTensor(_StepConfig):
    """One KServe v2 input tensor."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[int | str] | str = Field(
        description="Dimensions, e.g. [1, 4]; prod(shape) must equal the number of elements."
    )
    datatype: Datatype
    data: list[Any] | str = Field(description="Elements, flat or nested in row-major order.")
    parameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if is_template(self.shape) or is_template(self.data):
            return self  # checked once rendered
        dims, flat = check_tensor(self.shape, self.datatype, self.data)
        self.shape = list[int | str](dims)
        self.data = flat
        return self


class RequestedOutput(_StepConfig):
    """An output the server should return (KServe v2 ``outputs``)."""

    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


class MlStepConfig(_StepConfig):
    """A call to a model server through an ``ml`` connection.

    ``kserve-v2`` connections: ``POST {baseUrl}/v2/models/{model}[/versions/{version}]/infer``
    with ``inputs`` (and optional ``parameters`` and ``outputs``). ``json`` connections:
    ``POST {baseUrl}{path}`` with ``payload`` as the body.

    ``confidencePath`` is a dotted path into the response (``outputs.1.data.0``,
    ``predictions.0.score``); a number segment indexes a list, and a name segment applied to a
    list picks its element whose ``name`` is that name (``outputs.probabilities.data.0``).
    Without it the confidence is, for a KServe response: the first element of an output named
    ``confidence``; else the largest value of the first output whose name contains ``prob``;
    else the largest value of the first FP16/FP32/FP64 output; else null. For a ``json``
    response: a top-level numeric ``confidence``, else the same rule over a top-level
    ``outputs`` list of tensors, else null.
    """

    connection: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=256)
    version: str | None = Field(default=None, min_length=1, max_length=256)
    inputs: list[InferTensor] | None = Field(
        default=None, description="KServe v2 input tensors (kserve-v2 connections)."
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="KServe v2 request parameters."
    )
    outputs: list[RequestedOutput] | None = Field(
        default=None, description="Outputs to return (default: all)."
    )
    payload: Any = Field(default=None, description="The JSON body (json connections).")
    path: str = Field(
        default="", max_length=2000, description="Appended to baseUrl (json connections)."
    )
    confidence_path: str | None = Field(default=None, min_length=1, max_length=500)

    @field_validator("outputs", mode="before")
    @classmethod
    def _output_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        if value == "" or is_template(value):
            return value
        if not value.startswith("/") or "://" in value:
            raise ValueError("path must be empty or start with '/' (it goes under baseUrl)")
        if any(part in (".", "..") for part in value.split("?")[0].split("/")):
            raise ValueError("path must not contain '.' or '..' segments")
        return value

    @field_validator("confidence_path")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is None or is_template(value):
            return value
        if not all(_PATH_SEGMENT.match(segment) for segment in value.split(".")):
            raise ValueError(
                "confidencePath must be a dotted path such as outputs.1.data.0 "
                "(no empty segments or spaces)"
            )
        return value

    @model_validator(mode="after")
    def _one_protocol(self) -> Self:
        if self.inputs is not None and self.payload is not None:
            raise ValueError(
                "give inputs (kserve-v2 connections) or payload (json connections), not both"
            )
        return self
