"""Connections: tenant-scoped provider settings whose secrets are references only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from fastapi import APIRouter, Request, Response

from maestro.api.auth import Action, authorize
from maestro.api.common import CurrentPrincipal, audit, iso, pool
from maestro.api.errors import ApiError, not_found
from maestro.connectors.registry import check_connection
from maestro.db.queries import sql
from maestro.engine.retry import StepError
from maestro.model.connections import NAME_PATTERN, ConnectionIn, ConnectionProblem, validate_config
from maestro.secrets import scrub_json

router = APIRouter(prefix="/api/connections", tags=["connections"])

CONNECTION_TEST_SECONDS = 15.0


def connection_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": r["name"],
        "type": r["type"],
        "description": r["description"],
        "config": r["config"],
        "createdAt": iso(r["created_at"]),
        "updatedAt": iso(r["updated_at"]),
    }


def _validated(body: ConnectionIn) -> dict[str, Any]:
    try:
        return validate_config(body.type, body.config)
    except ConnectionProblem as exc:
        first = exc.errors[0]
        raise ApiError(
            422,
            exc.code,
            f"the connection settings are not valid at {first['path']}: {first['message']}",
            errors=exc.errors,
        ) from None


@router.post("", status_code=201)
async def create_connection(
    body: ConnectionIn, request: Request, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    if body.name is None:
        raise ApiError(422, "invalid_request", f"name is required ({NAME_PATTERN})")
    config = _validated(body)
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            sql("insert_connection"),
            principal.tenant,
            body.name,
            body.type,
            body.description,
            config,
            principal.subject,
        )
        if row is None:
            raise ApiError(
                409,
                "connection_exists",
                f"a connection named {body.name!r} exists; PUT /api/connections/{body.name} "
                "to change it",
            )
        await audit(
            conn,
            request,
            principal,
            "connection.create",
            "connection",
            body.name,
            {"type": body.type},
        )
    response.headers["Location"] = f"/api/connections/{body.name}"
    return connection_json(row)


@router.get("")
async def list_connections(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(sql("list_connections"), principal.tenant)
    return {"items": [connection_json(r) for r in rows]}


@router.get("/{name}")
async def get_connection(
    name: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(sql("get_connection"), principal.tenant, name)
    if row is None:
        raise not_found("connection", name)
    return connection_json(row)


@router.put("/{name}")
async def replace_connection(
    name: str, body: ConnectionIn, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Replace type, description and config (rotate credentials here, in one place)."""
    authorize(principal, Action.EDIT)
    if body.name is not None and body.name != name:
        raise ApiError(
            422, "invalid_request", "a connection cannot be renamed; create a new one instead"
        )
    config = _validated(body)
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            sql("update_connection"), principal.tenant, name, body.type, body.description, config
        )
        if row is None:
            raise not_found("connection", name)
        await audit(
            conn, request, principal, "connection.update", "connection", name, {"type": body.type}
        )
    return connection_json(row)


@router.delete("/{name}", status_code=204)
async def delete_connection(name: str, request: Request, principal: CurrentPrincipal) -> None:
    authorize(principal, Action.EDIT)
    async with pool(request).acquire() as conn, conn.transaction():
        if await conn.fetchrow(sql("delete_connection"), principal.tenant, name) is None:
            raise not_found("connection", name)
        await audit(conn, request, principal, "connection.delete", "connection", name)


@router.post("/{name}/test")
async def test_connection(
    name: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Make a harmless call with the connection (SMTP EHLO/NOOP, Slack auth.test, Jira myself,
    ...). A connection that does not work is not an API error: ``ok`` is false and ``error``
    says why, classified like a step failure."""
    authorize(principal, Action.OPERATE)
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(sql("get_connection"), principal.tenant, name)
    if row is None:
        raise not_found("connection", name)
    state = request.app.state
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CONNECTION_TEST_SECONDS):
            details = await check_connection(
                state.connector_resources,
                state.step_handlers,
                principal.tenant,
                name,
                row["type"],
                row["config"],
            )
    except StepError as exc:
        result: dict[str, Any] = {
            "ok": False,
            "error": {"class": str(exc.error_class), "message": exc.message},
        }
    except TimeoutError:
        result = {
            "ok": False,
            "error": {
                "class": "timeout",
                "message": f"no answer within {CONNECTION_TEST_SECONDS:g}s",
            },
        }
    else:
        result = {"ok": True, "details": details}
    result = scrub_json(result, state.connector_resources.secrets.known_values())
    result["durationMs"] = round((time.perf_counter() - started) * 1000, 1)
    return {"connection": name, "type": row["type"], **result}
