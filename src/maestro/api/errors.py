"""RFC 9457 problem+json errors with a stable ``code``; never a stack trace or a secret."""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("maestro.api")

PROBLEM_TYPE_BASE = "https://maestro.dev/problems/"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.headers = headers
        self.extra = extra


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or code.replace("_", " ").capitalize(),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError(
        404, f"{kind}_not_found", f"no {kind.replace('_', ' ')} {ident} exists in your tenant"
    )


def _pydantic_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        out.append({"path": ".".join(loc), "message": err.get("msg", "invalid value")})
    return out


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _pydantic_errors(exc.errors())
        first = errors[0] if errors else {"path": "", "message": "invalid request"}
        where = f" at {first['path']}" if first["path"] else ""
        return problem(
            422,
            "invalid_request",
            f"the request is not valid{where}: {first['message']}",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(asyncpg.UntranslatableCharacterError)  # "\u0000" in jsonb
    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)  # NUL in text
    async def _unstorable_text(request: Request, exc: Exception) -> JSONResponse:
        # The transaction rolled back; the input, not the server, is at fault.
        return problem(
            422,
            "invalid_request",
            "the request contains a NUL character (\\u0000), which cannot be stored; remove it",
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}; see /openapi.json"
        return problem(exc.status_code, code, detail, instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return problem(
            500,
            "internal_error",
            "the server failed to handle this request; it was logged with its X-Request-ID",
            instance=request.url.path,
        )
