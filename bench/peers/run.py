"""Side-by-side benchmark of Maestro against Procrastinate, pgqueuer, Celery and Prefect
(`make bench-peers`).

Every system runs the same four workloads on this machine's PostgreSQL and Redis: throughput
(20,000 no-op jobs drained by 2 worker processes), idle enqueue→start latency (500 jobs one
at a time), a 40-step sequential chain, and throughput with 100,000 jobs queued behind. Each
system is driven by an adapter with one contract (see any `*_peer.py`): the peers' adapters
run in bench/peers/.venv, never in the project's environment; Maestro's runs in the project's.

Rounds are interleaved: within each round, every workload runs on every system back to back,
and the order of the systems alternates between rounds (A B C … then … C B A), so that a slow
minute of the machine does not fall on one system only. Each measurement gets a fresh
database and a flushed Redis database. The script prints medians with the min–max of the
rounds and the ratios Maestro/peer, writes the raw results to bench/peers/results/, and draws
docs/img/peers.png.

Usage: python bench/peers/run.py [--rounds 3] [--quick] [--systems maestro,celery]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SYSTEMS = ("maestro", "procrastinate", "pgqueuer", "celery", "prefect")
WORKLOADS = ("throughput", "latency", "chain", "backlog")
PEER_PACKAGES = {
    "procrastinate": "procrastinate",
    "pgqueuer": "pgqueuer",
    "celery": "celery",
    "prefect": "prefect",
}
DB_NAME = "maestro_peers"
REDIS_DB = 7


@dataclass
class Measurement:
    system: str
    workload: str
    round: int
    result: dict[str, Any]
    seconds: float

    @property
    def value(self) -> float | None:
        """The round's figure: jobs/s, p50 ms, or median chain seconds."""
        r = self.result
        if "unsupported" in r or "error" in r:
            return None
        if self.workload in ("throughput", "backlog"):
            return float(r["jobs_per_s"])
        if self.workload == "latency":
            return pct(r["samples_ms"], 50)
        return statistics.median(r["seconds"])


@dataclass
class Results:
    started: str
    machine: dict[str, Any]
    config: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)

    def of(self, system: str, workload: str) -> list[Measurement]:
        return [m for m in self.measurements if (m.system, m.workload) == (system, workload)]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def with_database(base: str, name: str) -> str:
    p = urlsplit(base)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def fresh_database(base: str) -> str:
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    return with_database(base, DB_NAME)


def flush_redis(url: str) -> None:
    import redis  # the peers' environment has it; Maestro needs no Redis

    redis.Redis.from_url(url).flushdb()


def adapter_command(system: str, maestro_python: list[str]) -> list[str]:
    script = str(HERE / f"{system}_peer.py")
    if system == "maestro":
        return [*maestro_python, script]
    return [sys.executable, script]


def run_adapter(
    system: str, workload: str, dsn: str, redis_url: str, args: argparse.Namespace
) -> tuple[dict[str, Any], float]:
    cmd = [
        *adapter_command(system, args.maestro_python),
        workload,
        "--dsn", dsn,
        "--redis", redis_url,
        "--jobs", str(args.jobs),
        "--backlog", str(args.backlog),
        "--workers", str(args.workers),
        "--concurrency", str(args.concurrency),
        "--samples", str(args.samples),
        "--chain-length", str(args.chain_length),
        "--runs", str(args.chain_runs),
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout + 120, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"workload": workload, "error": "timed out"}, time.monotonic() - started
    elapsed = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.strip().startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-600:]
        print(f"  ! {system} {workload} failed (rc={done.returncode}): {tail}", file=sys.stderr)
        return {"workload": workload, "error": f"rc={done.returncode}"}, elapsed
    return json.loads(lines[-1]), elapsed


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for system, package in PEER_PACKAGES.items():
        try:
            found[system] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[system] = "not installed"
    for extra in ("redis", "psycopg", "asyncpg", "kombu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[extra] = metadata.version(extra)
    return found


def server_versions(base: str) -> dict[str, str]:
    async def pg() -> str:
        conn = await asyncpg.connect(base)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    out = {"postgresql": asyncio.run(pg())}
    try:
        import redis

        out["redis-server"] = str(redis.Redis().info()["redis_version"])
    except Exception as exc:  # reported, not fatal: only Celery needs Redis
        out["redis-server"] = f"unavailable ({exc})"
    return out


def maestro_version(maestro_python: list[str]) -> str:
    code = "import importlib.metadata as m; print(m.version('maestro-composer'))"
    done = subprocess.run(
        [*maestro_python, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
        check=False,
    )  # fmt: skip
    return f"{done.stdout.strip() or '?'} ({head.stdout.strip() or 'no git'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke test")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    # 32: Procrastinate's documented pool (concurrency + 1 connections per worker) must fit
    # PostgreSQL's default 100 connections next to everyone else's.
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--maestro-python",
        default=os.environ.get("MAESTRO_PYTHON", "uv run --frozen python"),
        help="how to run Python in the project's environment",
    )
    parser.add_argument(
        "--base-dsn",
        default=os.environ.get(
            "MAESTRO_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--redis", default=f"redis://127.0.0.1:6379/{REDIS_DB}")
    parser.add_argument("--chart", default=str(ROOT / "docs" / "img" / "peers.png"))
    args = parser.parse_args()
    args.maestro_python = shlex.split(args.maestro_python)
    args.jobs, args.backlog, args.samples = 20_000, 100_000, 500
    args.chain_length, args.chain_runs = 40, 5
    if args.quick:
        args.rounds = 1
        args.jobs, args.backlog, args.samples, args.chain_runs = 2_000, 10_000, 50, 2
    systems = [s for s in args.systems.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]

    results = Results(
        started=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine={
            "host": platform.node(),
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "maestro": maestro_version(args.maestro_python),
            **versions(),
            **server_versions(args.base_dsn),
        },
        config={
            "rounds": args.rounds,
            "jobs": args.jobs,
            "backlog": args.backlog,
            "samples": args.samples,
            "chain_length": args.chain_length,
            "chain_runs": args.chain_runs,
            "workers": args.workers,
            "concurrency": args.concurrency,
        },
    )
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else list(reversed(systems))
        for workload in workloads:
            for system in order:
                dsn = asyncio.run(fresh_database(args.base_dsn))
                flush_redis(args.redis)
                print(f"round {r + 1}/{args.rounds}: {workload:<10} {system:<13}", end=" ",
                      flush=True)  # fmt: skip
                result, seconds = run_adapter(system, workload, dsn, args.redis, args)
                m = Measurement(system, workload, r, result, seconds)
                results.measurements.append(m)
                shown = "unsupported" if "unsupported" in result else m.value
                print(f"→ {shown} ({seconds:.0f} s)", flush=True)

    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = {
        "started": results.started,
        "machine": results.machine,
        "config": results.config,
        "measurements": [m.__dict__ for m in results.measurements],
    }
    (out_dir / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
    from report import chart, markdown  # the same folder; matplotlib is imported there

    print()
    print(markdown(raw))
    chart(raw, Path(args.chart))
    print(f"\nraw results: {out_dir / f'{stamp}.json'}; chart: {args.chart}")


if __name__ == "__main__":
    main()
