"""ASGI middleware: request ids, body-size limit, security headers, access log."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("maestro.api")

# Webhook deliveries (api/routers/webhook_deliveries.py) enforce their own body limit.
WEBHOOK_DELIVERY_PREFIX = "/api/webhooks/workflow/"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _problem_bytes(status: int, code: str, detail: str) -> bytes:
    return orjson.dumps(
        {
            "type": f"https://maestro.dev/problems/{code}",
            "title": code.replace("_", " ").capitalize(),
            "status": status,
            "code": code,
            "detail": detail,
        }
    )


class RequestContextMiddleware:
    """Accepts or generates X-Request-ID, binds it for logs, echoes it back, limits bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=request_id)
        started = time.perf_counter()
        status_holder: dict[str, Any] = {}
        extra = [
            (b"x-request-id", request_id.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        # Webhook deliveries check their own limit, after the endpoint and source checks.
        limit = None if scope["path"].startswith(WEBHOOK_DELIVERY_PREFIX) else self.max_body_bytes
        declared = headers.get(b"content-length")
        if (
            limit is not None
            and declared is not None
            and declared.isdigit()
            and int(declared) > limit
        ):
            await self._too_large(send_with_headers, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise _BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge as exc:
            if "status" not in status_holder:
                await self._too_large(send_with_headers, exc.limit)
        except Exception:
            # Starlette's outermost error middleware logs the exception and would answer
            # without our headers; answer here so the 500 carries the request id too.
            if "status" not in status_holder:
                await self._send_problem(
                    send_with_headers,
                    500,
                    "internal_error",
                    "the server failed to handle this request; it was logged with its X-Request-ID",
                )
            raise
        finally:
            if scope["path"] not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status_holder.get("status"),
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        await RequestContextMiddleware._send_problem(
            send, 413, "payload_too_large", _too_large_detail(limit)
        )

    @staticmethod
    async def _send_problem(send: Send, status: int, code: str, detail: str) -> None:
        body = _problem_bytes(status, code, detail)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _too_large_detail(limit: int) -> str:
    return f"the request body is larger than {limit} bytes; send less"


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI, which turns other errors raised while it reads a body
    into a 400, lets it through to the problem+json handler as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))
        self.limit = limit
