"""The ``slack`` step type: post a message, or upload a file, through a ``slack`` connection.

The Slack Web API is called with the official ``slack_sdk``. Its asyncio client
(``AsyncWebClient``) needs ``aiohttp``, which this project does not depend on, so each call goes
through the SDK's urllib-based ``WebClient`` in a worker thread (``asyncio.to_thread``), with the
SDK's own retry handlers disabled (``retry_handlers=[]``: the engine retries, durably) and a
client timeout of ``timeout_seconds``. A cancelled step stops waiting at once; the thread itself
ends when its socket call returns or times out.

Operations:

* ``postMessage`` -> ``chat.postMessage`` (channel, text, blocks, thread_ts); output
  ``{"channel", "ts"}``.
* ``uploadFile`` -> the external upload flow: ``files.getUploadURLExternal`` (filename, length),
  the bytes POSTed to the returned ``upload_url`` (no token goes there), then
  ``files.completeUploadExternal`` (files=[{id, title}], channel_id, initial_comment=text,
  thread_ts); output ``{"fileId"}``. That API needs a channel *id*: a ``#name`` is resolved
  with ``conversations.list`` (public and private channels the bot can see, all pages).

``mentions`` (emails) are looked up with ``users.lookupByEmail`` (scope ``users:read.email``)
and put at the start of the text as ``<@U…>``; with ``blocks``, a section block holding the
mentions is also put first, since Slack shows the blocks and uses the text only for
notifications. An unknown email fails the step as ``validation`` naming it.

Idempotency: Slack has no idempotency key, so ``postMessage`` tags every message with
``metadata`` ``{"event_type": "maestro_step", "event_payload": {"idempotency_key":
"{executionId}:{stepId}"}}``; on attempt 2 and later it first reads the channel's latest 50
messages (``conversations.history``, or ``conversations.replies`` of the thread for a reply,
with ``include_all_metadata``) and, when one carries this step's key, returns its
``{channel, ts}`` instead of posting again. That lookup needs the ``channels:history`` /
``groups:history`` scope; when it is refused (or the channel cannot be read) the step posts
anyway (log event ``slack_dedup_unavailable``): delivery is then at least once, as for every
connector. ``uploadFile`` has no such lookup: a retry after an ambiguous failure can upload the
file twice.

Errors: ``ratelimited`` / HTTP 429 -> ``rate_limited`` (``Retry-After`` honoured); invalid or
missing credentials and missing scopes -> ``auth``; ``channel_not_found``, ``users_not_found``
and the like -> ``not_found``; refusals of the request (``not_in_channel``, ``is_archived``,
``msg_too_long``, ``invalid_blocks``, ``no_text``, and any error code not listed) ->
``validation``; ``internal_error``, ``fatal_error``, ``service_unavailable`` and HTTP 5xx ->
``provider_error``; connection failures -> ``network``; client timeouts -> ``timeout``. The bot
token is never put in a message or an output (it is scrubbed should Slack echo it).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx
import structlog
from pydantic import ValidationError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import WebClient

from maestro.connectors.base import ConnectorResources, typed_connection
from maestro.connectors.http import parse_retry_after
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.model.connections import SlackConfig
from maestro.model.slack_step import CHANNEL_ID_RE, SlackStepConfig
from maestro.secrets import scrub, scrub_json

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "METADATA_EVENT_TYPE",
    "check",
    "classify_api_error",
    "describe",
    "find_posted",
    "make_handler",
    "mention_block",
    "render_mentions",
]

log = structlog.get_logger("maestro.connectors.slack")

DEFAULT_TIMEOUT_SECONDS = 30.0
METADATA_EVENT_TYPE = "maestro_step"
HISTORY_LOOKBACK = 50
LIST_PAGE_SIZE = 200
MAX_LIST_PAGES = 100

AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
        "team_access_not_granted",
        "ekm_access_denied",
        "accesslimited",
    }
)
NOT_FOUND_ERRORS = frozenset(
    {"channel_not_found", "users_not_found", "user_not_found", "file_not_found", "thread_not_found"}
)
VALIDATION_ERRORS = frozenset(
    {"not_in_channel", "is_archived", "msg_too_long", "invalid_blocks", "no_text"}
)
PROVIDER_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})

Handler = Callable[[StepContext, Any], Awaitable[Any]]


# --- pure helpers -----------------------------------------------------------------------------


def render_mentions(user_ids: Sequence[str], text: str | None) -> str:
    """``<@U1> <@U2> text``: the mentions first, then the text (either may be empty)."""
    parts = [f"<@{user_id}>" for user_id in user_ids]
    if text:
        parts.append(text)
    return " ".join(parts)


def mention_block(user_ids: Sequence[str]) -> dict[str, Any]:
    """A Block Kit section holding the mentions (put before a message's own blocks)."""
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": render_mentions(user_ids, None)},
    }


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if str(key).lower() == name.lower():
            if isinstance(value, list | tuple):
                return str(value[0]) if value else None
            return str(value)
    return None


def classify_api_error(
    method: str,
    status: int,
    headers: Mapping[str, Any] | None,
    data: Any,
    now: datetime | None = None,
) -> StepError:
    """The step error for a Slack Web API answer that is not ``ok``.

    ``data`` is the parsed body (``{"ok": false, "error": "..."}``) or whatever came back."""
    code = data.get("error") if isinstance(data, Mapping) else None
    code = code if isinstance(code, str) and code else None
    if code is None:
        message = f"slack {method} answered HTTP {status}"
    else:
        message = f"slack {method} failed: {code}"
        if status != 200:
            message += f" (HTTP {status})"
    if isinstance(data, Mapping):
        needed = data.get("needed")
        if code == "missing_scope" and isinstance(needed, str):
            message += f"; the token needs scope {needed}"
    if status == 429 or code in RATE_LIMIT_ERRORS:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
        return StepError(ErrorClass.RATE_LIMITED, message, retry_after=retry_after)
    if status >= 500 or code in PROVIDER_ERRORS:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now)
        return StepError(ErrorClass.PROVIDER_ERROR, message, retry_after=retry_after)
    if code in AUTH_ERRORS or (code is None and status in (401, 403)):
        return StepError(ErrorClass.AUTH, message)
    if code in NOT_FOUND_ERRORS or (code is None and status == 404):
        return StepError(ErrorClass.NOT_FOUND, message)
    return StepError(ErrorClass.VALIDATION, message)


def idempotency_metadata(key: str) -> dict[str, Any]:
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": {"idempotency_key": key}}


def find_posted(messages: Iterable[Any], key: str) -> str | None:
    """The ``ts`` of the message tagged with idempotency key ``key``, if any."""
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        metadata = message.get("metadata")
        if not isinstance(metadata, Mapping):
            continue
        payload = metadata.get("event_payload")
        if (
            metadata.get("event_type") == METADATA_EVENT_TYPE
            and isinstance(payload, Mapping)
            and payload.get("idempotency_key") == key
            and isinstance(message.get("ts"), str)
        ):
            return str(message["ts"])
    return None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return (f"actionConfig.{where}" if where else "actionConfig") + f": {first['msg']}"


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack calls the step would make, for ``simulate``: no secrets, no I/O, and no
    message text or file content (only their sizes). An invalid config raises ValueError."""
    try:
        step = SlackStepConfig.model_validate(config)
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None
    calls: list[str] = []
    if step.mentions:
        calls.append("users.lookupByEmail")
    described: dict[str, Any] = {
        "kind": "slack",
        "connection": step.connection,
        "operation": step.operation,
        "channel": step.channel,
        "threadTs": step.thread_ts,
        "mentions": list(step.mentions),
        "textChars": len(step.text or ""),
    }
    if step.operation == "postMessage":
        calls.append("chat.postMessage")
        described["blocks"] = len(step.blocks or [])
        described["idempotency"] = "message metadata; looked up before posting on a retry"
    else:
        assert step.file is not None
        if step.channel.startswith("#"):
            calls.append("conversations.list")
        calls += ["files.getUploadURLExternal", "POST upload_url", "files.completeUploadExternal"]
        try:
            size: int | None = len(step.file.data())
        except ValueError:  # still a template
            size = None
        described["file"] = {
            "filename": step.file.filename,
            "title": step.file.title or step.file.filename,
            "bytes": size,
        }
    described["calls"] = calls
    return described


# --- calling Slack ----------------------------------------------------------------------------


class _Slack:
    """One step's Slack session: the SDK client with the resolved token, run in threads."""

    def __init__(self, token: str, base_url: str, timeout_seconds: float) -> None:
        self.secrets = [token]
        self.timeout_seconds = timeout_seconds
        self.client = WebClient(
            token=token,
            base_url=base_url,
            timeout=timeout_seconds,  # type: ignore[arg-type]  # urllib takes a float
            retry_handlers=[],
        )

    def clean(self, text: str) -> str:
        return scrub(text, self.secrets)

    def fail(self, error: StepError) -> StepError:
        return StepError(
            error.error_class, self.clean(error.message), retry_after=error.retry_after
        )

    async def call(
        self,
        method: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``method``'s answer (``ok`` true), or a classified StepError."""

        def send() -> Any:
            if json_body is not None:
                return self.client.api_call(method, json=dict(json_body))
            return self.client.api_call(method, params=dict(params or {}))

        try:
            response = await asyncio.to_thread(send)
        except SlackApiError as exc:
            answer = exc.response
            raise self.fail(
                classify_api_error(
                    method,
                    int(getattr(answer, "status_code", 0) or 0),
                    getattr(answer, "headers", None),
                    getattr(answer, "data", None),
                )
            ) from None
        except SlackClientError as exc:
            raise StepError(ErrorClass.VALIDATION, self.clean(f"slack {method}: {exc}")) from None
        except TimeoutError:
            raise StepError(
                ErrorClass.TIMEOUT,
                f"slack {method} timed out after {self.timeout_seconds:g}s",
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise StepError(
                    ErrorClass.TIMEOUT,
                    f"slack {method} timed out after {self.timeout_seconds:g}s",
                ) from None
            raise StepError(
                ErrorClass.NETWORK, self.clean(f"slack {method} failed: {exc.reason}")
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            detail = str(exc) or type(exc).__name__
            raise StepError(
                ErrorClass.NETWORK,
                self.clean(f"slack {method} failed: {type(exc).__name__}: {detail}"),
            ) from None
        data = response.data
        if not isinstance(data, dict):
            raise StepError(
                ErrorClass.PROVIDER_ERROR, f"slack {method} answered something that is not JSON"
            )
        return data


def _typed_step(config: Any) -> SlackStepConfig:
    try:
        return SlackStepConfig.model_validate(config)
    except ValidationError as exc:
        raise StepError(ErrorClass.VALIDATION, _first_error(exc) + " after rendering") from None


def _typed_connection(name: str, config: Any) -> SlackConfig:
    return typed_connection(SlackConfig, name, "slack", config)


async def _session(
    resources: ConnectorResources, name: str, connection: SlackConfig, timeout_seconds: float
) -> _Slack:
    if not connection.base_url.lower().startswith(("http://", "https://")):
        raise StepError(
            ErrorClass.VALIDATION,
            f"connection {name!r}: baseUrl must be an http:// or https:// URL",
        )
    dumped = connection.model_dump(by_alias=True, mode="json")
    token = str(await resources.resolve(dumped["botToken"])).strip()
    if not token:
        raise StepError(ErrorClass.AUTH, f"connection {name!r}: the bot token is empty")
    return _Slack(token, connection.base_url, timeout_seconds)


async def _lookup_users(slack: _Slack, emails: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for email in dict.fromkeys(emails):  # each once, in order
        try:
            data = await slack.call("users.lookupByEmail", params={"email": email})
        except StepError as exc:
            if exc.error_class == ErrorClass.NOT_FOUND:
                raise StepError(
                    ErrorClass.VALIDATION,
                    f"mentions: no Slack user has the email {email!r}",
                ) from None
            raise
        user = data.get("user")
        user_id = user.get("id") if isinstance(user, Mapping) else None
        if not isinstance(user_id, str) or not user_id:
            raise StepError(
                ErrorClass.PROVIDER_ERROR, "slack users.lookupByEmail answered without a user id"
            )
        ids.append(user_id)
    return ids


async def _channel_id(slack: _Slack, channel: str) -> str:
    """``channel`` as a conversation id: ``#name`` is looked up with conversations.list."""
    if CHANNEL_ID_RE.match(channel):
        return channel
    name = channel.lstrip("#")
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        params: dict[str, Any] = {
            "types": "public_channel,private_channel",
            "exclude_archived": True,
            "limit": LIST_PAGE_SIZE,
        }
        if cursor:
            params["cursor"] = cursor
        data = await slack.call("conversations.list", params=params)
        for item in data.get("channels") or []:
            if isinstance(item, Mapping) and item.get("name") == name and item.get("id"):
                return str(item["id"])
        meta = data.get("response_metadata")
        cursor = meta.get("next_cursor") if isinstance(meta, Mapping) else None
        if not cursor:
            break
    raise StepError(
        ErrorClass.NOT_FOUND,
        f"no channel named {channel!r} that the bot can see (conversations.list); "
        "invite the bot or give the channel id",
    )


async def _already_posted(
    slack: _Slack, ctx: StepContext, step: SlackStepConfig
) -> dict[str, str] | None:
    """On a retry: this step's message, if an earlier attempt posted it."""
    try:
        channel = await _channel_id(slack, step.channel)
        if step.thread_ts:
            data = await slack.call(
                "conversations.replies",
                params={
                    "channel": channel,
                    "ts": step.thread_ts,
                    "include_all_metadata": True,
                    "limit": HISTORY_LOOKBACK,
                },
            )
        else:
            data = await slack.call(
                "conversations.history",
                params={
                    "channel": channel,
                    "include_all_metadata": True,
                    "limit": HISTORY_LOOKBACK,
                },
            )
    except StepError as exc:
        if exc.retryable:
            raise
        log.warning(
            "slack_dedup_unavailable",
            tenant=ctx.tenant,
            execution_id=str(ctx.execution_id),
            step_id=ctx.step_id,
            attempt=ctx.attempt,
            reason=exc.message,
        )
        return None
    ts = find_posted(data.get("messages") or [], ctx.idempotency_key)
    return None if ts is None else {"channel": channel, "ts": ts}


async def _post_message(
    slack: _Slack, ctx: StepContext, step: SlackStepConfig, mention_ids: list[str]
) -> dict[str, Any]:
    if ctx.attempt > 1:
        found = await _already_posted(slack, ctx, step)
        if found is not None:
            log.info(
                "slack_message_already_posted",
                tenant=ctx.tenant,
                execution_id=str(ctx.execution_id),
                step_id=ctx.step_id,
                attempt=ctx.attempt,
            )
            return found
    payload: dict[str, Any] = {
        "channel": step.channel,
        "metadata": idempotency_metadata(ctx.idempotency_key),
    }
    text = render_mentions(mention_ids, step.text)
    if text:
        payload["text"] = text
    if step.blocks:
        blocks = list(step.blocks)
        if mention_ids:
            blocks.insert(0, mention_block(mention_ids))
        payload["blocks"] = blocks
    if step.thread_ts:
        payload["thread_ts"] = step.thread_ts
    data = await slack.call("chat.postMessage", json_body=payload)
    channel, ts = data.get("channel"), data.get("ts")
    if not isinstance(channel, str) or not isinstance(ts, str):
        raise StepError(
            ErrorClass.PROVIDER_ERROR, "slack chat.postMessage answered without channel and ts"
        )
    return {"channel": channel, "ts": ts}


async def _upload_bytes(
    resources: ConnectorResources, slack: _Slack, url: str, content: bytes
) -> None:
    where = "the Slack upload URL"
    if not url.lower().startswith(("http://", "https://")):
        raise StepError(
            ErrorClass.PROVIDER_ERROR, "slack files.getUploadURLExternal gave no http(s) URL"
        )
    try:
        response = await resources.http.post(
            url,
            content=content,
            headers={"Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(slack.timeout_seconds),
        )
    except httpx.TimeoutException:
        raise StepError(ErrorClass.TIMEOUT, f"POST to {where} timed out") from None
    except httpx.HTTPError as exc:
        raise StepError(
            ErrorClass.NETWORK, slack.clean(f"POST to {where} failed: {type(exc).__name__}")
        ) from None
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"POST to {where} answered {status}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        raise StepError(ErrorClass.RATE_LIMITED, message, retry_after=retry_after)
    if status >= 500:
        raise StepError(ErrorClass.PROVIDER_ERROR, message, retry_after=retry_after)
    if status in (401, 403):
        raise StepError(ErrorClass.AUTH, message)
    if status == 404:
        raise StepError(ErrorClass.NOT_FOUND, message)
    raise StepError(ErrorClass.VALIDATION, message)


async def _upload_file(
    resources: ConnectorResources,
    slack: _Slack,
    step: SlackStepConfig,
    mention_ids: list[str],
) -> dict[str, Any]:
    assert step.file is not None
    try:
        content = step.file.data()
    except ValueError:
        raise StepError(
            ErrorClass.VALIDATION, "actionConfig.file.contentBase64 is not valid base64"
        ) from None
    if not content:
        raise StepError(ErrorClass.VALIDATION, "actionConfig.file is empty; Slack refuses them")
    channel = await _channel_id(slack, step.channel)
    started = await slack.call(
        "files.getUploadURLExternal",
        params={"filename": step.file.filename, "length": len(content)},
    )
    upload_url, file_id = started.get("upload_url"), started.get("file_id")
    if not isinstance(upload_url, str) or not isinstance(file_id, str):
        raise StepError(
            ErrorClass.PROVIDER_ERROR,
            "slack files.getUploadURLExternal answered without upload_url and file_id",
        )
    await _upload_bytes(resources, slack, upload_url, content)
    params: dict[str, Any] = {
        "files": json.dumps([{"id": file_id, "title": step.file.title or step.file.filename}]),
        "channel_id": channel,
    }
    comment = render_mentions(mention_ids, step.text)
    if comment:
        params["initial_comment"] = comment
    if step.thread_ts:
        params["thread_ts"] = step.thread_ts
    await slack.call("files.completeUploadExternal", params=params)
    return {"fileId": file_id}


def make_handler(
    resources: ConnectorResources, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> Handler:
    """The ``slack`` step handler."""

    async def run_slack(ctx: StepContext, config: Any) -> Any:
        step = _typed_step(config)
        stored = await resources.connection(ctx.tenant, step.connection, ("slack",))
        connection = _typed_connection(step.connection, stored)
        slack = await _session(resources, step.connection, connection, timeout_seconds)
        try:
            mention_ids = await _lookup_users(slack, step.mentions)
            if step.operation == "postMessage":
                output = await _post_message(slack, ctx, step, mention_ids)
            else:
                output = await _upload_file(resources, slack, step, mention_ids)
        except StepError as exc:
            raise slack.fail(exc) from None
        result: dict[str, Any] = scrub_json(output, slack.secrets)
        return result

    return run_slack


async def check(resources: ConnectorResources, config: Mapping[str, Any]) -> dict[str, Any]:
    """Prove a ``slack`` connection's token works: ``auth.test`` -> ``{team, user, botId}``."""
    connection = _typed_connection("this", config)
    slack = await _session(resources, "this", connection, DEFAULT_TIMEOUT_SECONDS)
    try:
        data = await slack.call("auth.test")
    except StepError as exc:
        raise slack.fail(exc) from None
    facts = {"team": data.get("team"), "user": data.get("user"), "botId": data.get("bot_id")}
    result: dict[str, Any] = scrub_json(facts, slack.secrets)
    return result
