"""Procrastinate's side of the peer benchmark (bench/peers/run.py): Procrastinate 3.10.0, a
PostgreSQL task queue on asyncio. Same contract as the other adapters:
`python bench/peers/procrastinate_peer.py <workload> [options]`, one JSON line at the end.

It runs only in the peers' virtualenv and imports nothing from maestro.

What it measures (the workloads are defined in bench/peers/run.py and identical for all):

* A job is one `async def` no-op task. The chain is L jobs where each job, when it runs,
  defers the next one itself with `defer_async` (Procrastinate has no workflow primitive).
* Enqueue is the library call: `Task.batch_defer_async` (one `procrastinate_defer_jobs_v1`
  call per chunk of 10,000) for throughput/backlog, `Task.defer_async` for latency and chain.
* Timestamps come from Procrastinate's own records: the `procrastinate_events` table, written
  by triggers on `procrastinate_jobs` with `at = now()`: `started` when a worker fetches the
  job (todo -> doing), `succeeded` when the worker records completion (doing -> succeeded).
  Throughput = N / (last `succeeded` − first `started`) over the first N completions; latency
  = `started` − the client's `time.time()` just before `defer_async`; chain = the L-th job's
  `succeeded` − the time just before the first `defer_async`.
* Before the workers start, `VACUUM ANALYZE` runs on procrastinate_jobs and procrastinate_events
  (the backlog workload requires it; throughput gets it too because the Maestro adapter does
  the same for both).

How it is configured, and why (docs: https://procrastinate.readthedocs.io/en/stable/):

* The app and its tasks live in bench/peers/procrastinate_peer_app.py, a module of their own as
  the Discussions page asks ("Defining your app at the top level of your program"), with the
  async `PsycopgConnector(conninfo=--dsn)`. The schema is applied with
  `app.schema_manager.apply_schema_async()`, which is what `procrastinate schema --apply` runs.
* W worker processes, each the stock CLI, `procrastinate --app=procrastinate_peer_app.app
  worker --concurrency=C`: asynchronous sub-workers are what the how-to "Execute multiple jobs
  at the same time" recommends for async tasks ("procrastinate worker --concurrency=30").
  SIGTERM stops a worker gracefully (its own signal handling).
* Pool `min_size = max_size = C + 1` connections per worker: Discussions, "Mind the size of
  your PostgreSQL pool": "The shorter your average job execution time, the more your pool will
  need to contain as many connections as your concurrency (plus one)", and "Having sub-workers
  wait for an available connection in the pool is suboptimal". The psycopg default (4) would
  starve 16 sub-workers on no-op jobs. The LISTEN connection is separate, outside the pool.
* `--listen-notify` (the default): a worker LISTENs on `procrastinate_any_queue_v1` and the
  insert trigger of a deferred job NOTIFYs it; this is what gives low pick-up latency.
* `--fetch-job-polling-interval=5` (the default): the API docs (App.run_worker_async) say "When
  `listen_notify` is True, the polling interval acts as a fallback mechanism and can reasonably
  be set to a higher value". With jobs waiting, a worker fetches continuously and never polls.
  The fallback does matter in one case, which the notes report: a worker clears its "new job"
  flag after each fetch, so a NOTIFY arriving during a fetch that cannot see the new row yet is
  lost, and the job waits for the poll (seen in chains: one step of one 5-chain run out of
  three waited 5.0 s).
* `delete_jobs` stays "never" (the default): deleting finished jobs would cascade to the events
  table the measurement reads. `--log-level=warning`: the CLI's default (INFO) writes two lines
  per job; Maestro's workers run at warning too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from procrastinate_peer_app import app, chain_step, connector, noop

DEFER_CHUNK = 10_000
# Fallback poll only (see the module docstring): Procrastinate's documented default.
FETCH_JOB_POLLING_INTERVAL = 5.0
ANY_QUEUE_CHANNEL = "procrastinate_any_queue_v1"
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- worker processes


class Workers:
    """The worker processes of one measurement."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs

    def check(self) -> None:
        """Fail fast (instead of at the timeout) if a worker died."""
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.pid} exited early with code {p.returncode}")


@contextlib.contextmanager
def worker_processes(dsn: str, workers: int, concurrency: int) -> Iterator[Workers]:
    """Start ``workers`` separate worker processes; always stop them (SIGTERM, which
    Procrastinate handles as a graceful stop, then SIGKILL after 15 s)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "procrastinate",
                        "--app=procrastinate_peer_app.app",
                        # The CLI's default level is INFO: two log lines per job.
                        "--log-level=warning",
                        "worker",
                        f"--name=bench-worker-{n}",
                        f"--concurrency={concurrency}",
                        "--listen-notify",
                        f"--fetch-job-polling-interval={FETCH_JOB_POLLING_INTERVAL}",
                    ],
                    env={
                        **os.environ,
                        "PYTHONPATH": str(HERE),
                        "PROCRASTINATE_PEER_DSN": dsn,
                        # Docs: as many connections as the concurrency, plus one.
                        "PROCRASTINATE_PEER_POOL_SIZE": str(concurrency + 1),
                    },
                    # Our stdout carries the one JSON result line; the workers' output is noise.
                    stdout=sys.stderr,
                )
            )
        yield Workers(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------- helpers


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def scalar(conn: psycopg.AsyncConnection[Any], query: LiteralString, *params: Any) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def wait_listening(conn: psycopg.AsyncConnection[Any], workers: Workers) -> None:
    """Until every worker holds its LISTEN connection (so a NOTIFY can reach it)."""
    for _ in range(600):
        workers.check()
        n = await scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query = %s",
            f'LISTEN "{ANY_QUEUE_CHANNEL}";',
        )
        if n >= len(workers.procs):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the workers did not start listening within 30 s")


async def fallback_pickups(conn: psycopg.AsyncConnection[Any]) -> str:
    """How many jobs were picked up only by the fallback poll, not by their NOTIFY.

    A worker clears its "new job" flag after every fetch, so a NOTIFY that arrives while a
    fetch is in flight (one that cannot see the new row yet) is dropped, and the job waits for
    the next `fetch_job_polling_interval`. It shows in chains, where a job defers the next
    while its own worker's fetch loop is still running. Reported in the notes, not hidden.
    """
    cur = await conn.execute(
        """
        SELECT count(*) FILTER (WHERE started - deferred >= %s * interval '0.9 second'),
               count(*)
        FROM (
            SELECT max(at) FILTER (WHERE type = 'deferred') AS deferred,
                   max(at) FILTER (WHERE type = 'started') AS started
            FROM procrastinate_events GROUP BY job_id
        ) AS jobs
        WHERE started IS NOT NULL
        """,
        (FETCH_JOB_POLLING_INTERVAL,),
    )
    row = await cur.fetchone()
    assert row is not None
    return (
        f"{row[0]} of {row[1]} jobs were picked up only by the"
        f" {FETCH_JOB_POLLING_INTERVAL:g} s fallback poll (a NOTIFY dropped during an in-flight"
        " fetch)"
    )


# ---------------------------------------------------------------- workloads


async def drain(
    dsn: str,
    jobs: int,
    backlog: int,
    workers: int,
    concurrency: int,
    timeout: float,
) -> float:
    """Throughput (backlog=0) or throughput under a backlog: jobs/s of the first N completions."""
    # The measured jobs first (the oldest ids, which Procrastinate fetches first), then the backlog.
    for total in (jobs, backlog):
        for start in range(0, total, DEFER_CHUNK):
            await noop.batch_defer_async(*({} for _ in range(min(DEFER_CHUNK, total - start))))
    conn = await connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE procrastinate_jobs")
        await conn.execute("VACUUM ANALYZE procrastinate_events")
        # Every event so far is a `deferred` one; counting only ids above this stays an index
        # range scan over the new events instead of a scan of the whole (backlog-sized) table.
        baseline = await scalar(conn, "SELECT coalesce(max(id), 0) FROM procrastinate_events")
        with worker_processes(dsn, workers, concurrency) as procs:
            deadline = time.monotonic() + timeout
            done = 0
            while done < jobs:
                procs.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {done}/{jobs} jobs finished within {timeout:g}s")
                await asyncio.sleep(0.1)
                done = await scalar(
                    conn,
                    "SELECT count(*) FROM procrastinate_events"
                    " WHERE id > %s AND type = 'succeeded'",
                    baseline,
                )
        cur = await conn.execute(
            """
            WITH finished AS (
                SELECT job_id, at FROM procrastinate_events
                WHERE id > %s AND type = 'succeeded'
                ORDER BY at, id LIMIT %s
            )
            SELECT count(*),
                   extract(epoch FROM min(started.at))::float8,
                   extract(epoch FROM max(finished.at))::float8
            FROM finished
            JOIN procrastinate_events AS started
              ON started.job_id = finished.job_id AND started.type = 'started'
            """,
            (baseline, jobs),
        )
        row = await cur.fetchone()
    finally:
        await conn.close()
    assert row is not None
    count, first_start, last_finish = row
    if count != jobs:
        raise RuntimeError(f"expected {jobs} finished jobs with a start event, found {count}")
    return float(count) / float(last_finish - first_start)


async def latency(
    dsn: str, samples: int, workers: int, concurrency: int, timeout: float
) -> tuple[list[float], str]:
    sent_by_job: dict[int, float] = {}
    conn = await connect(dsn)
    try:
        with worker_processes(dsn, workers, concurrency) as procs:
            await wait_listening(conn, procs)
            await asyncio.sleep(1.0)  # let them settle into their idle wait
            for _ in range(samples):
                procs.check()
                deadline = time.monotonic() + timeout
                sent = time.time()
                job_id = await noop.defer_async()
                sent_by_job[job_id] = sent
                while (
                    await scalar(
                        conn, "SELECT status FROM procrastinate_jobs WHERE id = %s", job_id
                    )
                ) not in ("succeeded", "failed"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} did not finish within {timeout:g}s")
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0.01)
        cur = await conn.execute(
            "SELECT job_id, extract(epoch FROM at)::float8 FROM procrastinate_events"
            " WHERE type = 'started' AND job_id = ANY(%s)",
            (list(sent_by_job),),
        )
        started = dict(await cur.fetchall())
        stalls = await fallback_pickups(conn)
    finally:
        await conn.close()
    return [(started[job_id] - sent) * 1000 for job_id, sent in sent_by_job.items()], stalls


async def chain(
    dsn: str,
    length: int,
    runs: int,
    workers: int,
    concurrency: int,
    timeout: float,
) -> tuple[list[float], str]:
    sent_by_run: dict[int, float] = {}
    # The last job of a run; the args filter scans a table of only runs × length rows.
    last_job = (
        "SELECT id FROM procrastinate_jobs WHERE task_name = %s AND status = 'succeeded'"
        " AND args @> %s::jsonb"
    )
    conn = await connect(dsn)
    try:
        with worker_processes(dsn, workers, concurrency) as procs:
            await wait_listening(conn, procs)
            await asyncio.sleep(1.0)
            for run in range(runs):
                procs.check()
                deadline = time.monotonic() + timeout
                sent = time.time()
                await chain_step.defer_async(run=run, i=1, length=length)
                sent_by_run[run] = sent
                wanted = json.dumps({"run": run, "i": length})
                while await scalar(conn, last_job, chain_step.name, wanted) is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"chain {run} did not finish within {timeout:g}s")
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0.01)
        seconds = []
        for run, sent in sent_by_run.items():
            finished = await scalar(
                conn,
                "SELECT extract(epoch FROM e.at)::float8 FROM procrastinate_events AS e"
                " JOIN procrastinate_jobs AS j ON j.id = e.job_id WHERE e.type = 'succeeded'"
                " AND j.task_name = %s AND j.args @> %s::jsonb",
                chain_step.name,
                json.dumps({"run": run, "i": length}),
            )
            seconds.append(finished - sent)
        stalls = await fallback_pickups(conn)
    finally:
        await conn.close()
    return seconds, stalls


# ---------------------------------------------------------------- entry point


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["throughput", "latency", "chain", "backlog"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--redis", default=None, help="unused: Procrastinate needs only PostgreSQL")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chain-length", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    # The adapter only applies the schema and defers, one call at a time: a small pool.
    with app.replace_connector(connector(args.dsn, pool_size=2)):
        async with app.open_async():
            return await run_workload(args)


async def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    await app.schema_manager.apply_schema_async()
    notes = (
        f"procrastinate {importlib.metadata.version('procrastinate')}: {args.workers}"
        f" `procrastinate worker --concurrency={args.concurrency} --listen-notify"
        f" --fetch-job-polling-interval={FETCH_JOB_POLLING_INTERVAL:g}` processes,"
        f" psycopg pool {args.concurrency + 1} per worker (docs: concurrency + 1);"
        " timestamps from procrastinate_events (started/succeeded)"
    )
    if args.workload in ("throughput", "backlog"):
        backlog = args.backlog if args.workload == "backlog" else 0
        rate = await drain(
            args.dsn, args.jobs, backlog, args.workers, args.concurrency, args.timeout
        )
        result: dict[str, Any] = {
            "workload": args.workload,
            "jobs": args.jobs,
            "jobs_per_s": rate,
            "notes": notes + "; enqueue = batch_defer_async in chunks of 10,000",
        }
        if args.workload == "backlog":
            result["backlog"] = backlog
        return result
    if args.workload == "latency":
        samples, stalls = await latency(
            args.dsn, args.samples, args.workers, args.concurrency, args.timeout
        )
        return {
            "workload": "latency",
            "samples_ms": samples,
            "notes": f"{notes}; enqueue = defer_async (one INSERT whose trigger NOTIFYs); {stalls}",
        }
    seconds, stalls = await chain(
        args.dsn,
        args.chain_length,
        args.runs,
        args.workers,
        args.concurrency,
        args.timeout,
    )
    return {
        "workload": "chain",
        "seconds": seconds,
        "notes": f"{notes}; each job defers the next with defer_async from inside the task;"
        f" {stalls}",
    }


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    # Turn the harness's SIGTERM into an exception so the finally blocks stop the workers.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    arguments = parse_args()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        output = asyncio.run(main(arguments))
    except Exception as exc:
        print(f"procrastinate_peer: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(output))
