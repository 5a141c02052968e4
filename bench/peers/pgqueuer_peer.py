"""pgqueuer's side of the peer benchmark (bench/peers/run.py).

`bench/peers/.venv/bin/python bench/peers/pgqueuer_peer.py <workload> [options]`, one JSON line at
the end. pgqueuer 1.6.0 is a PostgreSQL job queue on asyncpg: a trigger NOTIFYs on every change
to the `pgqueuer` table, workers wake on it and claim jobs in batches with one
`UPDATE … FOR UPDATE SKIP LOCKED` statement.

What runs:

* **Schema**: `Queries.install()` (what `pgq install` runs) into the empty --dsn database, at
  the default `durable` level (every table WAL-logged, as Maestro's are), then
  `Queries.optimize_autovacuum()` (`pgq autovac`), the first item of the performance guide's
  checklist (docs/guides/performance-tuning.md, "Quick-Reference Checklist": fillfactor 70 on
  the queue table for HOT updates, aggressive autovacuum). The `balanced`/`volatile` levels that
  the guide lists as faster make tables UNLOGGED, i.e. the system would do less (no crash
  safety) than Maestro does, so they are not used.
* **Enqueue**: `Queries.enqueue(entrypoints, payloads, priorities)`, the batch form (one
  `INSERT … SELECT FROM UNNEST` per 5,000 jobs); one job per call for latency and chain.
* **Workers**: W separate OS processes, each this file re-run as `_worker`: one QueueManager
  (no SchedulerManager: the benchmark has no cron schedules) on a single direct asyncpg
  connection ("Always use a direct asyncpg connection (not a pool) for the QueueManager",
  performance guide, "NOTIFY Channel and Polling Fallback"), driven by `pgqueuer.run()` (the
  function behind `pgq run`) on uvloop, as `pgq run` does when uvloop is installed.
  Entrypoints: async `noop`, and `chain` for the chain workload (it enqueues the next link
  through the worker's own `Queries`, passing the counter as payload).
* **Concurrency C** maps to `max_concurrent_tasks=C`, pgqueuer's per-process cap ("a
  per-process safety ceiling on total asyncio tasks"; enforced inside the dequeue query).
  The per-entrypoint `concurrency_limit` is NOT the analogue: it is enforced "globally at the
  database level across every worker" (docs/guides/concurrency-control.md), so it would be a
  fleet-wide limit, and it adds the slot-reservation machinery to every dequeue.
* **batch_size = C // 2** (8 for C = 16): the guide says to increase `batch_size` (default 10)
  when jobs are short-lived, and "`max_concurrent_tasks` must be at least `2 × batch_size`;
  PgQueuer enforces this", so C // 2 is the largest batch the cap allows. The same
  `batch_size` sizes the completion-log buffer (flushed at that many entries or every 0.1 s).
  `dequeue_timeout`, `heartbeat_timeout` and the log aggregation interval keep their defaults
  (NOTIFY drives wake-ups; those timers are only fallbacks).
* **Timestamps come from pgqueuer's own log table**, `pgqueuer_log`, which has one row per
  status change with `created = now()` of the statement that wrote it: the `picked` row is
  written by the dequeue statement that claims the job (= start), the `successful` row by the
  statement that deletes the finished job from the queue (= finish). pgqueuer buffers
  completions and writes them in batches (at `batch_size` entries or after ~0.1 s), so a job is
  recorded finished, and leaves the queue, when its batch is flushed; that is the system's own
  completion time and is what is reported (it adds up to ~0.1 s to a chain's last link).
* Waiting for a job to finish LISTENs on pgqueuer's own channel (its trigger NOTIFYs when the
  finished job is deleted) and re-checks the log on each notification, with a 50 ms fallback
  poll, instead of a 2 ms poll loop that would compete for the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import uvloop
from pgqueuer import run as pgq_run
from pgqueuer.db import AsyncpgDriver
from pgqueuer.domain.settings import db_settings
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

WORKLOADS = ("throughput", "latency", "chain", "backlog")
WORKER_APP = "pgq_peer_worker"  # application_name of the worker connections, to see them start
ENQUEUE_CHUNK = 5_000  # jobs per batch enqueue statement (the UNNEST arrays stay small)
LOG = db_settings().queue_table_log
CHANNEL = db_settings().channel

# Worker processes started by this run; main() stops them in its finally, whatever happened.
PROCS: list[subprocess.Popen[bytes]] = []


def log(msg: str) -> None:
    print(f"[pgqueuer_peer] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker process


def batch_size_for(concurrency: int) -> int:
    # pgqueuer refuses max_concurrent_tasks < 2 × batch_size; C // 2 is the largest it allows.
    return concurrency // 2


async def worker_main(args: argparse.Namespace) -> None:
    """One worker process: a QueueManager run the way `pgq run` runs it."""
    chain_length: int = args.chain_length
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # QueueManager.run returns on its shutdown event and flushes its completion buffer.
        loop.add_signal_handler(sig, shutdown.set)
    parent = os.getppid()

    async def orphan_watch() -> None:
        # If the measuring process dies without stopping us (SIGKILL), stop on our own.
        while not shutdown.is_set():
            if os.getppid() != parent:
                shutdown.set()
            await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[QueueManager]:
        conn = await asyncpg.connect(args.dsn, server_settings={"application_name": WORKER_APP})
        try:
            qm = QueueManager(Queries(AsyncpgDriver(conn)))
            if args.worker_for == "chain":

                @qm.entrypoint("chain")
                async def chain_link(job: Job) -> None:
                    i = int(job.payload or b"1")
                    if i < chain_length:
                        await qm.queries.enqueue("chain", str(i + 1).encode())

            else:

                @qm.entrypoint("noop")
                async def noop(job: Job) -> None:
                    return None

            yield qm
        finally:
            await conn.close()

    watch = asyncio.create_task(orphan_watch())
    try:
        await pgq_run(
            factory,
            batch_size=batch_size_for(args.concurrency),
            max_concurrent_tasks=args.concurrency,
            shutdown=shutdown,
        )
    finally:
        shutdown.set()
        watch.cancel()


# --------------------------------------------------------------------------- measuring process


def start_workers(args: argparse.Namespace) -> None:
    for _ in range(args.workers):
        PROCS.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "_worker",
                    "--dsn",
                    args.dsn,
                    "--concurrency",
                    str(args.concurrency),
                    "--chain-length",
                    str(args.chain_length),
                    "--worker-for",
                    args.workload,
                ],
                stdout=subprocess.DEVNULL,  # stdout is reserved for the one JSON line
            )
        )


def stop_workers() -> None:
    """SIGTERM (pgqueuer's own graceful shutdown), then SIGKILL after 15 s. Idempotent."""
    for p in PROCS:
        if p.poll() is None:
            p.terminate()
    for p in PROCS:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            log(f"worker {p.pid} ignored SIGTERM for 15 s; killing it")
            p.kill()
            p.wait()
    PROCS.clear()


def check_workers() -> None:
    for p in PROCS:
        if (rc := p.poll()) is not None:
            raise RuntimeError(f"worker process {p.pid} exited early with code {rc}")


async def wait_for(
    what: str,
    done: Callable[[], Awaitable[bool]],
    timeout: float,
    wake: asyncio.Event | None = None,
    interval: float = 0.1,
) -> None:
    """Until ``done()``; re-checks on ``wake`` (a NOTIFY) or every ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if wake is not None:
            wake.clear()  # before the check, so a NOTIFY during it is not lost
        if await done():
            return
        check_workers()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        if wake is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)


async def install(conn: asyncpg.Connection) -> Queries:
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    await queries.optimize_autovacuum()
    return queries


async def enqueue_many(queries: Queries, n: int) -> None:
    for start in range(0, n, ENQUEUE_CHUNK):
        k = min(ENQUEUE_CHUNK, n - start)
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)


async def count_successful(conn: asyncpg.Connection, entrypoint: str) -> int:
    return await conn.fetchval(
        f"SELECT count(*) FROM {LOG} WHERE status = 'successful' AND entrypoint = $1",
        entrypoint,
    )


async def drain(args: argparse.Namespace, conn: asyncpg.Connection, backlog: int) -> float:
    """Throughput (backlog = 0) and backlog: jobs/s over the first N completions."""
    queries = await install(conn)
    # The measured jobs first (lowest ids: pgqueuer dequeues by priority, then id), then the
    # backlog behind them.
    t0 = time.monotonic()
    await enqueue_many(queries, args.jobs)
    await enqueue_many(queries, backlog)
    t1 = time.monotonic()
    await conn.execute(f"VACUUM ANALYZE {db_settings().queue_table}")
    await conn.execute(f"VACUUM ANALYZE {LOG}")
    t2 = time.monotonic()
    log(f"enqueued {args.jobs + backlog} jobs in {t1 - t0:.1f}s, vacuumed in {t2 - t1:.1f}s")
    start_workers(args)

    async def enough() -> bool:
        return await count_successful(conn, "noop") >= args.jobs

    await wait_for(f"{args.jobs} jobs to finish", enough, args.timeout)
    t3 = time.monotonic()
    log(f"{args.jobs} jobs done {t3 - t2:.1f}s after starting the workers")
    stop_workers()  # don't drain the backlog
    log(f"workers stopped in {time.monotonic() - t3:.1f}s")
    # The first N completions, their last finish and the earliest start among them. Joined
    # here rather than in SQL: the freshly written log has no statistics, and the planner's
    # guess for that join took ~50 s.
    done = await conn.fetch(
        f"SELECT job_id, created FROM {LOG} WHERE status = 'successful' AND entrypoint = 'noop'"
        " ORDER BY created, id LIMIT $1",
        args.jobs,
    )
    picked = await conn.fetch(
        f"SELECT job_id, created FROM {LOG} WHERE status = 'picked' AND entrypoint = 'noop'"
    )
    ids = {r["job_id"] for r in done}
    first_started = min(r["created"] for r in picked if r["job_id"] in ids)
    last_finished = done[-1]["created"]
    return len(done) / (last_finished - first_started).total_seconds()


async def idle_workers(args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    """Start the workers, wait for their connections, and let them settle into LISTEN."""
    start_workers(args)

    async def connected() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", WORKER_APP
        )
        return n >= args.workers

    await wait_for("the workers to connect", connected, 60, interval=0.05)
    await asyncio.sleep(1.0)
    check_workers()


async def listen(conn: asyncpg.Connection) -> asyncio.Event:
    """An event set on every NOTIFY on pgqueuer's channel (its trigger fires on every
    insert/update/delete of the queue table, including when a finished job is removed)."""
    wake = asyncio.Event()
    await conn.add_listener(CHANNEL, lambda *_: wake.set())
    return wake


async def latency(args: argparse.Namespace, conn: asyncpg.Connection) -> list[float]:
    queries = await install(conn)
    listener = await asyncpg.connect(args.dsn)
    try:
        wake = await listen(listener)
        await idle_workers(args, conn)
        sent_at: dict[int, float] = {}
        for _ in range(args.samples):
            sent = time.time()
            (job_id,) = await queries.enqueue("noop", None)
            sent_at[job_id] = sent

            async def finished(job_id: int = job_id) -> bool:
                return bool(
                    await conn.fetchval(
                        f"SELECT EXISTS (SELECT FROM {LOG}"
                        " WHERE job_id = $1 AND status = 'successful')",
                        job_id,
                    )
                )

            await wait_for(f"job {job_id}", finished, args.timeout, wake, 0.05)
            await asyncio.sleep(0.01)
    finally:
        await listener.close()
    stop_workers()
    rows = await conn.fetch(
        f"SELECT job_id, created FROM {LOG} WHERE status = 'picked' AND job_id = ANY($1)",
        list(sent_at),
    )
    started = {r["job_id"]: r["created"].timestamp() for r in rows}
    return [(started[j] - s) * 1000 for j, s in sent_at.items()]


async def chain(args: argparse.Namespace, conn: asyncpg.Connection) -> list[float]:
    queries = await install(conn)
    listener = await asyncpg.connect(args.dsn)
    out: list[float] = []
    try:
        wake = await listen(listener)
        await idle_workers(args, conn)
        for run in range(1, args.runs + 1):
            sent = time.time()
            await queries.enqueue("chain", b"1")
            target = run * args.chain_length

            async def finished(target: int = target) -> bool:
                return await count_successful(conn, "chain") >= target

            await wait_for(f"chain {run}", finished, args.timeout, wake, 0.05)
            # Links run strictly one after another, so the run's last link has the highest id.
            last = await conn.fetchval(
                f"SELECT created FROM {LOG} WHERE status = 'successful' AND entrypoint = 'chain'"
                " ORDER BY job_id DESC LIMIT 1"
            )
            out.append(last.timestamp() - sent)
            await asyncio.sleep(0.01)
    finally:
        await listener.close()
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.concurrency < 2:
        raise ValueError("pgqueuer needs --concurrency >= 2 (max_concurrent_tasks >= 2×batch)")
    notes = (
        f"{args.workers} worker processes, each one QueueManager (asyncpg, uvloop) with "
        f"max_concurrent_tasks={args.concurrency}, batch_size={batch_size_for(args.concurrency)}; "
        "durable tables + `pgq autovac`; timestamps from pgqueuer_log "
        "(picked = start, successful = finish, completions flushed in batches)"
    )
    conn = await asyncpg.connect(args.dsn)
    try:
        if args.workload in ("throughput", "backlog"):
            backlog = args.backlog if args.workload == "backlog" else 0
            rate = await drain(args, conn, backlog)
            result: dict[str, Any] = {"workload": args.workload, "jobs": args.jobs}
            if backlog:
                result["backlog"] = backlog
            result |= {"jobs_per_s": rate, "notes": notes}
            return result
        if args.workload == "latency":
            samples = await latency(args, conn)
            return {"workload": "latency", "samples_ms": samples, "notes": notes}
        seconds = await chain(args, conn)
        return {
            "workload": "chain",
            "seconds": seconds,
            "notes": notes + "; each link enqueues the next from inside the job",
        }
    finally:
        await conn.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # `_worker` is internal: how this script starts its own worker processes.
    parser.add_argument("workload", choices=[*WORKLOADS, "_worker"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--redis", default=None, help="unused: pgqueuer needs only PostgreSQL")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chain-length", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker-for", choices=WORKLOADS, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.workload == "_worker":
        uvloop.run(worker_main(args))
        return 0

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind through the finally below

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = asyncio.run(measure(args))
    except KeyboardInterrupt:
        log(f"{args.workload} interrupted")
        return 130
    except Exception as exc:
        log(f"{args.workload} failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        stop_workers()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
