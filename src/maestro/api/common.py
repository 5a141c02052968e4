"""Helpers shared by the routers: principal dependency, audit, cursors, JSON shapes."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, Request

from maestro.api.auth import Principal, authenticate
from maestro.api.errors import ApiError
from maestro.db.pool import Conn
from maestro.db.queries import sql

CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool  # type: ignore[no-any-return]


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_uuid(value: str, kind: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(
            404, f"{kind}_not_found", f"no {kind.replace('_', ' ')} {value} exists"
        ) from None


def encode_cursor(*parts: Any) -> str:
    raw = orjson.dumps([p.isoformat() if isinstance(p, datetime) else str(p) for p in parts])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *parsers: Callable[[str], Any]) -> list[Any] | None:
    """The cursor's parts, each converted by its parser; a 400 for anything we did not issue."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = orjson.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(parts, list) or len(parts) != len(parsers):
            raise ValueError
        return [parse(str(p)) for parse, p in zip(parsers, parts, strict=True)]
    except (ValueError, orjson.JSONDecodeError):
        raise ApiError(
            400, "invalid_cursor", "the cursor is not one this API returned; start without it"
        ) from None


async def audit(
    conn: Conn,
    request: Request,
    principal: Principal,
    action: str,
    resource_type: str,
    resource_id: object,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        sql("insert_audit"),
        principal.tenant,
        principal.subject,
        action,
        resource_type,
        str(resource_id),
        details,
        request.state.request_id,
    )


def page(
    rows: list[asyncpg.Record],
    limit: int,
    to_json: Callable[[asyncpg.Record], dict[str, Any]],
    *cursor_columns: str,
) -> dict[str, Any]:
    """One page of a list fetched with ``limit + 1`` rows: items and the cursor of the next."""
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    next_cursor = encode_cursor(*(last[c] for c in cursor_columns)) if more and last else None
    return {"items": [to_json(r) for r in rows], "nextCursor": next_cursor}
