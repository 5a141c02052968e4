"""Benchmark of a networked step: `http` steps against a loopback server that answers at once.

1,000 one-step executions are enqueued, then drained by `maestro worker` processes. For each
step, claim to recorded result is `finished_at - started_at` (both from the database clock),
and the engine's added latency is that minus the time the request took on the wire, which the
server cannot see but the step's own `durationMs` log data measures from the worker's side.
Usage: `python bench/http_step.py [--executions N] [--workers N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import engine as common
from maestro.db.pool import connect

SERVER = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, lifespan="off")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="MAESTRO_WORKER_CONCURRENCY")
    args = parser.parse_args()
    base = os.environ.get(
        "MAESTRO_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    dsn = await common.fresh_database(base)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        definition = {
            "name": "bench-http",
            "steps": [
                {
                    "id": "call",
                    "type": "http",
                    "actionConfig": {
                        "method": "POST",
                        "url": f"http://127.0.0.1:{port}/hook",
                        "json": {"n": 1},
                    },
                }
            ],
        }
        conn = await connect(dsn)
        wid = await common.publish(conn, definition)
        await common.enqueue_definition(dsn, wid, definition, args.executions)
        env = common._env(
            dsn,
            MAESTRO_WORKER_CONCURRENCY=str(args.concurrency),
            MAESTRO_CLAIM_BATCH_SIZE=str(min(32, args.concurrency)),
        )
        with common.processes(*[(["worker"], env)] * args.workers):
            await common.wait_done(conn, wid, args.executions, 600)
        rows = await conn.fetch(
            "SELECT s.started_at, s.finished_at, (l.data ->> 'durationMs')::float8 AS run_ms"
            "  FROM step_runs s JOIN workflow_logs l"
            "    ON l.execution_id = s.execution_id AND l.event = 'step_succeeded'"
        )
        await conn.close()
    finally:
        server.terminate()
        server.wait(10)
    whole = [(r["finished_at"] - r["started_at"]).total_seconds() * 1000 for r in rows]
    run = [r["run_ms"] for r in rows]
    added = [w - r for w, r in zip(whole, run, strict=True)]
    first = min(r["started_at"] for r in rows)
    last = max(r["finished_at"] for r in rows)
    rate = len(rows) / (last - first).total_seconds()
    p95 = _pct(whole, 95)
    print(
        f"\nhttp step benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, {args.executions} executions, {args.workers} worker(s)\n"
    )
    print("| measure | p50 | p95 | p99 |")
    print("|---|---|---|---|")
    for name, values in (
        ("whole step, claim → recorded result (ms)", whole),
        ("request in the worker, render → response (ms)", run),
        ("engine's share: whole step − request (ms)", added),
    ):
        print(
            f"| {name} | {_pct(values, 50):.2f} | {_pct(values, 95):.2f} | {_pct(values, 99):.2f} |"
        )
    print(
        f"\nthroughput: {rate:,.0f} steps/s; target p95 of the whole step ≤ 15 ms: "
        f"{'met' if p95 <= 15 else 'NOT met'} ({p95:.2f} ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
