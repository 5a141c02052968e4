"""Workers that die (SIGKILL) or are stopped (SIGTERM) mid-drain lose and duplicate nothing.

DESIGN §1: "any process may die at any moment without losing or duplicating recorded work";
§2: leases expire and another worker re-claims; on SIGTERM a worker stops claiming, finishes
or releases what it holds. The proof of "recorded once" is the log: every recorded success
writes one `step_succeeded` line, so a success recorded twice would show two.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.e2e.conftest import (
    MaestroProcess,
    Spawner,
    api_client,
    assert_each_step_succeeded_once,
    chain,
    execute_many,
    publish,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXECUTIONS = 300
STEPS = 5
WORKER_ENV = {
    "MAESTRO_LEASE_SECONDS": "2",
    "MAESTRO_POLL_INTERVAL_SECONDS": "0.1",
    "MAESTRO_WORKER_CONCURRENCY": "16",
    "MAESTRO_CLAIM_BATCH_SIZE": "16",
    "MAESTRO_LOG_LEVEL": "warning",
}


@pytest.fixture
async def db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


async def enqueue(spawn: Spawner, db_dsn: str) -> None:
    """Publish a 5-step noop chain and queue EXECUTIONS runs of it over HTTP (no worker yet)."""
    api = spawn.api(db_dsn, MAESTRO_LOG_LEVEL="warning")
    await api.wait_ready()
    async with api_client(api.url) as client:
        wid = await publish(client, chain("chaos", STEPS))
        ids = await execute_many(client, wid, EXECUTIONS)
    assert len(set(ids)) == EXECUTIONS
    assert await api.terminate() == 0, api.describe()


async def succeeded(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM workflow_executions WHERE status = 'succeeded'")
    )


async def wait_mid_drain(db: asyncpg.Connection, workers: list[MaestroProcess]) -> int:
    """Poll (tightly) until some but clearly not all executions succeeded."""

    async def in_window() -> int | None:
        for w in workers:
            assert w.proc.poll() is None, w.describe()
        n = await succeeded(db)
        assert n <= 250, f"the drain outran the poll ({n} already succeeded)"
        return n if n >= 1 else None

    return int(await wait_until(in_window, timeout=30, what="the drain to start", interval=0.005))


async def wait_all_finished(db: asyncpg.Connection, timeout: float) -> None:
    async def finished() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM workflow_executions"
            " WHERE status NOT IN ('succeeded', 'failed', 'cancelled')"
        )
        return n == 0

    await wait_until(finished, timeout=timeout, what="every execution to finish", interval=0.1)


async def test_sigkill_a_worker_mid_drain(
    spawn: Spawner, db_dsn: str, db: asyncpg.Connection
) -> None:
    await enqueue(spawn, db_dsn)
    workers = {
        name: spawn.worker(db_dsn, MAESTRO_WORKER_ID=name, **WORKER_ENV) for name in ("a", "b")
    }
    await asyncio.gather(*(w.wait_ready() for w in workers.values()))
    await wait_mid_drain(db, list(workers.values()))

    # Freeze a worker that holds leases, so that what it holds is known, then kill it.
    async def freeze_a_busy_worker() -> tuple[str, list[int]] | None:
        for name, worker in workers.items():
            worker.signal(signal.SIGSTOP)
            held = await db.fetch(
                "SELECT id FROM step_runs WHERE status = 'running' AND worker_id = $1", name
            )
            if held:
                return name, [r["id"] for r in held]
            worker.signal(signal.SIGCONT)
        return None

    victim_name, held_ids = await wait_until(
        freeze_a_busy_worker, timeout=10, what="a worker holding leases", interval=0.001
    )
    victim = workers.pop(victim_name)
    [survivor] = workers.values()
    await victim.kill()
    assert await succeeded(db) < EXECUTIONS

    started = time.monotonic()
    await wait_all_finished(db, timeout=60)
    elapsed = time.monotonic() - started
    assert survivor.proc.poll() is None, survivor.describe()

    await assert_each_step_succeeded_once(db, EXECUTIONS, STEPS)
    # Each step the victim held was either re-run after its lease expired, as a new attempt,
    # or recorded from the victim's own completion: a completion statement already sent when
    # the process froze still commits (once; fenced on worker and attempt).
    attempts = await db.fetch("SELECT id, attempts FROM step_runs WHERE id = ANY($1)", held_ids)
    rerun = [r["id"] for r in attempts if r["attempts"] > 1]
    landed = [r["id"] for r in attempts if r["attempts"] == 1]
    assert len(rerun) + len(landed) == len(held_ids), attempts
    assert rerun, attempts
    expired = await db.fetchval(
        "SELECT count(DISTINCT r.id) FROM workflow_logs l JOIN step_runs r"
        " ON r.execution_id = l.execution_id AND r.step_id = l.step_id"
        " WHERE l.event = 'step_lease_expired' AND r.id = ANY($1)",
        rerun,
    )
    assert expired >= len(rerun), (expired, len(rerun))
    assert elapsed < 30, f"recovery took {elapsed:.1f}s with 2s leases"
    assert await survivor.terminate() == 0, survivor.describe()


async def sigterm_mid_drain(spawn: Spawner, db_dsn: str, db: asyncpg.Connection) -> list[str]:
    """Queue the backlog, let one worker (1 s grace) drain part of it, SIGTERM it; it must exit
    0 promptly. Returns the steps it left 'running' under its lease (there should be none)."""
    await enqueue(spawn, db_dsn)
    first = spawn.worker(
        db_dsn, MAESTRO_WORKER_ID="first", MAESTRO_SHUTDOWN_GRACE_SECONDS="1", **WORKER_ENV
    )
    await wait_mid_drain(db, [first])

    started = time.monotonic()
    rc = await first.terminate(timeout=15)
    took = time.monotonic() - started
    assert rc == 0, first.describe()
    assert took < 5, f"SIGTERM took {took:.1f}s with a 1s grace period"
    assert "Traceback" not in first.stderr, first.describe()
    assert EXECUTIONS - await succeeded(db) > 0, "the worker finished everything before SIGTERM"
    held = await db.fetch(
        "SELECT id, step_id, status, worker_id FROM step_runs"
        " WHERE status = 'running' OR worker_id IS NOT NULL ORDER BY id"
    )
    return [f"{r['id']}:{r['step_id']}:{r['status']}:{r['worker_id']}" for r in held]


async def test_sigterm_a_worker_mid_drain_loses_nothing(
    spawn: Spawner, db_dsn: str, db: asyncpg.Connection
) -> None:
    await sigterm_mid_drain(spawn, db_dsn, db)
    second = spawn.worker(db_dsn, MAESTRO_WORKER_ID="second", **WORKER_ENV)
    await wait_all_finished(db, timeout=60)
    await assert_each_step_succeeded_once(db, EXECUTIONS, STEPS)
    assert await second.terminate() == 0, second.describe()


class LeasesLeftBehind(AssertionError):
    """Only this failure is the known bug; any other failure fails the xfail test for real."""


async def test_sigterm_a_worker_mid_drain_leaves_no_step_running(
    spawn: Spawner, db_dsn: str, db: asyncpg.Connection
) -> None:
    held = await sigterm_mid_drain(spawn, db_dsn, db)
    if held:
        raise LeasesLeftBehind(f"steps left running under the stopped worker's lease: {held[:10]}")
