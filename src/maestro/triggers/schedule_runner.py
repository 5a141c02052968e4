"""The schedule runner (`maestro scheduler`, and inside `maestro up`).

It sleeps until the earliest ``due_at`` (woken early by NOTIFY ``maestro_schedules`` when
schedules change), claims due schedules with SKIP LOCKED, and in the same transaction enqueues
their ticks and advances ``next_run_at``. Every wake-up recomputes the time from the wall
clock, so sleeps never accumulate drift. Any number of runners may run at once: a schedule
is locked by one of them at a time, and each tick's idempotency key is unique.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from maestro.db.queries import sql
from maestro.engine.executions import TemplateCache
from maestro.observability.metrics import SCHEDULE_LAG, SCHEDULE_SKEW, SCHEDULE_TRIGGERS
from maestro.triggers.reconcile import ReconcileReport, reconcile
from maestro.triggers.schedule_store import (
    Clock,
    Outcome,
    process_schedules,
    wall_clock,
)

log = structlog.get_logger("maestro.scheduler")

# How long to wait when every overdue schedule is held by another runner.
OTHERS_BUSY_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    batch_size: int = 500
    # Look at the table at least this often, in case a NOTIFY was lost (e.g. a reconnect).
    max_sleep_seconds: float = 10.0
    reconcile_on_start: bool = True


class ScheduleRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        config: RunnerConfig | None = None,
        clock: Clock = wall_clock,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._config = config or RunnerConfig()
        self._clock = clock
        self._templates = TemplateCache()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.passes = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._listen()
        if self._config.reconcile_on_start:
            report = await self.reconcile()
            log.info("schedules_reconciled", **report.as_json())
        self._loop_task = asyncio.create_task(self._run_loop(), name="maestro-scheduler")
        self.ready.set()
        log.info("scheduler_started")

    async def shutdown(self) -> None:
        """Stop after the pass under way (its transaction commits or rolls back whole)."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        log.info("scheduler_stopped", passes=self.passes)

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener("maestro_schedules", self._on_notify)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- work

    async def reconcile(
        self, *, tenant: str | None = None, dry_run: bool = False
    ) -> ReconcileReport:
        report = await reconcile(
            self._pool, self._templates, self._clock, tenant=tenant, dry_run=dry_run
        )
        if not dry_run:
            _observe(report.outcome, self._clock())
        return report

    async def run_due(self, now: datetime | None = None) -> Outcome:
        """Fire every schedule due at ``now`` (default: the clock), a batch per transaction."""
        total = Outcome()
        size = self._config.batch_size
        while True:
            at = now or self._clock()
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(sql("claim_due_schedules"), at, size)
                if not rows:
                    break
                outcome = await process_schedules(conn, rows, at, self._templates, self._clock)
            _observe(outcome, self._clock())  # after commit: when workers can see the ticks
            total.add(outcome)
            if len(rows) < size or self._stopping.is_set():
                break
        return total

    async def _run_loop(self) -> None:
        cfg = self._config
        while not self._stopping.is_set():
            self._wake.clear()
            delay = cfg.max_sleep_seconds
            try:
                await self._ensure_listening()
                outcome = await self.run_due()
                self.passes += 1
                async with self._pool.acquire() as conn:
                    earliest = await conn.fetchval(sql("earliest_due_schedule"))
                if earliest is not None:
                    until = (earliest - self._clock()).total_seconds()
                    SCHEDULE_LAG.set(max(0.0, -until))
                    # Overdue yet nothing claimed: another runner holds those schedules.
                    floor = OTHERS_BUSY_SECONDS if outcome.checked == 0 else 0.0
                    delay = min(max(until, floor), delay)
                else:
                    SCHEDULE_LAG.set(0)
            except Exception as exc:  # the loop must outlive any failure; it retries
                log.warning("scheduler_pass_failed", error=repr(exc))
                delay = 1.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    async def _ensure_listening(self) -> None:
        """Reconnect LISTEN after the database went away; until then the timed wake-ups
        (at most max_sleep_seconds apart) keep schedules firing."""
        if self._listener is None or self._listener.is_closed():
            await self._listen()
            log.info("scheduler_listening_again")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()


def _observe(outcome: Outcome, committed_at: datetime) -> None:
    for result, count in outcome.ticks.items():
        SCHEDULE_TRIGGERS.labels(result=result.value).inc(count)
    for nominal in outcome.enqueued:
        SCHEDULE_SKEW.observe(max((committed_at - nominal).total_seconds(), 0.0))
