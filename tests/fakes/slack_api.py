"""A Slack Web API emulator (Starlette): enough of the API for the ``slack`` step, as Slack does it.

Methods are POST (or GET) ``/api/<method>`` with a form (urlencoded) or JSON body (GET: query);
point a connection's ``baseUrl`` at ``{url}/api/``. The token comes from
``Authorization: Bearer`` or a ``token`` field: none -> ``not_authed``, a wrong one ->
``invalid_auth`` (HTTP 200 with ``{"ok": false}``, as Slack answers).

Methods: ``auth.test``, ``chat.postMessage`` (stores the message with a ts and its metadata;
``channel_not_found``, ``is_archived``, ``not_in_channel``, ``no_text``, ``msg_too_long``,
``invalid_blocks``, ``thread_not_found``), ``conversations.history`` and
``conversations.replies`` (metadata only with ``include_all_metadata``), ``conversations.list``
(paginated with ``cursor``), ``users.lookupByEmail``, ``files.getUploadURLExternal`` (an
``upload_url`` on this server and a ``file_id``), ``POST /upload/<file_id>`` (the bytes),
``files.completeUploadExternal`` (shares the file in the channel as a message).

Switches: ``rate_limit(times, retry_after)`` answers the next requests with HTTP 429,
``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``; ``fail(method, error,
status=200)`` makes the next call of ``method`` fail with that error code;
``lose_response(method)`` performs the next call of ``method`` and then answers HTTP 503 as if
the answer was lost. ``calls`` records every request (method, params, token).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send


@dataclass
class Channel:
    id: str
    name: str
    is_private: bool = False
    archived: bool = False
    bot_is_member: bool = True
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str | None


@dataclass
class Upload:
    file_id: str
    filename: str
    length: int
    data: bytes | None = None
    title: str | None = None
    completed: bool = False


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


class SlackApi:
    """ASGI app; ``async with serve_asgi(SlackApi(token)) as url: ...`` (baseUrl ``url/api/``)."""

    def __init__(
        self,
        token: str,
        *,
        team: str = "Acme",
        team_id: str = "T0001",
        bot_user: str = "maestro-bot",
        bot_user_id: str = "UBOT0001",
        bot_id: str = "B0001",
    ) -> None:
        self.token = token
        self.team = team
        self.team_id = team_id
        self.bot_user = bot_user
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.channels: dict[str, Channel] = {}
        self.users: dict[str, str] = {}  # email -> user id
        self.uploads: dict[str, Upload] = {}
        self.calls: list[Call] = []
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._rate_limited = 0
        self._retry_after = "1"
        self._failures: dict[str, list[tuple[str, int]]] = {}
        self._lost: dict[str, int] = {}

    # --- set-up and switches ---

    def add_channel(self, id: str, name: str, **kwargs: Any) -> Channel:
        channel = Channel(id, name, **kwargs)
        self.channels[id] = channel
        return channel

    def add_user(self, email: str, user_id: str) -> None:
        self.users[email.lower()] = user_id

    def rate_limit(self, times: int = 1, retry_after: int = 1) -> None:
        self._rate_limited = times
        self._retry_after = str(retry_after)

    def fail(self, method: str, error: str, status: int = 200) -> None:
        self._failures.setdefault(method, []).append((error, status))

    def lose_response(self, method: str) -> None:
        self._lost[method] = self._lost.get(method, 0) + 1

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call.method == method)

    def messages(self, channel_id: str) -> list[dict[str, Any]]:
        return self.channels[channel_id].messages

    # --- ASGI ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _params(self, request: Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query_params)
        content_type = request.headers.get("content-type", "")
        if request.method == "POST":
            if content_type.startswith("application/json"):
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
            elif content_type.startswith("application/x-www-form-urlencoded"):
                # (parsed here: starlette's form parsing needs python-multipart)
                body_text = (await request.body()).decode("utf-8")
                params.update(parse_qsl(body_text, keep_blank_values=True))
        return params

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith("/upload/"):
            return await self._upload(request, path.removeprefix("/upload/"))
        if not path.startswith("/api/"):
            return JSONResponse({"ok": False, "error": "unknown_method"}, status_code=404)
        method = path.removeprefix("/api/")
        params = await self._params(request)
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else params.pop("token", None)
        params.pop("token", None)
        self.calls.append(Call(method, params, token))
        if self._rate_limited > 0:
            self._rate_limited -= 1
            return JSONResponse(
                {"ok": False, "error": "ratelimited"},
                status_code=429,
                headers={"Retry-After": self._retry_after},
            )
        if not token:
            return JSONResponse({"ok": False, "error": "not_authed"})
        if token != self.token:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        failures = self._failures.get(method)
        if failures:
            error, status = failures.pop(0)
            return JSONResponse({"ok": False, "error": error}, status_code=status)
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return JSONResponse({"ok": False, "error": "unknown_method"}, status_code=404)
        answer: dict[str, Any] = handler(params, request)
        if answer.get("ok") and self._lost.get(method):
            self._lost[method] -= 1
            return PlainTextResponse("upstream connect error", status_code=503)
        return JSONResponse(answer)

    # --- helpers ---

    def _find_channel(self, ref: Any) -> Channel | None:
        if not isinstance(ref, str):
            return None
        if ref in self.channels:
            return self.channels[ref]
        name = ref.lstrip("#")
        for channel in self.channels.values():
            if channel.name == name:
                return channel
        return None

    def _next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def _public(self, message: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
        shown = {k: v for k, v in message.items() if k != "metadata"}
        if with_metadata and message.get("metadata") is not None:
            shown["metadata"] = message["metadata"]
        return shown

    # --- methods ---

    def _m_auth_test(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://acme.slack.com/",
            "team": self.team,
            "user": self.bot_user,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
        }

    def _m_chat_postMessage(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        channel = self._find_channel(params.get("channel"))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if channel.archived:
            return {"ok": False, "error": "is_archived"}
        if not channel.bot_is_member:
            return {"ok": False, "error": "not_in_channel"}
        text = params.get("text")
        blocks = _json_field(params.get("blocks"))
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if text and len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        if blocks is not None and not (
            isinstance(blocks, list)
            and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks)
        ):
            return {"ok": False, "error": "invalid_blocks"}
        thread_ts = params.get("thread_ts")
        if thread_ts and not any(m["ts"] == thread_ts for m in channel.messages):
            return {"ok": False, "error": "thread_not_found"}
        metadata = _json_field(params.get("metadata"))
        message: dict[str, Any] = {
            "type": "message",
            "ts": self._next_ts(),
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": text or "",
        }
        if blocks:
            message["blocks"] = blocks
        if thread_ts:
            message["thread_ts"] = thread_ts
        if isinstance(metadata, dict):
            message["metadata"] = metadata
        channel.messages.append(message)
        return {"ok": True, "channel": channel.id, "ts": message["ts"], "message": message}

    def _m_conversations_history(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        channel = self.channels.get(str(params.get("channel")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if not channel.bot_is_member:
            return {"ok": False, "error": "not_in_channel"}
        limit = int(params.get("limit") or 100)
        with_metadata = _truthy(params.get("include_all_metadata"))
        top = [m for m in channel.messages if m.get("thread_ts") in (None, m["ts"])]
        newest_first = list(reversed(top))[:limit]
        return {
            "ok": True,
            "messages": [self._public(m, with_metadata) for m in newest_first],
            "has_more": len(top) > limit,
        }

    def _m_conversations_replies(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        channel = self.channels.get(str(params.get("channel")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = params.get("ts")
        thread = [m for m in channel.messages if m["ts"] == ts or m.get("thread_ts") == ts]
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        limit = int(params.get("limit") or 100)
        with_metadata = _truthy(params.get("include_all_metadata"))
        return {"ok": True, "messages": [self._public(m, with_metadata) for m in thread[:limit]]}

    def _m_conversations_list(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        limit = int(params.get("limit") or 100)
        start = int(params.get("cursor") or 0)
        channels = [
            c
            for c in self.channels.values()
            if not (c.archived and _truthy(params.get("exclude_archived")))
        ]
        page = channels[start : start + limit]
        more = start + limit < len(channels)
        return {
            "ok": True,
            "channels": [
                {"id": c.id, "name": c.name, "is_private": c.is_private, "is_archived": c.archived}
                for c in page
            ],
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _m_users_lookupByEmail(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        email = str(params.get("email") or "").lower()
        user_id = self.users.get(email)
        if user_id is None:
            return {"ok": False, "error": "users_not_found"}
        return {"ok": True, "user": {"id": user_id, "profile": {"email": email}}}

    def _m_files_getUploadURLExternal(
        self, params: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        filename = params.get("filename")
        try:
            length = int(params.get("length"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        if not filename or length <= 0:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._file_ids):07d}"
        self.uploads[file_id] = Upload(file_id, str(filename), length)
        base = str(request.base_url).rstrip("/")
        return {"ok": True, "upload_url": f"{base}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: Request, file_id: str) -> Response:
        upload = self.uploads.get(file_id)
        if upload is None or request.method != "POST":
            return PlainTextResponse("not found", status_code=404)
        upload.data = await request.body()
        return PlainTextResponse(f"OK - {len(upload.data)}")

    def _m_files_completeUploadExternal(
        self, params: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        files = _json_field(params.get("files"))
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        done: list[Upload] = []
        for item in files:
            upload = self.uploads.get(str(item.get("id"))) if isinstance(item, dict) else None
            if upload is None or upload.data is None:
                return {"ok": False, "error": "file_not_found"}
            upload.title = item.get("title") or upload.filename
            done.append(upload)
        channel = None
        if params.get("channel_id"):
            channel = self.channels.get(str(params["channel_id"]))
            if channel is None:
                return {"ok": False, "error": "channel_not_found"}
            if not channel.bot_is_member:
                return {"ok": False, "error": "not_in_channel"}
        for upload in done:
            upload.completed = True
        if channel is not None:
            message: dict[str, Any] = {
                "type": "message",
                "ts": self._next_ts(),
                "user": self.bot_user_id,
                "text": params.get("initial_comment") or "",
                "files": [{"id": u.file_id, "name": u.filename, "title": u.title} for u in done],
            }
            if params.get("thread_ts"):
                message["thread_ts"] = params["thread_ts"]
            channel.messages.append(message)
        return {
            "ok": True,
            "files": [{"id": u.file_id, "name": u.filename, "title": u.title} for u in done],
        }
