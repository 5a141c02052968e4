"""A programmable HTTP provider: scripted answers per path, an echo, a hang, and a request log.

* ``fake.script("/orders/1", [503, 503, 200])`` answers the next requests to that path in turn
  (the last entry repeats); entries are statuses or :class:`Scripted` answers with a body,
  headers (e.g. ``Retry-After``) and a delay.
* ``/echo...`` answers 200 with the request as JSON: method, path, query string, query params,
  headers (lower-case names) and body text.
* ``/hang...`` waits ``hang_seconds`` before answering 200 (to exercise client timeouts).
* any other path answers 404 ``{"error": "not found"}``.

Every request is recorded in ``fake.requests`` before it is answered. Serve it with
``serve_asgi(FlakyHttp())``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send


@dataclass
class Scripted:
    status: int = 200
    body: Any = None  # str or bytes: sent as is; anything else: JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0

    def response(self) -> Response:
        if isinstance(self.body, str | bytes):
            return Response(self.body, status_code=self.status, headers=self.headers)
        if self.body is None:
            return Response(b"", status_code=self.status, headers=self.headers)
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class FlakyHttp:
    """ASGI app; ``async with serve_asgi(FlakyHttp()) as base_url: ...``."""

    def __init__(self, *, hang_seconds: float = 30.0) -> None:
        self.hang_seconds = hang_seconds
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, list[Scripted]] = {}

    def script(self, path: str, answers: list[int | Scripted]) -> None:
        """Answer the next requests to ``path`` with ``answers`` in turn; the last repeats."""
        if not answers:
            raise ValueError("give at least one answer")
        self._scripts[path] = [a if isinstance(a, Scripted) else Scripted(a) for a in answers]

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        recorded = RecordedRequest(
            request.method,
            request.url.path,
            request.url.query,
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        self.requests.append(recorded)
        response = await self._answer(request, recorded)
        await response(scope, receive, send)

    async def _answer(self, request: Request, recorded: RecordedRequest) -> Response:
        path = recorded.path
        script = self._scripts.get(path)
        if script is not None:
            answer = script.pop(0) if len(script) > 1 else script[0]
            if answer.delay_seconds:
                await asyncio.sleep(answer.delay_seconds)
            return answer.response()
        if path.startswith("/echo"):
            return JSONResponse(
                {
                    "method": recorded.method,
                    "path": path,
                    "query": recorded.query,
                    "params": dict(request.query_params.multi_items()),
                    "headers": recorded.headers,
                    "body": recorded.text,
                }
            )
        if path.startswith("/hang"):
            await asyncio.sleep(self.hang_seconds)
            return JSONResponse({"slept": self.hang_seconds})
        return Response(
            json.dumps({"error": "not found"}),
            status_code=404,
            media_type="application/json",
        )
