"""Reconcile: bring every schedule to a consistent state; idempotent, with a dry run.

Recomputes ``next_run_at`` where the cron or zone changed, repairs half-written rows,
fires ticks that are overdue (catch-up rules apply), clears leftovers of paused schedules,
and pauses schedules whose workflow was archived or has no published version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from maestro.db.queries import sql
from maestro.engine.executions import TemplateCache
from maestro.triggers.schedule_plan import TickResult
from maestro.triggers.schedule_store import (
    SCHEDULER_ACTOR,
    Clock,
    Outcome,
    process_schedules,
)

BATCH = 500


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    outcome: Outcome
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        ticks = self.outcome.ticks
        return {
            "dryRun": self.dry_run,
            "checked": self.outcome.checked,
            "updated": self.outcome.updated,
            "paused": self.outcome.paused,
            "replayed": ticks[TickResult.FIRED] + ticks[TickResult.REPLAYED],
            "skipped": ticks[TickResult.MISSED] + ticks[TickResult.SKIPPED],
            "buffered": ticks[TickResult.BUFFERED],
        }


async def reconcile(
    pool: asyncpg.Pool,
    templates: TemplateCache,
    clock: Clock,
    *,
    tenant: str | None = None,
    dry_run: bool = False,
    actor: str = SCHEDULER_ACTOR,
    request_id: str | None = None,
) -> ReconcileReport:
    """Reconcile the schedules of ``tenant`` (all tenants when None).

    Schedules a runner holds at this moment are skipped: that runner is bringing them up to
    date. A dry run does the same work in one transaction and rolls it back.
    """
    total = Outcome()
    async with pool.acquire() as conn:
        dry_tx = conn.transaction() if dry_run else None
        if dry_tx is not None:
            await dry_tx.start()
        try:
            after: tuple[str, uuid.UUID] | None = None
            while True:
                async with conn.transaction():
                    now = clock()
                    rows = await conn.fetch(
                        sql("reconcile_batch"),
                        tenant,
                        after[0] if after else None,
                        after[1] if after else None,
                        BATCH,
                    )
                    if not rows:
                        break
                    total.add(
                        await process_schedules(
                            conn, rows, now, templates, clock, actor=actor, request_id=request_id
                        )
                    )
                    if any(total.ticks.values()) or total.updated:
                        await conn.execute(sql("notify_schedules"))
                after = (rows[-1]["tenant_id"], rows[-1]["id"])
                if len(rows) < BATCH:
                    break
        finally:
            if dry_tx is not None:
                await dry_tx.rollback()
    return ReconcileReport(total, dry_run)
