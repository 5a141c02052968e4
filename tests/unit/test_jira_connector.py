"""The jira connector's pure parts: ADF conversion, the idempotency label, describe(),
the step config model and the error mapping."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from maestro.connectors.jira import describe, error_for_status, idempotency_label, text_to_adf
from maestro.engine.retry import ErrorClass
from maestro.model.jira_step import JiraStepConfig


def paragraph(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "paragraph", "content": list(nodes)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


BREAK = {"type": "hardBreak"}


# --- ADF ------------------------------------------------------------------------------------


def test_adf_single_line() -> None:
    assert text_to_adf("Disk full") == {
        "type": "doc",
        "version": 1,
        "content": [paragraph(text("Disk full"))],
    }


def test_adf_paragraphs_and_hard_breaks() -> None:
    doc = text_to_adf("Host: db-1\nDisk: /var\n\nPlease look.\r\n\r\n\r\nThanks")
    assert doc["content"] == [
        paragraph(text("Host: db-1"), BREAK, text("Disk: /var")),
        paragraph(text("Please look.")),
        paragraph(text("Thanks")),
    ]


def test_adf_blank_lines_with_spaces_split_paragraphs() -> None:
    doc = text_to_adf("one\n   \ntwo")
    assert doc["content"] == [paragraph(text("one")), paragraph(text("two"))]


def test_adf_empty_and_blank_text_is_an_empty_document() -> None:
    assert text_to_adf("") == {"type": "doc", "version": 1, "content": []}
    assert text_to_adf("\n\n  \n") == {"type": "doc", "version": 1, "content": []}


def test_adf_keeps_indentation_and_no_empty_text_nodes() -> None:
    doc = text_to_adf("  indented\n\tTabbed")
    assert doc["content"] == [paragraph(text("  indented"), BREAK, text("\tTabbed"))]
    for block in doc["content"]:
        for node in block["content"]:
            assert node["type"] == "hardBreak" or node["text"]


# --- idempotency label --------------------------------------------------------------------------


def test_label_is_derived_from_the_idempotency_key() -> None:
    key = "0000-exec:create"
    expected = "maestro-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    assert idempotency_label(key) == expected
    assert idempotency_label(key) == idempotency_label(key)
    assert idempotency_label("other:create") != expected
    assert len(expected) == len("maestro-") + 16
    assert " " not in expected  # Jira refuses labels with spaces


# --- the config model -------------------------------------------------------------------------


def test_config_requires_the_options_of_its_operation() -> None:
    with pytest.raises(ValidationError, match="createIssue needs issueType"):
        JiraStepConfig.model_validate(
            {"connection": "j", "operation": "createIssue", "project": "OPS", "summary": "x"}
        )
    with pytest.raises(ValidationError, match="transitionIssue needs transition"):
        JiraStepConfig.model_validate(
            {"connection": "j", "operation": "transitionIssue", "issueKey": "OPS-1"}
        )
    with pytest.raises(ValidationError, match="searchIssues needs jql"):
        JiraStepConfig.model_validate({"connection": "j", "operation": "searchIssues"})
    with pytest.raises(ValidationError, match="summary, description or fields"):
        JiraStepConfig.model_validate(
            {"connection": "j", "operation": "updateIssue", "issueKey": "OPS-1"}
        )


def test_config_refuses_options_of_other_operations_and_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="searchIssues does not use issueKey"):
        JiraStepConfig.model_validate(
            {"connection": "j", "operation": "searchIssues", "jql": "x", "issueKey": "OPS-1"}
        )
    with pytest.raises(ValidationError, match="createIssue does not use maxResults"):
        JiraStepConfig.model_validate(
            {
                "connection": "j",
                "operation": "createIssue",
                "project": "OPS",
                "issueType": "Task",
                "summary": "s",
                "maxResults": 5,
            }
        )
    with pytest.raises(ValidationError, match="Extra inputs"):
        JiraStepConfig.model_validate(
            {"connection": "j", "operation": "searchIssues", "jql": "x", "bogus": 1}
        )
    with pytest.raises(ValidationError):
        JiraStepConfig.model_validate(
            {"connection": "j", "operation": "searchIssues", "jql": "x", "maxResults": 0}
        )


def test_config_accepts_rendered_strings_for_numbers() -> None:
    step = JiraStepConfig.model_validate(
        {"connection": "j", "operation": "searchIssues", "jql": "x", "maxResults": "10"}
    )
    assert step.max_results == 10


# --- describe --------------------------------------------------------------------------------


def test_describe_create_names_fields_but_not_values() -> None:
    described = describe(
        {
            "connection": "jira-prod",
            "operation": "createIssue",
            "project": "OPS",
            "issueType": "Bug",
            "summary": "Disk full",
            "description": "see logs",
            "fields": {"priority": {"name": "High"}, "labels": ["ops"]},
        }
    )
    assert described["kind"] == "jira"
    assert described["calls"] == [{"method": "POST", "path": "/rest/api/3/issue"}]
    assert described["fieldNames"] == ["labels", "priority"]
    assert described["project"] == "OPS"
    assert described["hasDescription"] is True
    assert "High" not in str(described)


def test_describe_transition_and_search() -> None:
    described = describe(
        {
            "connection": "j",
            "operation": "transitionIssue",
            "issueKey": "OPS-7",
            "transition": "Done",
        }
    )
    assert [c["method"] for c in described["calls"]] == ["GET", "POST"]
    assert described["calls"][1]["path"] == "/rest/api/3/issue/OPS-7/transitions"
    described = describe(
        {"connection": "j", "operation": "searchIssues", "jql": "project = OPS", "maxResults": 5}
    )
    assert described["calls"] == [{"method": "POST", "path": "/rest/api/3/search/jql"}]
    assert described["maxResults"] == 5
    assert described["nextPageToken"] is False


def test_describe_invalid_config_raises_value_error() -> None:
    with pytest.raises(ValueError, match="actionConfig"):
        describe({"connection": "j", "operation": "deleteIssue"})


# --- error mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ErrorClass.VALIDATION),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (404, ErrorClass.NOT_FOUND),
        (408, ErrorClass.TIMEOUT),
        (409, ErrorClass.VALIDATION),
        (429, ErrorClass.RATE_LIMITED),
        (500, ErrorClass.PROVIDER_ERROR),
        (503, ErrorClass.PROVIDER_ERROR),
        (504, ErrorClass.PROVIDER_ERROR),
    ],
)
def test_status_classes(status: int, error_class: ErrorClass) -> None:
    error = error_for_status(status, "POST https://x/rest/api/3/issue", None, "", None)
    assert error.error_class == error_class
    assert error.message.startswith(f"POST https://x/rest/api/3/issue answered {status}")


def test_400_message_carries_jira_errors() -> None:
    body = {
        "errorMessages": ["Something is wrong"],
        "errors": {"issuetype": "Specify a valid issue type", "summary": "required"},
    }
    error = error_for_status(400, "POST u", body, "", None)
    assert error.error_class == ErrorClass.VALIDATION
    assert error.message == (
        "POST u answered 400: Something is wrong; issuetype: Specify a valid issue type; "
        "summary: required"
    )
    assert not error.retryable


def test_retry_after_kept_for_429_and_5xx() -> None:
    assert error_for_status(429, "GET u", None, "", 7.0).retry_after == 7.0
    assert error_for_status(503, "GET u", None, "busy", 2.0).retry_after == 2.0
    assert error_for_status(503, "GET u", None, "busy", 2.0).message == "GET u answered 503: busy"
    assert error_for_status(429, "GET u", None, "", 7.0).retryable
