"""Maestro's side of the peer benchmark (bench/peers/run.py), with the same contract as the peer
adapters: `python bench/peers/maestro_peer.py <workload> [options]`, one JSON line at the end.

It runs in the project's environment (`uv run`), against real `maestro worker` processes.

* A job is a one-step `noop` execution; a chain is a 40-step `needs` chain, one execution.
* **Enqueue is the library call** `create_execution`, one transaction with a NOTIFY, as the
  queue libraries' `defer`/`enqueue`/`apply_async` are. It is not the HTTP API: the peers get
  no HTTP hop either (bench/engine.py measures the HTTP path: about 1 ms more).
* Timestamps come from the engine's own records: `step_runs.started_at` / `finished_at`, and
  `workflow_executions.finished_at`.
* Workers are configured as the operations guide says: `MAESTRO_WORKER_CONCURRENCY` = the
  common concurrency setting, and the default claim batch (64).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from engine import (
    CHAIN,
    NOOP,
    TENANT,
    _env,
    enqueue_definition,
    processes,
    publish,
)
from maestro.db.migrate import migrate
from maestro.db.pool import connect, create_pool
from maestro.engine.compiled import compile_definition_data
from maestro.engine.executions import create_execution


def worker_env(dsn: str, concurrency: int) -> dict[str, str]:
    return _env(dsn, MAESTRO_WORKER_CONCURRENCY=str(concurrency))


async def _wait_succeeded(conn: asyncpg.Connection, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await conn.fetchval("SELECT count(*) FROM step_runs WHERE status = 'succeeded'")
        if done >= n:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"only {done}/{n} jobs finished within {timeout:g}s")


async def drain(
    dsn: str, jobs: int, backlog: int, workers: int, concurrency: int, timeout: float
) -> float:
    conn = await connect(dsn)
    try:
        wid = await publish(conn, NOOP)
        # The measured jobs first (the oldest), the backlog behind them.
        await enqueue_definition(dsn, wid, NOOP, jobs)
        if backlog:
            await enqueue_definition(dsn, wid, NOOP, backlog)
        await conn.execute("VACUUM ANALYZE step_runs")
        await conn.execute("VACUUM ANALYZE workflow_executions")
        with processes(*[(["worker"], worker_env(dsn, concurrency))] * workers):
            await _wait_succeeded(conn, jobs, timeout)
        rows = await conn.fetch(
            "SELECT started_at, finished_at FROM step_runs WHERE status = 'succeeded'"
            " ORDER BY finished_at LIMIT $1",
            jobs,
        )
    finally:
        await conn.close()
    first = min(r["started_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)
    return len(rows) / (last - first).total_seconds()


async def one_at_a_time(
    dsn: str, definition: dict[str, Any], count: int, workers: int, concurrency: int
) -> list[tuple[float, uuid.UUID]]:
    """Enqueue ``count`` executions one at a time on an idle system, each after the previous
    finished; returns (time just before the enqueue call, execution id)."""
    conn = await connect(dsn)
    pool = await create_pool(dsn, max_size=2)
    out: list[tuple[float, uuid.UUID]] = []
    try:
        wid = await publish(conn, definition)
        compiled = compile_definition_data(definition)
        with processes(*[(["worker"], worker_env(dsn, concurrency))] * workers):
            await _wait_workers(conn, workers)
            await asyncio.sleep(1.0)  # let them settle into their idle wait
            async with pool.acquire() as enq:
                for _ in range(count):
                    sent = time.time()
                    done = await create_execution(
                        enq,
                        tenant=TENANT,
                        workflow_id=wid,
                        version=1,
                        workflow=compiled,
                        input={},
                        trigger={"type": "bench"},
                        correlation_id=None,
                    )
                    out.append((sent, done.execution_id))
                    while (
                        await conn.fetchval(
                            "SELECT status FROM workflow_executions WHERE id = $1",
                            done.execution_id,
                        )
                    ) not in ("succeeded", "failed"):
                        await asyncio.sleep(0.002)
                    await asyncio.sleep(0.01)
    finally:
        await pool.close()
        await conn.close()
    return out


async def _wait_workers(conn: asyncpg.Connection, workers: int) -> None:
    """Until every worker holds its LISTEN connection."""
    for _ in range(300):
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"maestro_steps\"%'"
            " OR query LIKE 'LISTEN \"maestro_execution_finished\"%'"
        )
        if n >= workers:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the workers did not start")


async def latency(dsn: str, samples: int, workers: int, concurrency: int) -> list[float]:
    runs = await one_at_a_time(dsn, {**NOOP, "name": "latency"}, samples, workers, concurrency)
    conn = await connect(dsn)
    try:
        return [
            (
                (
                    await conn.fetchval(
                        "SELECT started_at FROM step_runs WHERE execution_id = $1", eid
                    )
                ).timestamp()
                - sent
            )
            * 1000
            for sent, eid in runs
        ]
    finally:
        await conn.close()


def chain_definition(length: int) -> dict[str, Any]:
    if length == len(CHAIN["steps"]):
        return CHAIN
    steps = [
        {
            "id": f"s{i}",
            "type": "noop",
            **({"needs": [f"s{i - 1}"]} if i else {}),
            "actionConfig": {"i": i},
        }
        for i in range(length)
    ]
    return {"name": "bench-chain", "steps": steps}


async def chain(dsn: str, length: int, runs: int, workers: int, concurrency: int) -> list[float]:
    done = await one_at_a_time(dsn, chain_definition(length), runs, workers, concurrency)
    conn = await connect(dsn)
    try:
        return [
            (
                await conn.fetchval(
                    "SELECT finished_at FROM workflow_executions WHERE id = $1", eid
                )
            ).timestamp()
            - sent
            for sent, eid in done
        ]
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["throughput", "latency", "chain", "backlog"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--redis", default=None, help="unused: Maestro needs only PostgreSQL")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chain-length", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    conn = await connect(args.dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    notes = (
        f"{args.workers} `maestro worker` processes, MAESTRO_WORKER_CONCURRENCY="
        f"{args.concurrency}, claim batch 64; timestamps from step_runs"
    )
    result: dict[str, Any]
    if args.workload in ("throughput", "backlog"):
        backlog = args.backlog if args.workload == "backlog" else 0
        rate = await drain(
            args.dsn, args.jobs, backlog, args.workers, args.concurrency, args.timeout
        )
        result = {"workload": args.workload, "jobs": args.jobs, "jobs_per_s": rate, "notes": notes}
        if backlog:
            result["backlog"] = backlog
    elif args.workload == "latency":
        samples = await latency(args.dsn, args.samples, args.workers, args.concurrency)
        result = {
            "workload": "latency",
            "samples_ms": samples,
            "notes": notes + "; enqueue = create_execution (one transaction + NOTIFY)",
        }
    else:
        seconds = await chain(
            args.dsn, args.chain_length, args.runs, args.workers, args.concurrency
        )
        result = {
            "workload": "chain",
            "seconds": seconds,
            "notes": notes + f"; a {args.chain_length}-step `needs` chain, one execution",
        }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
