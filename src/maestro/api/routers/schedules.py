"""Cron schedules: CRUD, pause/resume and reconcile. The runner fires them (DESIGN §5)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from itertools import islice
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Request, Response
from pydantic.alias_generators import to_camel

from maestro.api.auth import Action, Principal, authorize
from maestro.api.common import CurrentPrincipal, audit, decode_cursor, iso, page, parse_uuid, pool
from maestro.api.errors import ApiError, not_found
from maestro.db.pool import Conn
from maestro.db.queries import sql
from maestro.model.schedules import ScheduleIn, ScheduleSettings
from maestro.triggers.cron import (
    CronError,
    CronSchedule,
    TimezoneError,
    fires_after,
    parse_schedule,
)
from maestro.triggers.reconcile import reconcile
from maestro.triggers.schedule_store import first_run

router = APIRouter(prefix="/api/schedules", tags=["schedules"])

UPCOMING = 5


def schedule_json(r: asyncpg.Record, *, upcoming: bool = False) -> dict[str, Any]:
    body = {
        "id": str(r["id"]),
        "workflowId": str(r["workflow_id"]),
        "description": r["description"],
        "cron": r["cron"],
        "timezone": r["timezone"],
        "enabled": r["enabled"],
        "pausedReason": r["paused_reason"],
        "input": r["input"],
        "catchupWindowSeconds": r["catchup_window_seconds"],
        "maxCatchupRuns": r["max_catchup_runs"],
        "overlapPolicy": r["overlap_policy"],
        "jitterSeconds": r["jitter_seconds"],
        "nextRunAt": iso(r["next_run_at"]),
        "lastRunAt": iso(r["last_run_at"]),
        "lastScheduledFor": iso(r["last_scheduled_for"]),
        "lastSkewMs": r["last_skew_ms"],
        "lastExecutionId": str(r["last_execution_id"]) if r["last_execution_id"] else None,
        "bufferedFor": iso(r["buffered_for"]),
        "missedCount": r["missed_count"],
        "skippedCount": r["skipped_count"],
        "createdBy": r["created_by"],
        "createdAt": iso(r["created_at"]),
        "updatedAt": iso(r["updated_at"]),
    }
    if upcoming:
        body["upcoming"] = _upcoming(r)
    return body


def _upcoming(r: asyncpg.Record) -> list[str]:
    """The next nominal fire times, from nextRunAt on (handy to check DST behaviour)."""
    if not r["enabled"] or r["next_run_at"] is None:
        return []
    try:
        schedule = parse_schedule(r["cron"], r["timezone"])
    except (CronError, TimezoneError):
        return []
    first: datetime = r["next_run_at"]
    rest = islice(fires_after(schedule, first), UPCOMING - 1)
    return [t for t in (iso(first), *(iso(f) for f in rest)) if t is not None]


def _parsed(cron: str, timezone: str) -> CronSchedule:
    try:
        return parse_schedule(cron, timezone)
    except CronError as exc:
        raise ApiError(
            422,
            "invalid_cron",
            f"the cron expression is not valid at position {exc.position}: {exc.reason}",
            position=exc.position,
            field=exc.field,
            reason=exc.reason,
        ) from None
    except TimezoneError as exc:
        raise ApiError(422, "invalid_timezone", str(exc)) from None


def _runnable(workflow: Mapping[str, Any] | asyncpg.Record | None, workflow_id: object) -> None:
    """A schedule may only run a workflow that exists, is active and is published."""
    if workflow is None:
        raise not_found("workflow", workflow_id)
    if workflow["status"] == "archived":
        raise ApiError(
            409,
            "workflow_archived",
            "the workflow is archived; schedules cannot run it (restore or pick another)",
        )
    if workflow["latest_version"] is None:
        raise ApiError(
            409,
            "workflow_not_published",
            "the workflow has no published version; POST /api/workflows/{id}/publish first",
        )


async def _changed(
    conn: Conn,
    request: Request,
    principal: Principal,
    action: str,
    row: asyncpg.Record,
    details: dict[str, Any] | None = None,
) -> None:
    await audit(conn, request, principal, action, "schedule", row["id"], details)
    await conn.execute(sql("notify_schedules"))


@router.post("", status_code=201)
async def create_schedule(
    body: ScheduleIn, request: Request, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    _parsed(body.cron, body.timezone)
    schedule_id = uuid.uuid4()
    async with pool(request).acquire() as conn, conn.transaction():
        workflow = await conn.fetchrow(sql("workflow_status"), principal.tenant, body.workflow_id)
        _runnable(workflow, body.workflow_id)
        run: dict[str, Any] = {"next_run_at": None, "due_at": None, "spec_hash": None}
        if body.enabled:
            run = first_run(
                body.cron, body.timezone, body.jitter_seconds, request.app.state.clock()
            )
        row = await conn.fetchrow(
            sql("insert_schedule"),
            principal.tenant,
            schedule_id,
            body.workflow_id,
            body.description,
            " ".join(body.cron.split()),
            body.timezone,
            body.enabled,
            None if body.enabled else f"created paused by {principal.subject}",
            body.input,
            body.catchup_window_seconds,
            body.max_catchup_runs,
            body.overlap_policy.value,
            body.jitter_seconds,
            run["next_run_at"],
            run["due_at"],
            run["spec_hash"],
            principal.subject,
        )
        assert row is not None
        await _changed(
            conn,
            request,
            principal,
            "schedule.create",
            row,
            {"workflowId": str(body.workflow_id), "cron": row["cron"], "timezone": body.timezone},
        )
    response.headers["Location"] = f"/api/schedules/{schedule_id}"
    return schedule_json(row, upcoming=True)


@router.get("")
async def list_schedules(
    request: Request,
    principal: CurrentPrincipal,
    workflow_id: Annotated[str | None, Query(alias="workflowId")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    wf = parse_uuid(workflow_id, "workflow") if workflow_id is not None else None
    after = decode_cursor(cursor, datetime.fromisoformat, uuid.UUID)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(
            sql("list_schedules"),
            principal.tenant,
            wf,
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
    return page(rows, limit, schedule_json, "created_at", "id")


@router.post("/reconcile")
async def reconcile_schedules(
    request: Request,
    principal: CurrentPrincipal,
    dry_run: Annotated[bool, Query(alias="dryRun")] = False,
) -> dict[str, Any]:
    """Bring this tenant's schedules up to date; running it twice changes nothing more."""
    authorize(principal, Action.OPERATE)
    report = await reconcile(
        pool(request),
        request.app.state.step_templates,
        request.app.state.clock,
        tenant=principal.tenant,
        dry_run=dry_run,
        actor=principal.subject,
        request_id=request.state.request_id,
    )
    result = report.as_json()
    async with pool(request).acquire() as conn:
        await audit(conn, request, principal, "schedule.reconcile", "schedule", "*", result)
    return result


@router.get("/{schedule_id}")
async def get_schedule(
    schedule_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    sid = parse_uuid(schedule_id, "schedule")
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(sql("get_schedule"), principal.tenant, sid)
    if row is None:
        raise not_found("schedule", schedule_id)
    return schedule_json(row, upcoming=True)


async def _update(
    request: Request,
    principal: Principal,
    schedule_id: str,
    changes: ScheduleSettings,
    action: str,
) -> dict[str, Any]:
    sid = parse_uuid(schedule_id, "schedule")
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("lock_schedule"), principal.tenant, sid)
        if row is None:
            raise not_found("schedule", schedule_id)
        given = changes.model_dump(exclude_none=True)
        if action != "schedule.update" and row["enabled"] == given["enabled"]:
            return schedule_json(row, upcoming=True)  # paused or resumed already
        new = {
            "description": given.get("description", row["description"]),
            "cron": " ".join(given.get("cron", row["cron"]).split()),
            "timezone": given.get("timezone", row["timezone"]),
            "enabled": given.get("enabled", row["enabled"]),
            "input": given.get("input", row["input"]),
            "catchup_window_seconds": given.get(
                "catchup_window_seconds", row["catchup_window_seconds"]
            ),
            "max_catchup_runs": given.get("max_catchup_runs", row["max_catchup_runs"]),
            "overlap_policy": str(given.get("overlap_policy", row["overlap_policy"])),
            "jitter_seconds": given.get("jitter_seconds", row["jitter_seconds"]),
        }
        timing_changed = any(
            new[k] != row[k] for k in ("cron", "timezone", "enabled", "jitter_seconds")
        )
        if "cron" in given or "timezone" in given:
            _parsed(new["cron"], new["timezone"])
        paused_reason = row["paused_reason"]
        run = {k: row[k] for k in ("next_run_at", "due_at", "spec_hash")}
        buffered_for = row["buffered_for"]
        if not new["enabled"]:
            if row["enabled"]:
                paused_reason = f"paused by {principal.subject}"
            run = {"next_run_at": None, "due_at": None, "spec_hash": None}
            buffered_for = None
        elif timing_changed or row["next_run_at"] is None:
            if not row["enabled"]:
                _runnable(
                    {"status": row["workflow_status"], "latest_version": row["latest_version"]},
                    row["workflow_id"],
                )
            paused_reason = None
            run = first_run(
                new["cron"], new["timezone"], new["jitter_seconds"], request.app.state.clock()
            )
        updated = await conn.fetchrow(
            sql("update_schedule"),
            principal.tenant,
            sid,
            new["description"],
            new["cron"],
            new["timezone"],
            new["enabled"],
            paused_reason,
            new["input"],
            new["catchup_window_seconds"],
            new["max_catchup_runs"],
            new["overlap_policy"],
            new["jitter_seconds"],
            run["next_run_at"],
            run["due_at"],
            run["spec_hash"],
            buffered_for,
        )
        assert updated is not None
        changed = sorted(to_camel(k) for k in given if new.get(k, given[k]) != row[k])
        await _changed(conn, request, principal, action, updated, {"changed": changed})
    return schedule_json(updated, upcoming=True)


@router.patch("/{schedule_id}")
async def update_schedule(
    schedule_id: str, body: ScheduleSettings, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Change any setting; a new cron, zone or jitter, or enabling, recomputes nextRunAt."""
    authorize(principal, Action.EDIT)
    return await _update(request, principal, schedule_id, body, "schedule.update")


@router.post("/{schedule_id}/pause")
async def pause_schedule(
    schedule_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.OPERATE)
    return await _update(
        request, principal, schedule_id, ScheduleSettings(enabled=False), "schedule.pause"
    )


@router.post("/{schedule_id}/resume")
async def resume_schedule(
    schedule_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Start again from now: ticks that fell while paused are not replayed."""
    authorize(principal, Action.OPERATE)
    return await _update(
        request, principal, schedule_id, ScheduleSettings(enabled=True), "schedule.resume"
    )


@router.delete("/{schedule_id}", status_code=204)
async def delete_schedule(schedule_id: str, request: Request, principal: CurrentPrincipal) -> None:
    authorize(principal, Action.EDIT)
    sid = parse_uuid(schedule_id, "schedule")
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("delete_schedule"), principal.tenant, sid)
        if row is None:
            raise not_found("schedule", schedule_id)
        await _changed(conn, request, principal, "schedule.delete", row)
