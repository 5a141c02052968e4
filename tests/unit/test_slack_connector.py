"""The slack connector's pure parts: mentions, error mapping, describe(), the config model."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from maestro.connectors.slack import (
    classify_api_error,
    describe,
    find_posted,
    mention_block,
    render_mentions,
)
from maestro.engine.retry import ErrorClass
from maestro.model.slack_step import SlackStepConfig


def test_render_mentions() -> None:
    assert render_mentions(["U1", "U2"], "deploy done") == "<@U1> <@U2> deploy done"
    assert render_mentions([], "just text") == "just text"
    assert render_mentions(["U1"], None) == "<@U1>"
    assert render_mentions(["U1"], "") == "<@U1>"
    assert render_mentions([], None) == ""
    assert mention_block(["U1", "U9"]) == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "<@U1> <@U9>"},
    }


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (429, "ratelimited", ErrorClass.RATE_LIMITED),
        (200, "ratelimited", ErrorClass.RATE_LIMITED),
        (200, "invalid_auth", ErrorClass.AUTH),
        (200, "not_authed", ErrorClass.AUTH),
        (200, "account_inactive", ErrorClass.AUTH),
        (200, "token_revoked", ErrorClass.AUTH),
        (200, "missing_scope", ErrorClass.AUTH),
        (200, "channel_not_found", ErrorClass.NOT_FOUND),
        (200, "users_not_found", ErrorClass.NOT_FOUND),
        (200, "not_in_channel", ErrorClass.VALIDATION),
        (200, "is_archived", ErrorClass.VALIDATION),
        (200, "msg_too_long", ErrorClass.VALIDATION),
        (200, "invalid_blocks", ErrorClass.VALIDATION),
        (200, "no_text", ErrorClass.VALIDATION),
        (200, "some_new_error_code", ErrorClass.VALIDATION),
        (200, "internal_error", ErrorClass.PROVIDER_ERROR),
        (200, "fatal_error", ErrorClass.PROVIDER_ERROR),
        (200, "service_unavailable", ErrorClass.PROVIDER_ERROR),
        (500, "internal_error", ErrorClass.PROVIDER_ERROR),
        (502, None, ErrorClass.PROVIDER_ERROR),
        (503, None, ErrorClass.PROVIDER_ERROR),
        (403, None, ErrorClass.AUTH),
        (404, None, ErrorClass.NOT_FOUND),
        (400, None, ErrorClass.VALIDATION),
    ],
)
def test_error_mapping(status: int, error: str | None, expected: ErrorClass) -> None:
    data: Any = {"ok": False, "error": error} if error else "<html>bad gateway</html>"
    failure = classify_api_error("chat.postMessage", status, {}, data)
    assert failure.error_class == expected
    assert failure.message.startswith("slack chat.postMessage ")
    if error:
        assert error in failure.message


def test_rate_limit_honours_retry_after() -> None:
    failure = classify_api_error(
        "chat.postMessage", 429, {"retry-after": "12"}, {"ok": False, "error": "ratelimited"}
    )
    assert failure.error_class == ErrorClass.RATE_LIMITED
    assert failure.retry_after == 12.0
    assert failure.retryable
    # header names are matched whatever their case; none -> no hint
    assert classify_api_error("x", 429, {"Retry-After": "3"}, {}).retry_after == 3.0
    assert classify_api_error("x", 429, {}, {}).retry_after is None
    assert classify_api_error("x", 503, {"Retry-After": "4"}, None).retry_after == 4.0


def test_missing_scope_names_the_scope() -> None:
    failure = classify_api_error(
        "users.lookupByEmail",
        200,
        {},
        {"ok": False, "error": "missing_scope", "needed": "users:read.email"},
    )
    assert failure.error_class == ErrorClass.AUTH
    assert "users:read.email" in failure.message
    assert not failure.retryable


def test_find_posted() -> None:
    tagged = {
        "ts": "1.2",
        "metadata": {"event_type": "maestro_step", "event_payload": {"idempotency_key": "e:s"}},
    }
    other = {
        "ts": "1.1",
        "metadata": {"event_type": "maestro_step", "event_payload": {"idempotency_key": "e:t"}},
    }
    assert find_posted([{"ts": "1.0"}, other, tagged], "e:s") == "1.2"
    assert find_posted([other, {"ts": "1.3", "metadata": None}], "e:s") is None
    assert find_posted([], "e:s") is None


def base(**extra: Any) -> dict[str, Any]:
    return {"connection": "slack-main", "channel": "#ops", **extra}


def test_describe_post_message() -> None:
    described = describe(
        base(
            text="hello {{ secret }}",
            blocks=[{"type": "divider"}],
            mentions=["a@example.com"],
            threadTs="1700000000.000100",
        )
    )
    assert described == {
        "kind": "slack",
        "connection": "slack-main",
        "operation": "postMessage",
        "channel": "#ops",
        "threadTs": "1700000000.000100",
        "mentions": ["a@example.com"],
        "textChars": 18,
        "blocks": 1,
        "idempotency": "message metadata; looked up before posting on a retry",
        "calls": ["users.lookupByEmail", "chat.postMessage"],
    }
    assert "hello" not in str(described)


def test_describe_upload_file() -> None:
    content = base64.b64encode(b"\x00\x01binary").decode()
    described = describe(
        base(
            operation="uploadFile",
            text="report",
            file={"filename": "r.bin", "contentBase64": content},
        )
    )
    assert described["calls"] == [
        "conversations.list",
        "files.getUploadURLExternal",
        "POST upload_url",
        "files.completeUploadExternal",
    ]
    assert described["file"] == {"filename": "r.bin", "title": "r.bin", "bytes": 8}
    by_id = describe(
        {
            "connection": "s",
            "channel": "C0123ABC",
            "operation": "uploadFile",
            "file": {"filename": "a.txt", "content": "héllo", "title": "A"},
        }
    )
    assert by_id["calls"][0] == "files.getUploadURLExternal"
    assert by_id["file"] == {"filename": "a.txt", "title": "A", "bytes": 6}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (base(), "needs text or blocks"),
        (base(text="x", channel="ops"), "channel must be"),
        (base(text="x", channel="#two words"), "channel must be"),
        (base(text="x", mentions=["not-an-email"]), "email"),
        (base(text="x", threadTs="yesterday"), "threadTs"),
        (base(text="x", blocks=[{"text": "no type"}]), "type"),
        (base(text="x", file={"filename": "a", "content": "b"}), "only for operation uploadFile"),
        (base(operation="uploadFile"), "uploadFile needs file"),
        (
            base(
                operation="uploadFile",
                file={"filename": "a", "content": "b", "contentBase64": "Yg=="},
            ),
            "exactly one",
        ),
        (base(operation="uploadFile", file={"filename": "a", "contentBase64": "%%%"}), "base64"),
        (
            base(
                operation="uploadFile",
                blocks=[{"type": "divider"}],
                file={"filename": "a", "content": "b"},
            ),
            "blocks",
        ),
        (base(text="x", unknown=1), "Extra inputs"),
    ],
)
def test_invalid_configs(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        describe(config)


def test_templates_pass_shape_checks() -> None:
    step = SlackStepConfig.model_validate(
        base(
            channel="{{ input.channel }}",
            text="x",
            mentions=["{{ input.owner }}"],
            threadTs="{{ steps.first.output.ts }}",
        )
    )
    assert step.channel == "{{ input.channel }}"
    assert step.operation == "postMessage"
    # a thread ts that rendered empty means "not a reply"
    assert SlackStepConfig.model_validate(base(text="x", threadTs=" ")).thread_ts is None
    with pytest.raises(ValidationError):
        SlackStepConfig.model_validate(base(text="x", connection="bad name"))
