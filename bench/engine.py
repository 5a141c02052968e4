"""Engine benchmark: throughput, idle latency, a 40-step chain, and throughput under backlog.

Runs real `maestro worker` / `maestro api` processes against a PostgreSQL server
(MAESTRO_BENCH_DATABASE_URL, default the local server at 127.0.0.1:5432) in a fresh database,
and prints a Markdown table. Usage: `make bench` or `python bench/engine.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from maestro.api.auth import issue_token
from maestro.db.migrate import migrate
from maestro.db.pool import connect
from maestro.engine.compiled import compile_definition_data
from maestro.engine.executions import create_execution

SECRET = "bench-secret-" + "b" * 40
TENANT = "bench"


def _dsn_for(base: str, name: str) -> str:
    p = urlsplit(base)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=dsn,
        MAESTRO_JWT_SECRET=SECRET,
        MAESTRO_LOG_LEVEL="warning",
        **extra,
    )
    return env


@contextmanager
def processes(
    *commands: tuple[list[str], dict[str, str]],
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "maestro.cli.main", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for args, env in commands
    ]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def fresh_database(base: str) -> str:
    name = "maestro_bench"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = _dsn_for(base, name)
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def publish(conn: asyncpg.Connection, definition: dict[str, Any]) -> uuid.UUID:
    wid = uuid.uuid4()
    await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
    await conn.execute(
        "INSERT INTO workflows (tenant_id, id, name, draft, latest_version) VALUES ($1,$2,$3,$4,1)",
        TENANT,
        wid,
        definition["name"],
        definition,
    )
    await conn.execute(
        "INSERT INTO workflow_versions (tenant_id, workflow_id, version, definition) "
        "VALUES ($1, $2, 1, $3)",
        TENANT,
        wid,
        definition,
    )
    return wid


NOOP = {"name": "bench-noop", "steps": [{"id": "only", "type": "noop", "actionConfig": {"n": 1}}]}


async def enqueue(dsn: str, wid: uuid.UUID, n: int) -> None:
    await enqueue_definition(dsn, wid, NOOP, n)


async def enqueue_definition(dsn: str, wid: uuid.UUID, definition: dict[str, Any], n: int) -> None:
    compiled = compile_definition_data(definition)
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    from maestro.db.pool import init_connection

    async def chunk(k: int) -> None:
        async with pool.acquire() as conn:
            await init_connection(conn)
            for _ in range(k):
                await create_execution(
                    conn,
                    tenant=TENANT,
                    workflow_id=wid,
                    version=1,
                    workflow=compiled,
                    input={},
                    trigger={"type": "bench"},
                    correlation_id=None,
                )

    per = n // 4
    await asyncio.gather(*(chunk(per if i < 3 else n - 3 * per) for i in range(4)))
    await pool.close()


async def wait_done(conn: asyncpg.Connection, wid: uuid.UUID, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            "SELECT count(*) FROM workflow_executions WHERE workflow_id=$1 AND status='succeeded'",
            wid,
        )
        if done >= n:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"only {done}/{n} executions finished")


async def throughput(dsn: str, n: int, workers: int, backlog: int = 0) -> float:
    conn = await connect(dsn)
    await conn.execute("TRUNCATE workflow_logs, step_runs, workflow_executions CASCADE")
    wid = await publish(conn, NOOP)
    await enqueue(dsn, wid, n + backlog)
    await conn.execute("VACUUM ANALYZE step_runs")
    await conn.execute("VACUUM ANALYZE workflow_executions")
    env = _env(dsn, MAESTRO_WORKER_CONCURRENCY="128", MAESTRO_CLAIM_BATCH_SIZE="64")
    with processes(*[(["worker"], env)] * workers):
        if backlog:
            # Measure the first n completions while the backlog is still queued behind them.
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                done = await conn.fetchval(
                    "SELECT count(*) FROM step_runs WHERE status='succeeded'"
                )
                if done >= n:
                    break
                await asyncio.sleep(0.1)
            rows = await conn.fetch(
                "SELECT started_at, finished_at FROM step_runs WHERE status='succeeded' "
                "ORDER BY finished_at LIMIT $1",
                n,
            )
        else:
            await wait_done(conn, wid, n, 600)
            rows = await conn.fetch(
                "SELECT started_at, finished_at FROM step_runs WHERE status='succeeded'"
            )
    first = min(r["started_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)
    await conn.close()
    return len(rows) / (last - first).total_seconds()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def api_runs(dsn: str, definition: dict[str, Any], count: int) -> list[tuple[float, str]]:
    """Execute `count` times one at a time through the API; returns (request sent, execution id)."""
    port = 18080
    env = _env(dsn, MAESTRO_WORKER_CONCURRENCY="16")
    token = issue_token(SECRET, subject="bench", tenant=TENANT, roles=["admin"], ttl=3600)
    results = []
    with processes((["api", "--port", str(port)], env), (["worker"], env)):
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as client:
            for _ in range(100):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            r = await client.post("/api/workflows", json=definition)
            wid = r.json()["id"]
            await client.post(f"/api/workflows/{wid}/publish")
            await asyncio.sleep(1.0)  # let the worker settle into its idle wait
            conn = await connect(dsn)
            for _ in range(count):
                sent = time.time()
                r = await client.post(f"/api/workflows/{wid}/execute", json={"input": {}})
                eid = r.json()["executionId"]
                results.append((sent, eid))
                while (
                    await conn.fetchval(
                        "SELECT status FROM workflow_executions WHERE id=$1", uuid.UUID(eid)
                    )
                ) not in ("succeeded", "failed"):
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0.01)
            await conn.close()
    return results


async def latency(dsn: str, count: int) -> list[float]:
    runs = await api_runs(dsn, {**NOOP, "name": "bench-latency"}, count)
    conn = await connect(dsn)
    out = []
    for sent, eid in runs:
        started = await conn.fetchval(
            "SELECT started_at FROM step_runs WHERE execution_id=$1", uuid.UUID(eid)
        )
        out.append((started.timestamp() - sent) * 1000)
    await conn.close()
    return out


CHAIN = {
    "name": "bench-chain",
    "steps": [
        {
            "id": f"s{i}",
            "type": "noop",
            **({"needs": [f"s{i - 1}"]} if i else {}),
            "actionConfig": {"i": i},
        }
        for i in range(40)
    ],
}


async def chain(dsn: str, count: int) -> list[float]:
    runs = await api_runs(dsn, CHAIN, count)
    conn = await connect(dsn)
    out = []
    for sent, eid in runs:
        finished = await conn.fetchval(
            "SELECT finished_at FROM workflow_executions WHERE id=$1", uuid.UUID(eid)
        )
        out.append(finished.timestamp() - sent)
    await conn.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs for a smoke test")
    args = parser.parse_args()
    base = os.environ.get(
        "MAESTRO_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    dsn = await fresh_database(base)
    n = 2_000 if args.quick else 20_000
    backlog = 10_000 if args.quick else 100_000
    rows: list[tuple[str, str, str, str]] = []

    t1 = await throughput(dsn, n, 1)
    rows.append(
        (
            "(a) throughput, 1 worker process",
            f"{t1:,.0f} steps/s",
            "—",
            f"{n:,} one-step executions",
        )
    )
    t2 = await throughput(dsn, n, 2)
    rows.append(
        (
            "(a) throughput, 2 worker processes",
            f"{t2:,.0f} steps/s",
            "≥ 5,000 steps/s",
            "met" if t2 >= 5000 else "NOT met",
        )
    )
    lat = await latency(dsn, 100 if args.quick else 500)
    p50, p95, p99 = _pct(lat, 50), _pct(lat, 95), _pct(lat, 99)
    rows.append(
        (
            "(b) idle enqueue→start p50 / p95 / p99",
            f"{p50:.2f} / {p95:.2f} / {p99:.2f} ms",
            "p50 ≤ 5 ms, p99 ≤ 25 ms",
            "met" if p50 <= 5 and p99 <= 25 else "NOT met",
        )
    )
    ch = await chain(dsn, 5 if args.quick else 20)
    med = statistics.median(ch)
    rows.append(
        (
            "(c) 40-step chain, end to end (median)",
            f"{med * 1000:.0f} ms (min {min(ch) * 1000:.0f}, max {max(ch) * 1000:.0f})",
            "≤ 200 ms",
            "met" if med <= 0.2 else "NOT met",
        )
    )
    tb = await throughput(dsn, n, 2, backlog=backlog)
    ratio = tb / t2
    rows.append(
        (
            f"(d) throughput, 2 workers, {backlog:,} queued behind",
            f"{tb:,.0f} steps/s ({ratio:.0%} of (a))",
            "within 20% of (a)",
            "met" if ratio >= 0.8 else "NOT met",
        )
    )

    print(
        f"\nMaestro engine benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print("| measure | result | target | verdict |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    asyncio.run(main())
