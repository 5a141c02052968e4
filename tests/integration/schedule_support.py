"""Helpers for schedule tests: a clock the test moves, an API client on it, and runners."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from maestro.api.app import create_app
from maestro.db.pool import create_pool
from maestro.settings import Settings
from maestro.triggers.schedule_runner import RunnerConfig, ScheduleRunner
from tests.conftest import auth


class FakeClock:
    """Wall-clock time as the test says it is."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, now: datetime) -> None:
        self.now = now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def z(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@asynccontextmanager
async def api_on(
    settings: Settings, pool: asyncpg.Pool, clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, pool, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=auth()
        ) as c:
            yield c


def runner(pool: asyncpg.Pool, dsn: str, clock: FakeClock, **config: Any) -> ScheduleRunner:
    return ScheduleRunner(
        pool, dsn, RunnerConfig(**{"reconcile_on_start": False, **config}), clock=clock
    )


@asynccontextmanager
async def separate_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(dsn, max_size=4)
    try:
        yield p
    finally:
        await p.close()


async def create_schedule(
    client: httpx.AsyncClient, workflow_id: str, **body: Any
) -> dict[str, Any]:
    r = await client.post("/api/schedules", json={"workflowId": workflow_id, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def get_schedule(client: httpx.AsyncClient, schedule_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/schedules/{schedule_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def ticks(pool: asyncpg.Pool, schedule_id: str) -> list[str]:
    """The scheduledFor of every execution the schedule started, oldest first."""
    rows = await pool.fetch(
        "SELECT trigger->>'scheduledFor' AS t FROM workflow_executions"
        " WHERE trigger->>'scheduleId' = $1 ORDER BY t",
        schedule_id,
    )
    return [r["t"] for r in rows]


async def audit_actions(pool: asyncpg.Pool, schedule_id: str) -> list[tuple[str, Any]]:
    rows = await pool.fetch(
        "SELECT action, details FROM audit_log WHERE resource_type = 'schedule'"
        " AND resource_id = $1 ORDER BY id",
        schedule_id,
    )
    return [(r["action"], r["details"]) for r in rows]


def new_id() -> str:
    return str(uuid.uuid4())
