"""Schedule runner benchmark: trigger skew of per-second schedules, and 10,000 schedules due in
the same second.

Runs real `maestro scheduler` processes against a PostgreSQL server (MAESTRO_BENCH_DATABASE_URL,
default the local server at 127.0.0.1:5432) in a fresh database, and prints Markdown tables.

Skew is measured as a user sees it: from a tick's nominal time to the moment its execution is
committed, which is when the NOTIFY that wakes workers arrives. A listener records when each
NOTIFY arrives; an execution's visibility time is the first arrival after its transaction
began (its created_at). With one runner, transactions are sequential, so that pairing is exact.
No worker runs: the executions stay queued and nothing else sends NOTIFYs.

Usage: `make bench` or `python bench/schedules.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))

from engine import NOOP, TENANT, _env, _pct, fresh_database, processes, publish
from maestro.db.pool import connect
from maestro.triggers.cron import spec_hash


class Arrivals:
    """Wall-clock arrival times of NOTIFY maestro_steps, in order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Arrivals:
        return self

    async def listen(self, dsn: str) -> None:
        self.conn = await asyncpg.connect(dsn)
        await self.conn.add_listener("maestro_steps", lambda *_: self.times.append(time.time()))

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            await self.conn.close()

    def visible_at(self, began: datetime) -> float | None:
        i = bisect.bisect_left(self.times, began.timestamp())
        return self.times[i] if i < len(self.times) else None


async def insert_schedules(
    conn: asyncpg.Connection, wid: uuid.UUID, cron: str, n: int, first: datetime
) -> None:
    digest = spec_hash(cron, "UTC")
    await conn.execute(
        "INSERT INTO scheduled_workflows (tenant_id, id, workflow_id, cron, timezone,"
        " overlap_policy, next_run_at, due_at, spec_hash)"
        " SELECT $1, gen_random_uuid(), $2, $3, 'UTC', 'allow', $4, $4, $5"
        " FROM generate_series(1, $6)",
        TENANT,
        wid,
        cron,
        first,
        digest,
        n,
    )


async def skews(
    conn: asyncpg.Connection, arrivals: Arrivals, since: datetime, until: datetime | None = None
) -> list[float]:
    rows = await conn.fetch(
        "SELECT (trigger->>'scheduledFor')::timestamptz AS nominal, created_at"
        " FROM workflow_executions WHERE (trigger->>'scheduledFor')::timestamptz >= $1"
        " AND ($2::timestamptz IS NULL OR (trigger->>'scheduledFor')::timestamptz < $2)",
        since,
        until,
    )
    out = []
    for r in rows:
        seen = arrivals.visible_at(r["created_at"])
        if seen is None:
            raise RuntimeError("an execution without a NOTIFY after it")
        out.append(seen - r["nominal"].timestamp())
    return out


def scheduler_env(dsn: str) -> dict[str, str]:
    return _env(dsn)


async def wait_ready(dsn: str, seconds: float = 30) -> None:
    """Until a scheduler holds its LISTEN connection (it reconciled and sleeps)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN \"maestro_schedules\"%'"
            )
            if n:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise TimeoutError("the scheduler did not start")


async def per_second(base: str, schedules: int, seconds: int) -> list[float]:
    dsn = await fresh_database(base)
    conn = await connect(dsn)
    wid = await publish(conn, NOOP)
    arrivals = Arrivals()
    await arrivals.listen(dsn)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    await insert_schedules(conn, wid, "* * * * * *", schedules, start)
    end = start + timedelta(seconds=seconds)
    with processes((["scheduler"], scheduler_env(dsn))):
        await wait_ready(dsn)
        # Half a second past the last measured tick: stopping the process blocks this loop,
        # which would delay the arrival of the last NOTIFYs.
        await asyncio.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()) + 0.5)
    # From the third tick on (the first may fall while the process starts), before `end`.
    measured = await skews(conn, arrivals, start + timedelta(seconds=2), end)
    await arrivals.__aexit__()
    await conn.close()
    return measured


async def same_second(base: str, schedules: int, runners: int) -> tuple[float, list[float]]:
    dsn = await fresh_database(base)
    conn = await connect(dsn)
    wid = await publish(conn, NOOP)
    arrivals = Arrivals()
    await arrivals.listen(dsn)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    cron = f"{due.second} {due.minute} {due.hour} * * *"
    await insert_schedules(conn, wid, cron, schedules, due)
    with processes(*[(["scheduler"], scheduler_env(dsn)) for _ in range(runners)]):
        await wait_ready(dsn)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = await conn.fetchval("SELECT count(*) FROM workflow_executions")
            if n >= schedules:
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"only {n}/{schedules} enqueued")
        await asyncio.sleep(0.3)  # the last NOTIFY
    all_in = arrivals.times[-1] - due.timestamp()
    measured = await skews(conn, arrivals, due) if runners == 1 else []
    await conn.close()
    return all_in, measured


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {len(ms)} | {_pct(ms, 50):.1f} | {_pct(ms, 95):.1f} | {_pct(ms, 99):.1f} "
        f"| {max(ms):.1f} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 s and 2,000 schedules")
    args = parser.parse_args()
    base = os.environ.get("MAESTRO_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    seconds = 10 if args.quick else 60
    many = 2_000 if args.quick else 10_000

    a = await per_second(base, 100, seconds)
    b_time, b = await same_second(base, many, 1)
    b2_time, _ = await same_second(base, many, 2)

    print(
        f"\n{datetime.now(UTC):%Y-%m-%d}, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}\n"
    )
    print("| workload | ticks | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    print(row(f"(a) 100 schedules every second for {seconds} s, 1 runner", a))
    print(row(f"(b) {many:,} schedules due in the same second, 1 runner", b))
    print()
    print(
        f"(b) all {many:,} enqueued after: {b_time:.2f} s with 1 runner, "
        f"{b2_time:.2f} s with 2 runners"
    )


if __name__ == "__main__":
    asyncio.run(main())
