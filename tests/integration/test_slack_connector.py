"""The slack step handler against the Slack Web API emulator (real HTTP) and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.connectors.slack import check, make_handler
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.slack_api import SlackApi

TENANT = "acme"
TOKEN = "xoxb-very-secret-bot-token-123"
KEY = f"{uuid.UUID(int=42)}:notify"


@pytest.fixture
async def slack(pool: asyncpg.Pool) -> AsyncIterator[tuple[SlackApi, str]]:
    app = SlackApi(TOKEN)
    app.add_channel("C0OPS", "ops")
    app.add_channel("C0OLD", "old", archived=True)
    app.add_channel("C0OUT", "outside", bot_is_member=False)
    app.add_user("ana@example.com", "U0ANA")
    app.add_user("bo@example.com", "U0BO")
    async with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, slack: tuple[SlackApi, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorResources]:
    _, url = slack
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_WRONG_TOKEN", "xoxb-wrong")
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
        for name, env in (("slack-main", "SLACK_BOT_TOKEN"), ("slack-wrong", "SLACK_WRONG_TOKEN")):
            await conn.execute(
                "INSERT INTO connections (tenant_id, name, type, description, config) "
                "VALUES ($1, $2, 'slack', '', $3)",
                TENANT,
                name,
                {"botToken": {"secretRef": f"env://{env}"}, "baseUrl": f"{url}/api/"},
            )
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


def context(attempt: int = 1) -> StepContext:
    return StepContext(
        tenant=TENANT,
        execution_id=uuid.UUID(int=42),
        workflow_id=uuid.UUID(int=7),
        step_id="notify",
        step_type="slack",
        attempt=attempt,
        correlation_id=None,
        state=None,
    )


def step(**fields: Any) -> dict[str, Any]:
    return {"connection": "slack-main", "channel": "C0OPS", **fields}


def assert_no_token(value: Any) -> None:
    assert TOKEN not in json.dumps(value, default=str)


async def run(resources: ConnectorResources, config: dict[str, Any], attempt: int = 1) -> Any:
    output = await make_handler(resources, timeout_seconds=5.0)(context(attempt), config)
    assert_no_token(output)
    return output


async def fails(
    resources: ConnectorResources, config: dict[str, Any], attempt: int = 1
) -> StepError:
    with pytest.raises(StepError) as caught:
        await run(resources, config, attempt)
    assert TOKEN not in f"{caught.value} {caught.value!r}"
    return caught.value


# --- postMessage ------------------------------------------------------------------------------


async def test_post_message(slack: tuple[SlackApi, str], resources: ConnectorResources) -> None:
    app, _ = slack
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*big* order"}}]
    output = await run(resources, step(text="Order 7 is large", blocks=blocks))
    [message] = app.messages("C0OPS")
    assert output == {"channel": "C0OPS", "ts": message["ts"]}
    assert message["text"] == "Order 7 is large"
    assert message["blocks"] == blocks
    assert message["metadata"] == {
        "event_type": "maestro_step",
        "event_payload": {"idempotency_key": KEY},
    }
    [call] = app.calls
    assert call.method == "chat.postMessage"
    assert call.token == TOKEN


async def test_post_by_channel_name_and_thread_reply(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    first = await run(resources, step(channel="#ops", text="parent"))
    assert first["channel"] == "C0OPS"
    reply = await run(resources, step(text="child", threadTs=first["ts"]))
    parent, child = app.messages("C0OPS")
    assert child["thread_ts"] == parent["ts"] == first["ts"]
    assert reply == {"channel": "C0OPS", "ts": child["ts"]}


async def test_mentions(slack: tuple[SlackApi, str], resources: ConnectorResources) -> None:
    app, _ = slack
    await run(
        resources,
        step(text="please look", mentions=["ana@example.com", "BO@example.com", "ana@example.com"]),
    )
    await run(
        resources,
        step(blocks=[{"type": "divider"}], mentions=["bo@example.com"]),
    )
    plain, with_blocks = app.messages("C0OPS")
    assert plain["text"] == "<@U0ANA> <@U0BO> please look"
    assert with_blocks["text"] == "<@U0BO>"
    assert with_blocks["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "<@U0BO>"}},
        {"type": "divider"},
    ]
    assert app.count("users.lookupByEmail") == 3  # each email once per step


async def test_unknown_mention_is_validation(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    error = await fails(resources, step(text="x", mentions=["ghost@example.com"]))
    assert error.error_class == ErrorClass.VALIDATION
    assert "ghost@example.com" in error.message
    assert app.count("chat.postMessage") == 0


# --- idempotency ------------------------------------------------------------------------------


async def test_retry_after_lost_answer_does_not_post_twice(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    app.lose_response("chat.postMessage")  # posted, but the answer never arrives
    error = await fails(resources, step(text="once"))
    assert error.error_class == ErrorClass.PROVIDER_ERROR
    assert error.retryable
    assert len(app.messages("C0OPS")) == 1
    output = await run(resources, step(text="once"), attempt=2)
    [message] = app.messages("C0OPS")
    assert output == {"channel": "C0OPS", "ts": message["ts"]}
    assert app.count("chat.postMessage") == 1
    history = [c for c in app.calls if c.method == "conversations.history"]
    assert history[0].params["include_all_metadata"] in ("1", "true", True)


async def test_rerun_after_success_finds_the_message(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    app.add_channel("C0NOISE", "noise")
    first = await run(resources, step(channel="#ops", text="hi"))
    # another step's message after ours must not be mistaken for it
    await make_handler(resources)(
        StepContext(TENANT, uuid.uuid4(), uuid.UUID(int=7), "other", "slack", 1, None, None),
        step(text="someone else"),
    )
    again = await run(resources, step(channel="#ops", text="hi"), attempt=2)
    assert again == first
    assert app.count("chat.postMessage") == 2
    assert app.count("conversations.list") == 1  # #ops resolved for the history lookup


async def test_thread_reply_retry_looks_in_the_thread(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    # the parent is another step's message (it carries a different key)
    other = StepContext(TENANT, uuid.uuid4(), uuid.UUID(int=7), "first", "slack", 1, None, None)
    parent = await make_handler(resources)(other, step(text="parent"))
    app.calls.clear()
    reply = await run(resources, step(text="reply", threadTs=parent["ts"]))
    again = await run(resources, step(text="reply", threadTs=parent["ts"]), attempt=3)
    assert again == reply
    assert [c.method for c in app.calls] == ["chat.postMessage", "conversations.replies"]


async def test_retry_posts_when_nothing_was_posted(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    app.rate_limit(times=1, retry_after=7)
    error = await fails(resources, step(text="hello"))
    assert error.error_class == ErrorClass.RATE_LIMITED
    assert error.retry_after == 7.0
    assert app.messages("C0OPS") == []
    output = await run(resources, step(text="hello"), attempt=2)
    assert [m["ts"] for m in app.messages("C0OPS")] == [output["ts"]]


async def test_retry_posts_when_history_is_refused(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    app.fail("conversations.history", "missing_scope")
    await run(resources, step(text="hello"), attempt=2)
    assert len(app.messages("C0OPS")) == 1


# --- uploadFile -------------------------------------------------------------------------------


async def test_upload_file_full_flow(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    data = bytes(range(256)) * 40
    parent = await run(resources, step(text="thread"))
    output = await run(
        resources,
        step(
            operation="uploadFile",
            channel="#ops",
            text="nightly report",
            mentions=["ana@example.com"],
            threadTs=parent["ts"],
            file={
                "filename": "report.bin",
                "contentBase64": base64.b64encode(data).decode(),
                "title": "Nightly",
            },
        ),
    )
    [upload] = app.uploads.values()
    assert output == {"fileId": upload.file_id}
    assert upload.data == data
    assert upload.length == len(data)
    assert upload.completed
    assert upload.title == "Nightly"
    shared = app.messages("C0OPS")[-1]
    assert shared["text"] == "<@U0ANA> nightly report"
    assert shared["thread_ts"] == parent["ts"]
    assert shared["files"][0]["id"] == upload.file_id
    methods = [c.method for c in app.calls]
    assert methods[-4:] == [
        "users.lookupByEmail",
        "conversations.list",
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]
    complete = app.calls[-1]
    assert complete.params["channel_id"] == "C0OPS"
    assert json.loads(complete.params["files"]) == [{"id": upload.file_id, "title": "Nightly"}]


async def test_upload_text_file_by_channel_id(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    output = await run(
        resources,
        step(operation="uploadFile", file={"filename": "notes.txt", "content": "héllo"}),
    )
    upload = app.uploads[output["fileId"]]
    assert upload.data == "héllo".encode()
    assert upload.title == "notes.txt"
    assert app.count("conversations.list") == 0


async def test_upload_to_unknown_channel_name(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    for i in range(250):  # more than one conversations.list page
        app.add_channel(f"C1{i:05d}", f"c{i}")
    error = await fails(
        resources,
        step(operation="uploadFile", channel="#nowhere", file={"filename": "a", "content": "b"}),
    )
    assert error.error_class == ErrorClass.NOT_FOUND
    assert app.count("conversations.list") == 2
    assert app.uploads == {}
    found = await run(
        resources,
        step(operation="uploadFile", channel="#c240", file={"filename": "a", "content": "b"}),
    )
    assert found["fileId"] in app.uploads


# --- errors, check, secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected", "code"),
    [
        (step(channel="C0NONE", text="x"), ErrorClass.NOT_FOUND, "channel_not_found"),
        (step(channel="#old", text="x"), ErrorClass.VALIDATION, "is_archived"),
        (step(channel="C0OUT", text="x"), ErrorClass.VALIDATION, "not_in_channel"),
        (
            step(text="x" * 40_000, mentions=["ana@example.com"]),
            ErrorClass.VALIDATION,
            "msg_too_long",
        ),
        (step(connection="slack-wrong", text="x"), ErrorClass.AUTH, "invalid_auth"),
        (step(connection="missing", text="x"), ErrorClass.NOT_FOUND, "no connection"),
    ],
)
async def test_error_classes(
    resources: ConnectorResources, config: dict[str, Any], expected: ErrorClass, code: str
) -> None:
    error = await fails(resources, config)
    assert error.error_class == expected
    assert code in error.message


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("internal_error", 500, ErrorClass.PROVIDER_ERROR),
        ("fatal_error", 200, ErrorClass.PROVIDER_ERROR),
        ("token_revoked", 200, ErrorClass.AUTH),
        ("invalid_blocks", 200, ErrorClass.VALIDATION),
    ],
)
async def test_scripted_errors(
    slack: tuple[SlackApi, str],
    resources: ConnectorResources,
    code: str,
    status: int,
    expected: ErrorClass,
) -> None:
    app, _ = slack
    app.fail("chat.postMessage", code, status)
    error = await fails(resources, step(text="x"))
    assert error.error_class == expected
    assert code in error.message


async def test_network_error(resources: ConnectorResources, pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (tenant_id, name, type, description, config) "
            "VALUES ($1, 'slack-down', 'slack', '', $2)",
            TENANT,
            {
                "botToken": {"secretRef": "env://SLACK_BOT_TOKEN"},
                "baseUrl": "http://127.0.0.1:9/api/",
            },
        )
    error = await fails(resources, step(connection="slack-down", text="x"))
    assert error.error_class == ErrorClass.NETWORK
    assert error.retryable


async def test_check(slack: tuple[SlackApi, str], resources: ConnectorResources) -> None:
    app, url = slack
    config = {"botToken": {"secretRef": "env://SLACK_BOT_TOKEN"}, "baseUrl": f"{url}/api/"}
    facts = await check(resources, config)
    assert facts == {"team": "Acme", "user": "maestro-bot", "botId": "B0001"}
    assert app.calls[-1].method == "auth.test"
    with pytest.raises(StepError) as caught:
        await check(resources, {**config, "botToken": {"secretRef": "env://SLACK_WRONG_TOKEN"}})
    assert caught.value.error_class == ErrorClass.AUTH
    assert "xoxb-wrong" not in str(caught.value)


async def test_token_echoed_by_slack_is_scrubbed(
    slack: tuple[SlackApi, str], resources: ConnectorResources
) -> None:
    app, _ = slack
    app.fail("chat.postMessage", f"weird_{TOKEN}")
    error = await fails(resources, step(text="x"))
    assert "weird_***" in error.message
