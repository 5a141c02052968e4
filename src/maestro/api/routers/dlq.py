"""The dead-letter queue: steps whose retries are exhausted, and their replay."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Request

from maestro.api.auth import Action, authorize
from maestro.api.common import CurrentPrincipal, decode_cursor, iso, page, pool
from maestro.api.errors import not_found
from maestro.api.routers.executions import replay_execution
from maestro.db.queries import sql

router = APIRouter(prefix="/api/dlq", tags=["dlq"])


def dead_step_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "stepRunId": r["id"],
        "executionId": str(r["execution_id"]),
        "workflowId": str(r["workflow_id"]),
        "workflowVersion": r["workflow_version"],
        "stepId": r["step_id"],
        "type": r["step_type"],
        "attempts": r["attempts"],
        "error": r["error"],
        "failedAt": iso(r["finished_at"]),
    }


@router.get("")
async def list_dead(
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    after = decode_cursor(cursor, datetime.fromisoformat, int)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(
            sql("list_dead_steps"),
            principal.tenant,
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
    return page(rows, limit, dead_step_json, "finished_at", "id")


@router.post("/{step_run_id}/replay", status_code=202)
async def replay_dead_step(
    step_run_id: int, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Re-queue a dead step. Its execution resumes; other dead steps of the same execution are
    re-queued with it, since an execution cannot finish while one of its steps is dead."""
    authorize(principal, Action.OPERATE)
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(sql("get_dead_step"), principal.tenant, step_run_id)
    if row is None:
        raise not_found("dead_step", step_run_id)
    return await replay_execution(request, principal, row["execution_id"], "dlq")
