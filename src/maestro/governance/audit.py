"""Audit entries written in the background, in batches.

For events that arrive at a rate the sender controls, such as rejected webhook deliveries: a
flood of forged requests must not turn into a flood of single-row transactions. Entries are
written every ``flush_seconds`` in one statement. If more than ``max_pending`` are waiting, the
newest are dropped; they are counted in ``maestro_audit_dropped_total`` and logged. Entries
that must never be lost are written in the transaction of the change they describe instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from maestro.db.queries import sql
from maestro.observability.metrics import AUDIT_DROPPED

log = structlog.get_logger("maestro.audit")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    tenant: str
    actor: str | None
    action: str
    resource_type: str
    resource_id: str | None
    details: dict[str, Any] | None
    request_id: str | None


class AuditBuffer:
    def __init__(
        self, pool: asyncpg.Pool, *, max_pending: int = 10_000, flush_seconds: float = 0.2
    ) -> None:
        self._pool = pool
        self._pending: list[AuditEntry] = []
        self._max = max_pending
        self._flush_seconds = flush_seconds
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add(self, entry: AuditEntry) -> None:
        if len(self._pending) >= self._max:
            AUDIT_DROPPED.inc()
            log.warning("audit_dropped", action=entry.action, tenant=entry.tenant)
            return
        self._pending.append(entry)
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maestro-audit-buffer")

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    sql("insert_audit_many"),
                    [e.tenant for e in batch],
                    [e.actor for e in batch],
                    [e.action for e in batch],
                    [e.resource_type for e in batch],
                    [e.resource_id for e in batch],
                    [e.details for e in batch],
                    [e.request_id for e in batch],
                )
        except Exception as exc:  # keep the entries for the next attempt, within the bound
            log.warning("audit_flush_failed", error=repr(exc), pending=len(batch))
            self._pending = (batch + self._pending)[: self._max]

    async def _run(self) -> None:
        while not self._closing:
            await self._ready.wait()
            self._ready.clear()
            await asyncio.sleep(self._flush_seconds)  # gather a batch
            await self.flush()

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
