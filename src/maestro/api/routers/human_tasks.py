"""Human tasks (approvals): list, get, complete with a decision."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from maestro.api.auth import Action, authorize
from maestro.api.common import CurrentPrincipal, audit, iso, parse_uuid, pool
from maestro.api.errors import ApiError, not_found
from maestro.db.queries import sql

router = APIRouter(prefix="/api/human-tasks", tags=["human-tasks"])


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=4000)


def task_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "executionId": str(r["execution_id"]),
        "stepId": r["step_id"],
        "title": r["title"],
        "description": r["description"],
        "assignees": list(r["assignees"]),
        "status": r["status"],
        "decisionBy": r["decision_by"],
        "comment": r["comment"],
        "createdAt": iso(r["created_at"]),
        "decidedAt": iso(r["decided_at"]),
    }


@router.get("")
async def list_tasks(
    request: Request,
    principal: CurrentPrincipal,
    status: Annotated[
        str | None, Query(pattern="^(open|approved|rejected|cancelled|all)$")
    ] = "open",
    execution_id: Annotated[uuid.UUID | None, Query(alias="executionId")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(
            sql("list_human_tasks"),
            principal.tenant,
            None if status == "all" else status,
            execution_id,
            limit,
        )
    return {"items": [task_json(r) for r in rows]}


@router.get("/{task_id}")
async def get_task(task_id: str, request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(
            sql("get_human_task"), principal.tenant, parse_uuid(task_id, "human_task")
        )
    if row is None:
        raise not_found("human_task", task_id)
    return task_json(row)


@router.post("/{task_id}/complete")
async def complete_task(
    task_id: str, body: CompleteRequest, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.OPERATE)
    tid = parse_uuid(task_id, "human_task")
    status = "approved" if body.decision == "approve" else "rejected"
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            sql("decide_human_task"), principal.tenant, tid, status, principal.subject, body.comment
        )
        if row is None:
            existing = await conn.fetchrow(sql("get_human_task"), principal.tenant, tid)
            if existing is None:
                raise not_found("human_task", task_id)
            raise ApiError(409, "human_task_closed", f"this task is already {existing['status']}")
        decision = {
            "decision": body.decision,
            "comment": body.comment,
            "decidedBy": principal.subject,
        }
        await conn.execute(
            sql("wake_approval_step"),
            principal.tenant,
            row["execution_id"],
            row["step_id"],
            decision,
        )
        await conn.execute(sql("notify_steps"))
        await audit(
            conn,
            request,
            principal,
            f"human_task.{body.decision}",
            "human_task",
            tid,
            {"executionId": str(row["execution_id"]), "stepId": row["step_id"]},
        )
    return task_json(row)
