"""Background upkeep of webhooks, run by every API process (idempotent, so replicas may
overlap): retire previous secrets whose grace period ended, purge expired delivery nonces."""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg
import structlog

from maestro.db.queries import sql
from maestro.triggers.schedule_store import Clock, iso

log = structlog.get_logger("maestro.webhooks")

PURGE_BATCH = 10_000


async def retire_expired_secrets(pool: asyncpg.Pool, now: datetime) -> int:
    """Drop previous secrets past their grace period (verification already ignores them),
    with an audit entry each."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(sql("retire_previous_secrets"), now)
        if rows:
            n = len(rows)
            await conn.execute(
                sql("insert_audit_many"),
                [r["tenant_id"] for r in rows],
                ["maestro"] * n,
                ["webhook.retire"] * n,
                ["webhook"] * n,
                [str(r["id"]) for r in rows],
                [{"retiredAt": iso(now)}] * n,
                [None] * n,
            )
    return len(rows)


async def purge_expired_deliveries(pool: asyncpg.Pool, now: datetime) -> int:
    total = 0
    while True:
        async with pool.acquire() as conn:
            status = await conn.execute(sql("purge_expired_deliveries"), now, PURGE_BATCH)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < PURGE_BATCH:
            return total


async def maintain_webhooks(pool: asyncpg.Pool, clock: Clock, interval: float) -> None:
    """Run the upkeep every ``interval`` seconds until cancelled; failures are logged."""
    while True:
        try:
            now = clock()
            retired = await retire_expired_secrets(pool, now)
            purged = await purge_expired_deliveries(pool, now)
            if retired or purged:
                log.info("webhook_maintenance", retired=retired, nonces_purged=purged)
        except Exception as exc:  # the loop outlives any failure
            log.warning("webhook_maintenance_failed", error=repr(exc))
        await asyncio.sleep(interval)
