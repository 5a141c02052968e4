"""Applying schedule plans to the database: one transaction per batch of locked schedules.

The runner (due schedules) and reconcile (every schedule) share :func:`process_schedules`:
for each locked row it decides whether to pause it, recompute its next run, fire its due
ticks, or leave it alone, then writes executions, schedule state and audit entries in bulk.
Each tick's execution carries the idempotency key ``schedule:{id}:{scheduledFor}`` under a
unique constraint, so no tick ever starts two executions.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from maestro.db.pool import Conn
from maestro.db.queries import sql
from maestro.engine.executions import TemplateCache
from maestro.triggers.cron import (
    CronError,
    TimezoneError,
    cached_next_fire,
    cached_schedule,
    spec_hash,
)
from maestro.triggers.schedule_plan import (
    OverlapPolicy,
    ScheduleState,
    TickResult,
    due_at,
    plan_due,
)

log = structlog.get_logger("maestro.scheduler")

Clock = Callable[[], datetime]
ACTIVE_STATUSES = frozenset({"queued", "running", "waiting"})
SCHEDULER_ACTOR = "scheduler"


def wall_clock() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tick_key(schedule_id: uuid.UUID, scheduled_for: datetime) -> str:
    return f"schedule:{schedule_id}:{iso(scheduled_for)}"


def jitter(seconds: int) -> timedelta:
    # Spreads the load of many schedules on the same tick; not a security measure.
    return timedelta(seconds=random.uniform(0, seconds)) if seconds else timedelta()


def first_run(expression: str, timezone: str, jitter_seconds: int, now: datetime) -> dict[str, Any]:
    """next_run_at, due_at and spec_hash for a schedule (re)started at ``now``."""
    schedule = cached_schedule(expression, timezone)
    nxt = cached_next_fire(schedule, now)
    return {
        "next_run_at": nxt,
        "due_at": due_at(nxt, jitter(jitter_seconds), None, now),
        "spec_hash": spec_hash(expression, timezone),
    }


@dataclass(slots=True)
class Outcome:
    """What one batch did, for the caller's report and metrics (after commit)."""

    checked: int = 0
    updated: int = 0
    paused: int = 0
    ticks: Counter[TickResult] = field(default_factory=Counter)
    # The nominal time of every tick this batch enqueued (for the skew metric after commit).
    enqueued: list[datetime] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.checked += other.checked
        self.updated += other.updated
        self.paused += other.paused
        self.ticks.update(other.ticks)
        self.enqueued.extend(other.enqueued)


@dataclass(slots=True)
class _Write:
    """The new bookkeeping of one schedule (a row of save_schedule_runs)."""

    row: asyncpg.Record
    next_run_at: datetime | None
    due_at: datetime | None
    spec_hash: str | None
    buffered_for: datetime | None
    enabled: bool
    paused_reason: str | None
    missed: int = 0
    skipped: int = 0
    last_scheduled_for: datetime | None = None
    last_execution_id: uuid.UUID | None = None
    last_skew_ms: float | None = None
    last_run_at: datetime | None = None

    @classmethod
    def unchanged(cls, row: asyncpg.Record) -> _Write:
        return cls(
            row,
            row["next_run_at"],
            row["due_at"],
            row["spec_hash"],
            row["buffered_for"],
            row["enabled"],
            row["paused_reason"],
        )


@dataclass(slots=True)
class _Audit:
    tenants: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)

    def add(self, row: asyncpg.Record, action: str, details: dict[str, Any]) -> None:
        self.tenants.append(row["tenant_id"])
        self.actions.append(action)
        self.ids.append(str(row["id"]))
        self.details.append(details)


def _pause_reason(row: asyncpg.Record) -> str | None:
    if row["workflow_status"] == "archived":
        return "workflow_archived: the workflow was archived; resume after restoring it"
    if row["latest_version"] is None:
        return "workflow_unpublished: the workflow has no published version; publish it and resume"
    return None


async def process_schedules(
    conn: Conn,
    rows: Sequence[asyncpg.Record],
    now: datetime,
    templates: TemplateCache,
    clock: Clock,
    *,
    actor: str = SCHEDULER_ACTOR,
    request_id: str | None = None,
) -> Outcome:
    """Bring locked schedule rows up to date at ``now``; the caller owns the transaction."""
    outcome = Outcome(checked=len(rows))
    audit = _Audit()
    writes: list[_Write] = []
    # Tick requests, in order: (write, scheduled_for, result, version)
    requests: list[tuple[_Write, datetime, TickResult, int]] = []

    for row in rows:
        write = _Write.unchanged(row)
        if not row["enabled"]:
            if row["next_run_at"] or row["due_at"] or row["buffered_for"]:
                write.next_run_at = write.due_at = write.buffered_for = None
                outcome.updated += 1
                writes.append(write)
            continue
        reason = _pause_reason(row)
        schedule = None
        if reason is None:
            try:
                schedule = cached_schedule(row["cron"], row["timezone"])
            except (CronError, TimezoneError) as exc:
                reason = f"invalid_schedule: {exc}; fix cron or timezone with PATCH and resume"
        if reason is not None or schedule is None:
            write.enabled = False
            write.paused_reason = reason
            write.next_run_at = write.due_at = write.buffered_for = None
            audit.add(row, "schedule.pause", {"reason": reason})
            outcome.paused += 1
            outcome.updated += 1
            writes.append(write)
            log.warning(
                "schedule_paused",
                tenant=row["tenant_id"],
                schedule_id=str(row["id"]),
                reason=reason,
            )
            continue
        current_hash = spec_hash(row["cron"], row["timezone"])
        if row["spec_hash"] != current_hash or row["next_run_at"] is None or row["due_at"] is None:
            # Cron or zone changed behind our back, or a half-written row: start over from now.
            write.next_run_at = cached_next_fire(schedule, now)
            write.due_at = due_at(
                write.next_run_at, jitter(row["jitter_seconds"]), row["buffered_for"], now
            )
            write.spec_hash = current_hash
            outcome.updated += 1
            writes.append(write)
            continue
        if row["due_at"] > now:
            continue
        last_status = row["last_status"]
        plan = plan_due(
            ScheduleState(
                schedule=schedule,
                next_run_at=row["next_run_at"],
                catchup_window=timedelta(seconds=row["catchup_window_seconds"]),
                max_catchup_runs=row["max_catchup_runs"],
                overlap_policy=OverlapPolicy(row["overlap_policy"]),
                buffered_for=row["buffered_for"],
                previous_running=last_status in ACTIVE_STATUSES,
            ),
            now,
        )
        write.next_run_at = plan.next_run_at
        write.buffered_for = plan.buffered_for
        write.due_at = due_at(
            plan.next_run_at, jitter(row["jitter_seconds"]), plan.buffered_for, now
        )
        write.missed = plan.missed
        write.skipped = len(plan.skipped)
        writes.append(write)
        for tick, result in plan.enqueue:
            requests.append((write, tick, result, row["latest_version"]))
        for tick in plan.skipped:
            audit.add(
                row, "schedule.tick_skipped", {"scheduledFor": iso(tick), "reason": "overlap"}
            )
        for tick in plan.buffered:
            audit.add(row, "schedule.tick_buffered", {"scheduledFor": iso(tick)})
        if plan.missed:
            assert plan.missed_first is not None
            assert plan.missed_last is not None
            audit.add(
                row,
                "schedule.ticks_missed",
                {
                    "count": plan.missed,
                    "atLeast": plan.truncated,
                    "first": iso(plan.missed_first),
                    "last": iso(plan.missed_last),
                    "catchupWindowSeconds": row["catchup_window_seconds"],
                    "maxCatchupRuns": row["max_catchup_runs"],
                },
            )
        outcome.ticks[TickResult.MISSED] += plan.missed
        outcome.ticks[TickResult.SKIPPED] += len(plan.skipped)
        outcome.ticks[TickResult.BUFFERED] += len(plan.buffered)

    if requests:
        await _enqueue(conn, requests, templates, clock, outcome, audit)
    if writes:
        await _save(conn, writes)
    if audit.actions:
        n = len(audit.actions)
        await conn.execute(
            sql("insert_audit_many"),
            audit.tenants,
            [actor] * n,
            audit.actions,
            ["schedule"] * n,
            audit.ids,
            audit.details,
            [request_id] * n,
        )
    return outcome


async def _enqueue(
    conn: Conn,
    requests: list[tuple[_Write, datetime, TickResult, int]],
    templates: TemplateCache,
    clock: Clock,
    outcome: Outcome,
    audit: _Audit,
) -> None:
    cols: dict[str, list[Any]] = {k: [] for k in ("t", "id", "wf", "v", "trig", "in", "key", "h")}
    used: dict[tuple[str, uuid.UUID, int], list[dict[str, Any]]] = {}
    for write, tick, _, version in requests:
        row = write.row
        tenant, workflow_id = row["tenant_id"], row["workflow_id"]
        if (tenant, workflow_id, version) not in used:
            used[(tenant, workflow_id, version)] = await templates.get(
                conn, tenant, workflow_id, version
            )
        key = tick_key(row["id"], tick)
        cols["t"].append(tenant)
        cols["id"].append(uuid.uuid4())
        cols["wf"].append(workflow_id)
        cols["v"].append(version)
        cols["trig"].append(
            {"type": "schedule", "scheduleId": str(row["id"]), "scheduledFor": iso(tick)}
        )
        cols["in"].append(row["input"])
        cols["key"].append(key)
        cols["h"].append(hashlib.sha256(key.encode()).hexdigest())
    template_json = [
        {"tenant": t, "workflowId": str(w), "version": v, "steps": steps}
        for (t, w, v), steps in used.items()
    ]
    enqueued_at = clock()
    results = await conn.fetch(
        sql("enqueue_executions"),
        cols["t"],
        cols["id"],
        cols["wf"],
        cols["v"],
        cols["trig"],
        cols["in"],
        cols["key"],
        cols["h"],
        cols["key"],  # the correlation id: findable in logs by schedule and tick
        template_json,
    )
    for (write, tick, result, _), found in zip(requests, results, strict=True):
        skew = (enqueued_at - tick).total_seconds()
        if found["created"]:
            outcome.ticks[result] += 1
            outcome.enqueued.append(tick)
        else:
            outcome.ticks[TickResult.DUPLICATE] += 1
        if result is TickResult.REPLAYED:
            audit.add(
                write.row,
                "schedule.tick_replayed",
                {"scheduledFor": iso(tick), "executionId": str(found["execution_id"])},
            )
        write.last_scheduled_for = tick
        write.last_skew_ms = round(skew * 1000, 3)
        write.last_run_at = enqueued_at
        if found["execution_id"] is not None:
            write.last_execution_id = found["execution_id"]


async def _save(conn: Conn, writes: list[_Write]) -> None:
    await conn.execute(
        sql("save_schedule_runs"),
        [w.row["tenant_id"] for w in writes],
        [w.row["id"] for w in writes],
        [w.next_run_at for w in writes],
        [w.due_at for w in writes],
        [w.spec_hash for w in writes],
        [w.buffered_for for w in writes],
        [w.enabled for w in writes],
        [w.paused_reason for w in writes],
        [w.last_scheduled_for for w in writes],
        [w.last_run_at for w in writes],
        [w.last_skew_ms for w in writes],
        [w.last_execution_id for w in writes],
        [w.missed for w in writes],
        [w.skipped for w in writes],
    )
