"""Executions: get, list, cancel, replay, logs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Request

from maestro.api.auth import Action, authorize
from maestro.api.common import (
    CurrentPrincipal,
    audit,
    decode_cursor,
    iso,
    page,
    parse_uuid,
    pool,
)
from maestro.api.errors import ApiError, not_found
from maestro.db.pool import Conn
from maestro.db.queries import sql

router = APIRouter(prefix="/api/executions", tags=["executions"])

EXECUTION_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")


def step_json(s: asyncpg.Record) -> dict[str, Any]:
    return {
        "stepRunId": s["id"],
        "stepId": s["step_id"],
        "type": s["step_type"],
        "status": s["status"],
        "attempts": s["attempts"],
        "maxAttempts": s["max_attempts"],
        "nextAttemptAt": iso(s["run_at"]) if s["status"] == "failed" else None,
        "startedAt": iso(s["started_at"]),
        "finishedAt": iso(s["finished_at"]),
        "output": s["output"],
        "error": s["error"],
        "inputSha256": s["input_sha256"],
        "outputSha256": s["output_sha256"],
    }


def execution_json(
    row: asyncpg.Record, steps: list[asyncpg.Record] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(row["id"]),
        "workflowId": str(row["workflow_id"]),
        "workflowVersion": row["workflow_version"],
        "status": row["status"],
        "trigger": row["trigger"],
        "input": row["input"],
        "output": row["output"],
        "error": row["error"],
        "correlationId": row["correlation_id"],
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
    }
    if steps is not None:
        body["steps"] = [step_json(s) for s in steps]
    return body


async def _load(conn: Conn, tenant: str, execution_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(sql("get_execution"), tenant, parse_uuid(execution_id, "execution"))
    if row is None:
        raise not_found("execution", execution_id)
    return row


@router.get("/{execution_id}")
async def get_execution(
    execution_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await _load(conn, principal.tenant, execution_id)
        steps = await conn.fetch(sql("get_execution_steps"), principal.tenant, row["id"])
    return execution_json(row, steps)


@router.get("")
async def list_executions(
    request: Request,
    principal: CurrentPrincipal,
    workflow_id: Annotated[uuid.UUID | None, Query(alias="workflowId")] = None,
    status: Annotated[list[str] | None, Query()] = None,
    created_after: Annotated[datetime | None, Query(alias="createdAfter")] = None,
    created_before: Annotated[datetime | None, Query(alias="createdBefore")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    statuses = [s for part in status or [] for s in part.split(",") if s]
    bad = [s for s in statuses if s not in EXECUTION_STATUSES]
    if bad:
        raise ApiError(
            400,
            "invalid_status",
            f"unknown status {bad[0]!r}; use one of {', '.join(EXECUTION_STATUSES)}",
        )
    after = decode_cursor(cursor, datetime.fromisoformat, uuid.UUID)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(
            sql("list_executions"),
            principal.tenant,
            workflow_id,
            statuses or None,
            created_after,
            created_before,
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
    return page(rows, limit, execution_json, "created_at", "id")


@router.post("/{execution_id}/cancel")
async def cancel(
    execution_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.OPERATE)
    async with pool(request).acquire() as conn, conn.transaction():
        row = await _load(conn, principal.tenant, execution_id)
        if not await conn.fetchval(sql("cancel_execution"), principal.tenant, row["id"]):
            raise ApiError(
                409, "execution_finished", f"the execution already finished as {row['status']}"
            )
        await audit(conn, request, principal, "execution.cancel", "execution", row["id"])
    return {"executionId": execution_id, "status": "cancelled"}


async def replay_execution(
    request: Request, principal: Any, execution_id: uuid.UUID, via: str
) -> dict[str, Any]:
    async with pool(request).acquire() as conn, conn.transaction():
        row = await _load(conn, principal.tenant, str(execution_id))
        requeued = await conn.fetchval(sql("replay_execution"), principal.tenant, row["id"])
        if requeued is None:
            raise ApiError(
                409,
                "execution_not_replayable",
                f"only failed or cancelled executions can be replayed; this one is {row['status']}",
            )
        await audit(
            conn, request, principal, "execution.replay", "execution", row["id"], {"via": via}
        )
    return {"executionId": str(execution_id), "status": "queued", "requeuedSteps": requeued}


@router.post("/{execution_id}/replay", status_code=202)
async def replay(
    execution_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Re-run the dead and cancelled steps, keeping the outputs of succeeded steps."""
    authorize(principal, Action.OPERATE)
    return await replay_execution(
        request, principal, parse_uuid(execution_id, "execution"), "execution"
    )


@router.get("/{execution_id}/logs")
async def logs(
    execution_id: str,
    request: Request,
    principal: CurrentPrincipal,
    after: Annotated[int, Query(ge=0, description="Return lines after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await _load(conn, principal.tenant, execution_id)
        lines = await conn.fetch(sql("list_logs"), principal.tenant, row["id"], after, limit)
    items = [
        {
            "id": r["id"],
            "stepId": r["step_id"],
            "level": r["level"],
            "event": r["event"],
            "message": r["message"],
            "data": r["data"],
            "correlationId": r["correlation_id"],
            "createdAt": iso(r["created_at"]),
        }
        for r in lines
    ]
    return {"items": items, "next": items[-1]["id"] if len(items) == limit else None}
