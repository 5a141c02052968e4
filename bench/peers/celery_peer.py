"""Celery peer of the peer benchmark (bench/peers/run.py): Celery 5.7 on its Redis broker.

`bench/peers/.venv/bin/python bench/peers/celery_peer.py <workload> --redis URL [options]`; one
JSON line at the end (the contract and the workloads are in bench/peers/run.py). The app and
its tasks are in celery_peer_app.py, which every worker process imports.

What is measured
* A job is one Celery task message (`celery_peer.noop`), published with `apply_async` and run
  by a `celery worker`. Throughput/backlog enqueue all jobs before any worker runs, on one
  producer inside kombu 5.7's `Producer.batch()`, which pipelines the LPUSHes of ordinary
  `apply_async` calls (Celery itself has no batch enqueue; each task is still its own
  message, executed on its own). Latency publishes one `apply_async` per job on a producer
  whose connection is open before the clock starts. A chain is L tasks, each of which
  `apply_async`s the next with a counter; the L-th records when it finished.
* Timestamps: without a result backend or task events Celery keeps none, so the tasks write a
  minimal side channel into the same Redis db, on a Redis client per worker process (pooled
  connection, opened when the process starts): the no-op takes `time.time()` at its first
  line (start) and again after it (end) and RPUSHes both in one command; the last task of a
  chain RPUSHes its end. The driver waits on those lists with BLPOP (latency, chain).
* Workers: W `python -m celery -A celery_peer_app worker` processes, each in its own session
  (start_new_session) so that stopping them (SIGTERM = warm shutdown, 10 s, then SIGKILL of
  the process group) also ends their pool children. Warm shutdown of a busy prefork worker can
  take up to 30 s (billiard's children wait for the parent to read their last results), hence
  the kill: it only ever happens after the measurement.

Configuration, and why (Celery docs: User Guide "Optimizing", "Concurrency", "Workers")
* `--pool threads --concurrency C`: the Concurrency guide documents prefork (the default,
  "for CPU-bound tasks and most use cases"), eventlet/gevent (for I/O-bound tasks; neither is
  installed) and threads. These jobs are not CPU-bound, and at the common concurrency setting
  (C=32 in `make bench-peers`) prefork means 32 child processes per worker on a 2-core
  machine. Measured here at 20k jobs, threads was the faster of the two (quiet machine: ~1650
  vs ~1500 jobs/s; under contention ~950 vs ~580), so the harness gives Celery threads: the
  better of its documented options, never the worse. `--celery-pool prefork` runs prefork.
* `--prefetch-multiplier 64` (default 4): "Optimizing / Prefetch Limits": with many
  short-running tasks where throughput/round trip latency matter "this number should be
  large ... Say 64, or 128". (Measured here: 4 vs 64 made no difference within noise.)
* `-O` left at its default, which is `fair` since Celery 4 (celery/concurrency/asynpool.py):
  the pool writes a task only to an idle child, so one slow child cannot hold others' work.
* `--without-gossip --without-mingle --without-heartbeat`: the cluster features these disable
  (event-based gossip, the startup state sync, worker heartbeat events) are unused here and
  each costs broker traffic or a startup round trip.
* `task_acks_late=False` (the default, early ack), no task events (the default), no result
  backend and `task_ignore_result=True` (nothing reads results), `broker_pool_limit =
  max(10, C)` ("Optimizing / Broker Connection Pools": size it by the threads publishing;
  chain steps publish from every pool slot; never below the default 10).
* Warm-up, no messages: Celery imports its publishing path lazily and kombu connects on first
  use, about 50 ms in the first `apply_async` of each process. The driver and every worker
  process (signals worker_init / worker_process_init / worker_ready) do that before the clock,
  as a long-running deployment would have done long before; no task is run to warm up.

Debug knobs (environment): CELERY_PEER_LOGLEVEL (workers' --loglevel), CELERY_PEER_DEBUG=1
(print the workers' output even on success), CELERY_PEER_PREFETCH (the multiplier).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
DEFAULT_POOL = "threads"
PREFETCH_MULTIPLIER = int(os.environ.get("CELERY_PEER_PREFETCH", "64"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["throughput", "latency", "chain", "backlog"])
    parser.add_argument("--dsn", default=None, help="unused: Celery needs only the broker")
    parser.add_argument("--redis", required=True, help="the Redis db for broker and timestamps")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chain-length", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--celery-pool",
        default=DEFAULT_POOL,
        choices=["prefork", "threads"],
        help="execution pool (the harness uses the default; the other is for comparison)",
    )
    return parser.parse_args()


def configure(args: argparse.Namespace) -> dict[str, str]:
    """Set the app's environment (for this process and the workers) before importing it."""
    os.environ["CELERY_PEER_REDIS"] = args.redis
    os.environ["CELERY_PEER_CONCURRENCY"] = str(args.concurrency)
    os.environ["CELERY_PEER_PREFETCH"] = str(PREFETCH_MULTIPLIER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


class Workers:
    """W `celery worker` processes, each in its own session so that its pool children can be
    killed with it; their output goes to a log file shown on failure."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], log: IO[bytes]) -> None:
        self.env = env
        self.count: int = args.workers
        self.concurrency: int = args.concurrency
        self.pool: str = args.celery_pool
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = log

    def command(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_peer_app",
            "worker",
            "--pool",
            self.pool,
            "--concurrency",
            str(self.concurrency),
            "--prefetch-multiplier",
            str(PREFETCH_MULTIPLIER),
            # Cluster features this benchmark does not use: each costs broker traffic (gossip:
            # an event exchange; heartbeat: periodic events; mingle: a startup round trip).
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            os.environ.get("CELERY_PEER_LOGLEVEL", "WARNING"),
            "--hostname",
            f"peer{index}@%h",
        ]

    def start(self) -> None:
        for i in range(self.count):
            self.procs.append(
                subprocess.Popen(
                    self.command(i),
                    env=self.env,
                    cwd=HERE,
                    stdin=subprocess.DEVNULL,
                    stdout=self.log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker {proc.pid} exited with {proc.returncode}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (warm shutdown) each main process, wait, then SIGKILL every process group."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"celery worker {proc.pid} still in warm shutdown after {grace:g}s; killing it")
        # The group also holds the prefork children, which may outlive a killed parent.
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def dump_log(self) -> None:
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        if text.strip():
            print("---- celery worker output ----", file=sys.stderr)
            print(text[-20_000:], file=sys.stderr)


@contextmanager
def running(args: argparse.Namespace, env: dict[str, str]) -> Iterator[Workers]:
    """The workers, running for the duration of the block, always stopped after it."""
    with tempfile.TemporaryFile() as log_file:
        workers = Workers(args, env, log_file)
        ok = False
        try:
            workers.start()
            yield workers
            ok = True
        finally:
            workers.stop()
            if not ok or os.environ.get("CELERY_PEER_DEBUG"):
                workers.dump_log()


def log(message: str) -> None:
    print(f"celery_peer: {message}", file=sys.stderr)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"--timeout {self.seconds:g}s exceeded")
        return left


def wait_ready(client: Any, workers: Workers, deadline: Deadline) -> None:
    from celery_peer_app import READY_KEY

    for _ in range(workers.count):
        while client.blpop([READY_KEY], timeout=min(1.0, deadline.left())) is None:
            workers.check_alive()


def wait_count(client: Any, key: str, n: int, workers: Workers, deadline: Deadline) -> None:
    while client.llen(key) < n:
        workers.check_alive()
        deadline.left()
        time.sleep(0.05)


def enqueue_noops(n: int) -> None:
    from celery_peer_app import app, noop

    # Celery has no batch enqueue; kombu 5.7's Producer.batch() pipelines the LPUSHes of
    # ordinary apply_async calls (flushed every 1000). Still one message per task.
    with app.producer_or_acquire() as producer, producer.batch():
        for _ in range(n):
            noop.apply_async(producer=producer)


@contextmanager
def connected_producer() -> Iterator[Any]:
    """A producer with its connection open and Celery's publish path imported, before any
    clock starts (the first apply_async of a process otherwise takes ~50 ms)."""
    from celery_peer_app import app, warm_publisher

    warm_publisher()
    with app.producer_or_acquire() as producer:
        yield producer


def drain(args: argparse.Namespace, env: dict[str, str], backlog: int) -> float:
    """Jobs/s of the first --jobs completions, with ``backlog`` more queued behind them."""
    from celery_peer_app import DONE_KEY, side

    client = side()
    deadline = Deadline(args.timeout)
    t0 = time.monotonic()
    enqueue_noops(args.jobs)  # the measured jobs first: Celery's Redis queue is FIFO
    enqueue_noops(backlog)
    log(f"enqueued {args.jobs + backlog} in {time.monotonic() - t0:.1f}s")
    t0 = time.time()
    with running(args, env) as workers:
        wait_count(client, DONE_KEY, args.jobs, workers, deadline)
        t1 = time.time()
    rows = [tuple(map(float, r.split())) for r in client.lrange(DONE_KEY, 0, -1)]
    if not backlog and len(rows) != args.jobs:
        raise RuntimeError(f"{len(rows)} completions recorded for {args.jobs} jobs")
    # The first N completions: from the earliest start among them to the last end.
    first = sorted(rows, key=lambda r: r[1])[: args.jobs]
    began, ended = min(r[0] for r in first), max(r[1] for r in first)
    log(
        f"workers up {began - t0:.1f}s after spawn; {args.jobs} done {t1 - t0:.1f}s after; "
        f"stopped {time.time() - t1:.1f}s later; {len(rows)} completions recorded"
    )
    return len(first) / (ended - began)


def latency(args: argparse.Namespace, env: dict[str, str]) -> list[float]:
    from celery_peer_app import DONE_KEY, noop, side

    client = side()
    deadline = Deadline(args.timeout)
    samples: list[float] = []
    with running(args, env) as workers, connected_producer() as producer:
        wait_ready(client, workers, deadline)
        time.sleep(1.0)  # let them settle into their idle wait
        for _ in range(args.samples):
            sent = time.time()
            noop.apply_async(producer=producer)
            # Wait on the side-channel list itself (BLPOP), not a poll loop.
            popped = client.blpop([DONE_KEY], timeout=min(5.0, deadline.left()))
            if popped is None:
                workers.check_alive()
                raise TimeoutError("a latency job did not run within 5 s")
            started = float(popped[1].split()[0])
            samples.append((started - sent) * 1000)
            time.sleep(0.01)
    return samples


def chain(args: argparse.Namespace, env: dict[str, str]) -> list[float]:
    from celery_peer_app import CHAIN_KEY, chain_step, side

    client = side()
    deadline = Deadline(args.timeout)
    seconds: list[float] = []
    with running(args, env) as workers, connected_producer() as producer:
        wait_ready(client, workers, deadline)
        time.sleep(1.0)
        for _ in range(args.runs):
            sent = time.time()
            chain_step.apply_async((1, args.chain_length), producer=producer)
            popped = client.blpop([CHAIN_KEY], timeout=min(60.0, deadline.left()))
            if popped is None:
                workers.check_alive()
                raise TimeoutError("a chain did not finish within 60 s")
            seconds.append(float(popped[1]) - sent)
            time.sleep(0.01)
    return seconds


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn the harness's SIGTERM into an exception so that the workers are stopped.
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    env = configure(args)
    sys.path.insert(0, str(HERE))
    from celery_peer_app import side

    notes = (
        f"{args.workers} `celery worker` processes, --pool {args.celery_pool} "
        f"--concurrency {args.concurrency} --prefetch-multiplier {PREFETCH_MULTIPLIER} "
        "--without-gossip --without-mingle --without-heartbeat; early ack, no result backend, "
        "Redis broker; timestamps from a side channel: the task RPUSHes time.time() to Redis "
        "(per-process pooled connection)"
    )
    result: dict[str, Any]
    try:
        side().flushdb()  # the harness flushed it; make sure no stale message is queued
        if args.workload in ("throughput", "backlog"):
            backlog = args.backlog if args.workload == "backlog" else 0
            rate = drain(args, env, backlog)
            result = {"workload": args.workload, "jobs": args.jobs, "jobs_per_s": rate}
            if backlog:
                result["backlog"] = backlog
            result["notes"] = notes + (
                "; start at the task's first line, end at its last; enqueue: apply_async in a "
                "loop on one producer in kombu's Producer.batch() (pipelined LPUSHes)"
            )
        elif args.workload == "latency":
            result = {
                "workload": "latency",
                "samples_ms": latency(args, env),
                "notes": notes + "; start = the task's first line; enqueue: one apply_async",
            }
        else:
            result = {
                "workload": "chain",
                "seconds": chain(args, env),
                "notes": notes
                + (
                    f"; {args.chain_length} tasks, each apply_async's the next; end = the "
                    "last task's time.time()"
                ),
            }
    except Exception as exc:  # any failure: one clear line, a non-zero exit
        log(f"{args.workload} failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        with suppress(Exception):  # a courtesy (the backlog leaves ~100k messages); best effort
            side().flushdb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
