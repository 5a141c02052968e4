"""Workflow definitions: the pydantic models, parsing from JSON/YAML, and the JSON Schema.

Validation problems come back as a list of ``{"path", "stepId", "message"}``
entries, with paths in the document's own (camelCase) spelling, e.g.
``steps[2].needs[0]``.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, TypedDict, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import ComputedFieldInfo, FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from maestro.engine.dag import dag_errors
from maestro.engine.templating import TemplateSyntaxProblem, compile_value
from maestro.model.connector_steps import DatabaseStepConfig, HttpStepConfig
from maestro.model.email_step import EmailStepConfig
from maestro.model.jira_step import JiraStepConfig
from maestro.model.ml_step import MlStepConfig
from maestro.model.slack_step import SlackStepConfig

SCHEMA_ID = "https://maestro.dev/schemas/workflow.json"
MAX_DELAY_SECONDS = 2_678_400  # 31 days
# YAML aliases can expand a small document into billions of nodes.
_MAX_DOCUMENT_NODES = 100_000


def _field_title(name: str, _: FieldInfo | ComputedFieldInfo) -> str:
    return name.rstrip("_").replace("_", " ").capitalize()


class _Model(BaseModel):
    # strict: the JSON Schema says "number" and "string", so "5" or true must not
    # quietly pass as 5 or 1 here either.
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        field_title_generator=_field_title,
    )


class RetryPolicy(_Model):
    """How often and how patiently a failed step is retried."""

    max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts including the first.")
    initial_delay_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_delay_seconds: float = Field(default=60.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max_delay_seconds < self.initial_delay_seconds:
            raise PydanticCustomError(
                "retry_delays",
                "Retry delays are inverted: maxDelaySeconds ({maximum}) is smaller than "
                "initialDelaySeconds ({initial}); "
                "raise maxDelaySeconds or lower initialDelaySeconds.",
                {"maximum": self.max_delay_seconds, "initial": self.initial_delay_seconds},
            )
        return self


class StepBase(_Model):
    """Fields every step type has; a step type adds ``type`` and a typed ``actionConfig``."""

    id: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", description="Unique in the workflow."
    )
    name: str | None = Field(default=None, max_length=200)
    needs: list[str] = Field(
        default_factory=list, description="Ids of steps that must succeed first."
    )
    if_: str | None = Field(
        default=None, alias="if", description="Template; the step is skipped when it renders falsy."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=86_400)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class NoopStep(StepBase):
    """Does nothing; its output is its rendered actionConfig."""

    type: Literal["noop"]
    action_config: dict[str, Any] = Field(default_factory=dict)


def _delay_seconds(value: object) -> float | str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= MAX_DELAY_SECONDS:
            return float(value)
        raise PydanticCustomError(
            "delay_seconds_range",
            "'seconds' must be between 0 and {maximum} (31 days), got {value}.",
            {"maximum": MAX_DELAY_SECONDS, "value": value},
        )
    if isinstance(value, str) and "{{" in value:
        return value
    raise PydanticCustomError(
        "delay_seconds_type",
        "'seconds' must be a number of seconds or a template such as {example}.",
        {"example": "'{{ input.waitSeconds }}'"},
    )


DelaySeconds = Annotated[
    float | str,
    PlainValidator(
        _delay_seconds,
        json_schema_input_type=Annotated[float, Field(ge=0, le=MAX_DELAY_SECONDS)]
        | Annotated[str, Field(pattern=r"\{\{")],
    ),
]


class DelayConfig(_Model):
    """How long a delay step waits."""

    seconds: DelaySeconds = Field(description="Seconds to wait, or a template rendering to them.")


class DelayStep(StepBase):
    """Waits durably (no worker is held) before its dependents run."""

    type: Literal["delay"]
    action_config: DelayConfig


class ApprovalConfig(_Model):
    """The human task an approval step creates."""

    title: str = Field(min_length=1, max_length=500, description="Template.")
    description: str | None = None
    assignees: list[str] = Field(default_factory=list)


class ApprovalStep(StepBase):
    """Creates a human task and waits for it to be approved or rejected."""

    type: Literal["approval"]
    action_config: ApprovalConfig


class HttpStep(StepBase):
    """An HTTP request, with auth, retries on 408/429/5xx and a circuit breaker."""

    type: Literal["http"]
    action_config: HttpStepConfig


class DatabaseStep(StepBase):
    """One parameterised SQL statement against a postgres connection."""

    type: Literal["database"]
    action_config: DatabaseStepConfig


class MlStep(StepBase):
    """A model inference call (KServe v2 / Open Inference Protocol, or plain JSON)."""

    type: Literal["ml"]
    action_config: MlStepConfig


class JiraStep(StepBase):
    """Create, update, transition or search Jira Cloud issues (REST v3)."""

    type: Literal["jira"]
    action_config: JiraStepConfig


class SlackStep(StepBase):
    """Post a message (or upload a file) to Slack with the official SDK."""

    type: Literal["slack"]
    action_config: SlackStepConfig


class EmailStep(StepBase):
    """Send an email through an SMTP, SendGrid or Postmark connection."""

    type: Literal["email"]
    action_config: EmailStepConfig


# Add new step types here; the discriminator, the schema and the error
# messages listing valid types all follow from this one union.
StepDefinition = Annotated[
    NoopStep
    | DelayStep
    | ApprovalStep
    | EmailStep
    | SlackStep
    | JiraStep
    | HttpStep
    | DatabaseStep
    | MlStep,
    Field(discriminator="type"),
]
STEP_TYPES: tuple[str, ...] = tuple(
    get_args(member.model_fields["type"].annotation)[0]
    for member in get_args(get_args(StepDefinition)[0])
)


class WorkflowDefinition(_Model):
    """A workflow: a DAG of typed steps."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    steps: list[StepDefinition] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _steps_form_a_dag(self) -> Self:
        found = dag_errors([(step.id, step.needs) for step in self.steps])
        if found:
            details = [{"path": e.path, "stepId": e.step_id, "message": e.message} for e in found]
            # ctx carries the located errors so parse_workflow can report each
            # one at its own path; plain pydantic users still get a readable msg.
            raise PydanticCustomError(
                "workflow_dag",
                "{summary}",
                {"summary": " ".join(f"{e.path}: {e.message}" for e in found), "errors": details},
            )
        return self


class ErrorDetail(TypedDict):
    path: str
    stepId: str | None
    message: str


class WorkflowValidationError(Exception):
    """The document is not a valid workflow; ``errors`` says where and why."""

    def __init__(self, errors: list[ErrorDetail]) -> None:
        self.errors = errors
        shown = "; ".join(
            f"{e['path'] or '<document>'}: {e['message'].rstrip('.')}" for e in errors[:3]
        )
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(f"invalid workflow: {shown}{more}")


def parse_workflow(
    data: Mapping[str, Any] | str | bytes, *, content_type: str = "json"
) -> WorkflowDefinition:
    """Validate a workflow given as a mapping, JSON text or YAML text.

    ``content_type`` may be a short name or a media type; one naming neither JSON
    nor YAML (e.g. "auto") picks by the first character. Raises WorkflowValidationError.
    """
    document = data if isinstance(data, Mapping) else _load(data, content_type)
    if not isinstance(document, Mapping):
        raise _document_error("A workflow must be an object with 'name' and 'steps' fields.")
    try:
        # by_name=False: documents use the camelCase names that the schema publishes.
        workflow = WorkflowDefinition.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise WorkflowValidationError(_convert(exc, document)) from None
    problems = _template_errors(workflow)
    if problems:
        raise WorkflowValidationError(problems)
    return workflow


def workflow_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a workflow document."""
    schema = WorkflowDefinition.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "Maestro workflow definition",
    }


def _error(path: str, step_id: str | None, message: str) -> ErrorDetail:
    return {"path": path, "stepId": step_id, "message": message}


def _document_error(message: str) -> WorkflowValidationError:
    return WorkflowValidationError([_error("", None, message)])


def _load(data: str | bytes, content_type: str) -> Any:
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        message = f"The document is not UTF-8 text ({exc.reason} at byte {exc.start})."
        raise _document_error(message) from None
    kind = content_type.split(";")[0].strip().lower()
    if "yaml" in kind or "yml" in kind:
        return _load_yaml(text)
    if "json" in kind or text.lstrip().startswith(("{", "[")):
        return _load_json(text)
    return _load_yaml(text)


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        message = (
            f"The document is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        )
        raise _document_error(message) from None


def _load_yaml(text: str) -> Any:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        message = f"The document is not valid YAML: {problem}{where}."
        raise _document_error(message) from None
    if _node_count_exceeds(document, _MAX_DOCUMENT_NODES):
        message = (
            f"The document expands to more than {_MAX_DOCUMENT_NODES} values; use fewer aliases."
        )
        raise _document_error(message)
    return document


def _node_count_exceeds(document: Any, limit: int) -> bool:
    pending, count = [document], 0
    while pending:
        node = pending.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _template_errors(workflow: WorkflowDefinition) -> list[ErrorDetail]:
    errors = []
    for i, step in enumerate(workflow.steps):
        config = step.action_config
        templated = {
            "if": step.if_,
            "actionConfig": config.model_dump(by_alias=True)
            if isinstance(config, BaseModel)
            else config,
        }
        for field, value in templated.items():
            try:
                compile_value(value, field)
            except TemplateSyntaxProblem as exc:
                errors.append(_error(f"steps[{i}].{exc.path}", step.id, _sentence(exc.message)))
    return errors


def _convert(exc: ValidationError, document: Mapping[str, Any]) -> list[ErrorDetail]:
    errors: list[ErrorDetail] = []
    for error in exc.errors(include_url=False):
        if error["type"] == "workflow_dag":
            errors.extend(error.get("ctx", {})["errors"])
            continue
        loc, model = _resolve(error["loc"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("type")
        errors.append(_error(_path(loc), _step_id(loc, document), _message(error, loc, model)))
    return errors


def _path(loc: list[int | str]) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return path.lstrip(".")


def _resolve(loc: tuple[int | str, ...]) -> tuple[list[int | str], type[BaseModel] | None]:
    """Drop the union tags pydantic puts in a loc; also return the model holding its last part."""
    tp: Any = WorkflowDefinition
    parts: list[int | str] = []
    owner: type[BaseModel] | None = None
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, str) and get_origin(tp) in (Union, types.UnionType):
            member = _union_member(tp, part)
            if member is not None:
                tp = member
                continue
        parts.append(part)
        owner = tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
        if owner is not None:
            field = _field_by_alias(owner, part)
            tp = field.annotation if field else None
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            tp = None
    return parts, owner


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_member(union: Any, tag: str) -> type[BaseModel] | None:
    for member in get_args(union):
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get("type")
            if field is not None and tag in get_args(field.annotation):
                return member
    return None


def _field_by_alias(model: type[BaseModel], name: int | str) -> FieldInfo | None:
    for field_name, field in model.model_fields.items():
        if name in (field.alias, field_name):
            return field
    return None


def _step_id(loc: list[int | str], document: Mapping[str, Any]) -> str | None:
    if len(loc) < 2 or loc[0] != "steps" or not isinstance(loc[1], int):
        return None
    steps = document.get("steps")
    if not isinstance(steps, list) or loc[1] >= len(steps) or not isinstance(steps[loc[1]], dict):
        return None
    step_id = steps[loc[1]].get("id")
    return step_id if isinstance(step_id, str) else None


def _message(error: ErrorDetails, loc: list[int | str], model: type[BaseModel] | None) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    field = str(loc[-1]) if loc else ""
    subject = f"'{field}'" if loc and isinstance(loc[-1], str) else _path(loc) or "The workflow"
    if kind == "missing":
        return f"'{field}' is required; add it."
    if kind == "extra_forbidden":
        allowed = ", ".join(f.alias or n for n, f in model.model_fields.items()) if model else ""
        hint = f"use one of: {allowed}" if allowed else "check its spelling"
        return f"Unknown field '{field}'; remove it or {hint}."
    if kind == "union_tag_invalid":
        return f"Unknown step type '{ctx['tag']}'; use one of: {', '.join(STEP_TYPES)}."
    if kind == "union_tag_not_found":
        return f"Every step needs a 'type'; use one of: {', '.join(STEP_TYPES)}."
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{subject} must be an object (a mapping of field names to values)."
    if kind == "string_pattern_mismatch" and field == "id":
        return (
            "A step id must start with a letter or '_' and contain only letters, digits, "
            f"'_' and '-' (at most 64 characters), got {error['input']!r}."
        )
    message = error["msg"].removeprefix("Value error, ")
    # pydantic says "Input should …", "String should …"; name the field instead.
    noun, should, rest = message.partition(" should ")
    if should and " " not in noun:
        message = f"{subject} should {rest}"
        if isinstance(error["input"], int | float | str) and len(repr(error["input"])) <= 40:
            message += f", got {error['input']!r}"
    return _sentence(message)


def _sentence(message: str) -> str:
    message = message[:1].upper() + message[1:]
    return message if message.endswith((".", "?", "!")) else f"{message}."
