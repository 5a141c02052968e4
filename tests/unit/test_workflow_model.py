"""Parsing workflow documents: what is accepted, and what a user is told when it is not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from maestro.model.workflow import (
    STEP_TYPES,
    ApprovalConfig,
    ApprovalStep,
    DelayStep,
    NoopStep,
    RetryPolicy,
    WorkflowDefinition,
    WorkflowValidationError,
    parse_workflow,
)

ORDER_ALERT: dict[str, Any] = {
    "name": "order-alert",
    "description": "Tell ops about large orders",
    "steps": [
        {
            "id": "fetch",
            "type": "noop",
            "actionConfig": {"orderId": "{{ input.orderId }}", "total": 1200},
            "timeoutSeconds": 5,
            "retry": {"maxAttempts": 4, "initialDelaySeconds": 0.2, "maxDelaySeconds": 30},
        },
        {"id": "cool-off", "type": "delay", "needs": ["fetch"], "actionConfig": {"seconds": 90}},
        {
            "id": "approve",
            "type": "approval",
            "needs": ["cool-off"],
            "if": "{{ steps.fetch.output.total > 1000 }}",
            "actionConfig": {
                "title": "Ship order {{ input.orderId }}?",
                "assignees": ["ops@example.com"],
            },
        },
    ],
}

ORDER_ALERT_YAML = """\
name: order-alert
description: Tell ops about large orders
steps:
  - id: fetch
    type: noop
    actionConfig:
      orderId: "{{ input.orderId }}"
      total: 1200
    timeoutSeconds: 5
    retry: {maxAttempts: 4, initialDelaySeconds: 0.2, maxDelaySeconds: 30}
  - id: cool-off
    type: delay
    needs: [fetch]
    actionConfig: {seconds: 90}
  - id: approve
    type: approval
    needs: [cool-off]
    if: "{{ steps.fetch.output.total > 1000 }}"
    actionConfig:
      title: "Ship order {{ input.orderId }}?"
      assignees: [ops@example.com]
"""


def errors_of(data: Any, **kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(data, **kwargs)
    return [dict(error) for error in caught.value.errors]


def workflow(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "w", **fields, "steps": list(steps)}


def noop(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "noop", **fields}


def test_a_mapping_parses_into_typed_steps() -> None:
    parsed = parse_workflow(ORDER_ALERT)
    assert parsed.name == "order-alert"
    fetch, cool_off, approve = parsed.steps
    assert isinstance(fetch, NoopStep)
    assert fetch.action_config == {"orderId": "{{ input.orderId }}", "total": 1200}
    assert fetch.timeout_seconds == 5.0
    assert fetch.retry == RetryPolicy(
        max_attempts=4, initial_delay_seconds=0.2, max_delay_seconds=30
    )
    assert isinstance(cool_off, DelayStep)
    assert cool_off.action_config.seconds == 90.0
    assert cool_off.needs == ["fetch"]
    assert isinstance(approve, ApprovalStep)
    assert approve.if_ == "{{ steps.fetch.output.total > 1000 }}"
    assert approve.action_config == ApprovalConfig(
        title="Ship order {{ input.orderId }}?", assignees=["ops@example.com"]
    )


def test_json_text_yaml_text_and_bytes_give_the_same_workflow() -> None:
    expected = parse_workflow(ORDER_ALERT)
    assert parse_workflow(json.dumps(ORDER_ALERT)) == expected
    assert parse_workflow(json.dumps(ORDER_ALERT).encode()) == expected
    assert parse_workflow(b"\xef\xbb\xbf" + json.dumps(ORDER_ALERT).encode()) == expected
    assert parse_workflow(ORDER_ALERT_YAML, content_type="yaml") == expected
    assert parse_workflow(ORDER_ALERT_YAML.encode(), content_type="application/x-yaml") == expected
    assert parse_workflow(ORDER_ALERT_YAML, content_type="text/yaml; charset=utf-8") == expected


@pytest.mark.parametrize("content_type", ["auto", "", "text/plain"])
def test_without_a_json_or_yaml_content_type_the_syntax_is_detected(content_type: str) -> None:
    expected = parse_workflow(ORDER_ALERT)
    assert parse_workflow(ORDER_ALERT_YAML, content_type=content_type) == expected
    assert parse_workflow(json.dumps(ORDER_ALERT), content_type=content_type) == expected


def test_defaults() -> None:
    parsed = parse_workflow(workflow(noop("only")))
    assert parsed.description == ""
    [step] = parsed.steps
    assert step.name is None
    assert step.needs == []
    assert step.if_ is None
    assert step.timeout_seconds == 30.0
    assert step.retry == RetryPolicy(
        max_attempts=3, initial_delay_seconds=1.0, max_delay_seconds=60
    )
    assert step.action_config == {}


def test_the_dumped_document_parses_back_to_the_same_workflow() -> None:
    parsed = parse_workflow(ORDER_ALERT)
    assert parse_workflow(parsed.model_dump(by_alias=True, mode="json")) == parsed
    assert parse_workflow(parsed.model_dump(by_alias=True, exclude_none=True)) == parsed


def test_python_code_may_use_field_names() -> None:
    step = NoopStep(id="a", type="noop", if_="{{ input.x }}", timeout_seconds=3)
    built = WorkflowDefinition(name="w", steps=[step])
    assert built.steps[0].if_ == "{{ input.x }}"
    assert built.model_dump(by_alias=True)["steps"][0]["if"] == "{{ input.x }}"


def test_documents_must_use_the_published_camel_case_names() -> None:
    errors = errors_of(workflow(noop("a", timeout_seconds=3)))
    assert errors == [
        {
            "path": "steps[0].timeout_seconds",
            "stepId": "a",
            "message": "Unknown field 'timeout_seconds'; remove it or use one of: id, name, "
            "needs, if, timeoutSeconds, retry, type, actionConfig.",
        }
    ]


@pytest.mark.parametrize(
    ("document", "path", "step_id", "allowed"),
    [
        (workflow(noop("a"), owner="me"), "owner", None, "name, description, steps"),
        (
            workflow(noop("a", retry={"maxAttempts": 2, "jitter": True})),
            "steps[0].retry.jitter",
            "a",
            "maxAttempts, initialDelaySeconds, maxDelaySeconds",
        ),
        (
            workflow({"id": "ok", "type": "approval", "actionConfig": {"title": "t", "cc": ["x"]}}),
            "steps[0].actionConfig.cc",
            "ok",
            "title, description, assignees",
        ),
        (
            workflow(noop("a"), {"id": "d", "type": "delay", "actionConfig": {"secs": 1}}),
            "steps[1].actionConfig.secs",
            "d",
            "seconds",
        ),
    ],
)
def test_unknown_fields_are_rejected_at_their_path(
    document: dict[str, Any], path: str, step_id: str | None, allowed: str
) -> None:
    errors = errors_of(document)
    field = path.rsplit(".", 1)[-1]
    unknown = [e for e in errors if e["path"] == path]
    assert unknown == [
        {
            "path": path,
            "stepId": step_id,
            "message": f"Unknown field '{field}'; remove it or use one of: {allowed}.",
        }
    ]


def test_noop_config_accepts_any_fields() -> None:
    parsed = parse_workflow(workflow(noop("a", actionConfig={"anything": {"goes": [1]}})))
    assert parsed.steps[0].action_config == {"anything": {"goes": [1]}}


def test_unknown_step_type_lists_the_valid_types() -> None:
    assert errors_of(workflow(noop("a"), {"id": "b", "type": "telegram"})) == [
        {
            "path": "steps[1].type",
            "stepId": "b",
            "message": "Unknown step type 'telegram'; use one of: "
            "noop, delay, approval, email, slack, jira, http, database, ml.",
        }
    ]
    assert STEP_TYPES == (
        "noop",
        "delay",
        "approval",
        "email",
        "slack",
        "jira",
        "http",
        "database",
        "ml",
    )


def test_a_step_without_a_type_says_which_types_exist() -> None:
    assert errors_of(workflow({"id": "b"})) == [
        {
            "path": "steps[0].type",
            "stepId": "b",
            "message": "Every step needs a 'type'; use one of: "
            "noop, delay, approval, email, slack, jira, http, database, ml.",
        }
    ]


def test_missing_required_fields() -> None:
    assert errors_of({"steps": [{"id": "a", "type": "approval"}]}) == [
        {"path": "name", "stepId": None, "message": "'name' is required; add it."},
        {
            "path": "steps[0].actionConfig",
            "stepId": "a",
            "message": "'actionConfig' is required; add it.",
        },
    ]


def test_a_step_that_is_not_an_object() -> None:
    assert errors_of(workflow(noop("a"), "b")) == [
        {
            "path": "steps[1]",
            "stepId": None,
            "message": "steps[1] must be an object (a mapping of field names to values).",
        }
    ]


def test_every_error_names_its_step() -> None:
    errors = errors_of(
        workflow(
            noop("fetch", timeoutSeconds=0),
            noop("notify", needs=["fetch"], retry={"maxAttempts": 101}),
        )
    )
    assert [(e["path"], e["stepId"]) for e in errors] == [
        ("steps[0].timeoutSeconds", "fetch"),
        ("steps[1].retry.maxAttempts", "notify"),
    ]
    assert errors[0]["message"] == "'timeoutSeconds' should be greater than 0, got 0."
    assert errors[1]["message"] == "'maxAttempts' should be less than or equal to 100, got 101."


@pytest.mark.parametrize("step_id", ["1st", "has space", "a.b", "", "x" * 65, "ünï"])
def test_step_ids_must_be_identifier_like(step_id: str) -> None:
    [error] = errors_of(workflow(noop(step_id)))
    assert error["path"] == "steps[0].id"
    assert error["message"].startswith("A step id must start with a letter or '_'")


@pytest.mark.parametrize("step_id", ["a", "_private", "send-email", "Step_2", "x" * 64])
def test_valid_step_ids(step_id: str) -> None:
    assert parse_workflow(workflow(noop(step_id))).steps[0].id == step_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeoutSeconds", 0),
        ("timeoutSeconds", 86_401),
        ("timeoutSeconds", "5"),
        ("timeoutSeconds", True),
        ("needs", "fetch"),
        ("if", False),
        ("name", "n" * 201),
    ],
)
def test_step_field_types_and_bounds(field: str, value: Any) -> None:
    [error] = errors_of(workflow(noop("a", **{field: value})))
    assert error["path"].startswith(f"steps[0].{field}")
    assert error["stepId"] == "a"
    assert error["message"].startswith(f"'{field}' should ")


@pytest.mark.parametrize(
    ("text", "content_type", "path", "message"),
    [
        (
            '{"name": "w", "steps": [{"id": "a", "type": "noop", "timeoutSeconds": NaN}]}',
            "json",
            "steps[0].timeoutSeconds",
            "'timeoutSeconds' should be a finite number, got nan.",
        ),
        (
            "name: w\nsteps: [{id: a, type: noop, retry: {maxDelaySeconds: .inf}}]",
            "yaml",
            "steps[0].retry.maxDelaySeconds",
            "'maxDelaySeconds' should be a finite number, got inf.",
        ),
    ],
)
def test_nan_and_infinity_are_rejected(
    text: str, content_type: str, path: str, message: str
) -> None:
    assert errors_of(text, content_type=content_type) == [
        {"path": path, "stepId": "a", "message": message}
    ]


@pytest.mark.parametrize(
    ("retry", "path"),
    [
        ({"maxAttempts": 0}, "steps[0].retry.maxAttempts"),
        ({"maxAttempts": 2.5}, "steps[0].retry.maxAttempts"),
        ({"initialDelaySeconds": 0}, "steps[0].retry.initialDelaySeconds"),
        ({"initialDelaySeconds": 3601}, "steps[0].retry.initialDelaySeconds"),
        ({"maxDelaySeconds": 86_401}, "steps[0].retry.maxDelaySeconds"),
    ],
)
def test_retry_bounds(retry: dict[str, Any], path: str) -> None:
    assert [e["path"] for e in errors_of(workflow(noop("a", retry=retry)))] == [path]


def test_retry_maximum_delay_may_not_be_below_the_initial_delay() -> None:
    document = workflow(noop("a", retry={"initialDelaySeconds": 10, "maxDelaySeconds": 5}))
    assert errors_of(document) == [
        {
            "path": "steps[0].retry",
            "stepId": "a",
            "message": "Retry delays are inverted: maxDelaySeconds (5.0) is smaller than "
            "initialDelaySeconds (10.0); raise maxDelaySeconds or lower initialDelaySeconds.",
        }
    ]


def test_equal_retry_delays_are_fine() -> None:
    document = workflow(noop("a", retry={"initialDelaySeconds": 5, "maxDelaySeconds": 5}))
    assert parse_workflow(document).steps[0].retry.max_delay_seconds == 5


def delay(seconds: Any) -> dict[str, Any]:
    return workflow({"id": "wait", "type": "delay", "actionConfig": {"seconds": seconds}})


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, 0.0), (1.5, 1.5), (2_678_400, 2_678_400.0), ("{{ input.wait }}", "{{ input.wait }}")],
)
def test_delay_seconds_is_a_number_or_a_template(seconds: Any, expected: Any) -> None:
    step = parse_workflow(delay(seconds)).steps[0]
    assert isinstance(step, DelayStep)
    assert step.action_config.seconds == expected


@pytest.mark.parametrize("seconds", [-1, 2_678_401, float("inf"), float("nan")])
def test_delay_seconds_out_of_range(seconds: float) -> None:
    [error] = errors_of(delay(seconds))
    assert error["path"] == "steps[0].actionConfig.seconds"
    assert error["stepId"] == "wait"
    assert error["message"].startswith("'seconds' must be between 0 and 2678400 (31 days), got ")


@pytest.mark.parametrize("seconds", ["5", "five minutes", True, None, [5]])
def test_delay_seconds_of_another_kind(seconds: Any) -> None:
    assert errors_of(delay(seconds)) == [
        {
            "path": "steps[0].actionConfig.seconds",
            "stepId": "wait",
            "message": "'seconds' must be a number of seconds or a template such as "
            "'{{ input.waitSeconds }}'.",
        }
    ]


def test_approval_needs_a_title() -> None:
    document = workflow({"id": "ok", "type": "approval", "actionConfig": {"title": ""}})
    [error] = errors_of(document)
    assert error["path"] == "steps[0].actionConfig.title"
    assert error["message"] == "'title' should have at least 1 character, got ''."


def test_workflow_level_bounds() -> None:
    assert [e["path"] for e in errors_of({"name": "", "steps": []})] == ["name", "steps"]
    too_many = workflow(*(noop(f"s{i}") for i in range(501)))
    [error] = errors_of(too_many)
    assert error["path"] == "steps"
    assert error["message"].startswith("'steps' should have at most 500 items")
    assert len(parse_workflow(workflow(*(noop(f"s{i}") for i in range(500)))).steps) == 500


def test_graph_problems_are_reported_at_the_need_that_causes_them() -> None:
    document = workflow(
        noop("fetch", needs=["notify"]),
        noop("notify", needs=["fetch", "fetch", "lookup"]),
        noop("fetch"),
    )
    assert errors_of(document) == [
        {
            "path": "steps[2].id",
            "stepId": "fetch",
            "message": "Step id 'fetch' is already used by steps[0]; give every step a unique id.",
        },
        {
            "path": "steps[1].needs[1]",
            "stepId": "notify",
            "message": "'fetch' is listed twice in needs (also at needs[0]); remove the duplicate.",
        },
        {
            "path": "steps[1].needs[2]",
            "stepId": "notify",
            "message": "Step 'notify' needs 'lookup', but no step has that id; "
            "use the id of a step in this workflow.",
        },
        {
            "path": "steps[0].needs[0]",
            "stepId": "fetch",
            "message": "Steps fetch → notify → fetch form a cycle (each needs the next); "
            "remove one of these needs.",
        },
    ]


def test_validating_the_model_directly_also_rejects_a_cycle() -> None:
    document = workflow(noop("a", needs=["b"]), noop("b", needs=["a"]))
    with pytest.raises(ValidationError) as caught:
        WorkflowDefinition.model_validate(document)
    [error] = caught.value.errors()
    assert error["loc"] == ()
    assert "steps[0].needs[0]: Steps a → b → a form a cycle" in error["msg"]


def test_template_problems_are_reported_where_they_are() -> None:
    document = workflow(
        noop("a", actionConfig={"text": "fine {{ input.x }}", "list": ["{{ input.x "]}),
        noop("b", **{"if": "{{ inptu.flag }}"}),
        {"id": "c", "type": "approval", "actionConfig": {"title": "{% if %}"}},
    )
    assert errors_of(document) == [
        {
            "path": "steps[0].actionConfig.list[0]",
            "stepId": "a",
            "message": "Line 1: unexpected end of template, expected 'end of print statement'.",
        },
        {
            "path": "steps[1].if",
            "stepId": "b",
            "message": "Unknown name 'inptu'; templates can use execution, input, steps, trigger.",
        },
        {
            "path": "steps[2].actionConfig.title",
            "stepId": "c",
            "message": "Line 1: Expected an expression, got 'end of statement block'.",
        },
    ]


@pytest.mark.parametrize(
    ("text", "content_type", "where"),
    [
        ('{"name": "w",\n "steps": [}', "json", "at line 2, column 12."),
        ("{'name': 'w'}", "json", "at line 1, column 2."),
        ("name: w\nsteps:\n  - id: a\n   type: noop\n", "yaml", "at line 4, column 4."),
        ("name: [unclosed\n", "yaml", "at line 2, column 1."),
    ],
)
def test_malformed_text_is_one_error_with_line_and_column(
    text: str, content_type: str, where: str
) -> None:
    [error] = errors_of(text, content_type=content_type)
    assert error["path"] == ""
    assert error["stepId"] is None
    assert error["message"].startswith(f"The document is not valid {content_type.upper()}: ")
    assert error["message"].endswith(where)


@pytest.mark.parametrize("text", ["[1, 2]", "just a string", "42", ""])
def test_a_document_must_be_an_object(text: str) -> None:
    assert errors_of(text, content_type="yaml") == [
        {
            "path": "",
            "stepId": None,
            "message": "A workflow must be an object with 'name' and 'steps' fields.",
        }
    ]


def test_bytes_must_be_utf8() -> None:
    [error] = errors_of(b'{"name": "\xff"}')
    assert error["message"] == "The document is not UTF-8 text (invalid start byte at byte 10)."


def test_yaml_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    [error] = errors_of("\n".join(lines), content_type="yaml")
    assert error["message"] == "The document expands to more than 100000 values; use fewer aliases."


def test_the_exception_message_summarises_the_first_errors() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(workflow(*(noop("a", timeoutSeconds=-1) for _ in range(5))))
    assert str(caught.value).startswith(
        "invalid workflow: steps[0].timeoutSeconds: 'timeoutSeconds' should be greater than 0"
    )
    assert str(caught.value).endswith("(and 2 more)")
