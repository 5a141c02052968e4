"""Prefect 3 peer adapter for ``make bench-peers`` (workload 3, ``chain``, only).

Run with the peers' interpreter, never the project's::

    bench/peers/.venv/bin/python bench/peers/prefect_peer.py chain --dsn URL \
        [--chain-length 40] [--runs 5] [--timeout 600]

What it measures
----------------
The issue asks for Prefect in one workload only: "a flow calling 40 tasks in
sequence against a local ``prefect server``". This adapter:

1. starts ``python -m prefect server start`` as a subprocess in its own process
   group (so the server and anything it spawns are stopped together), with a
   temporary ``PREFECT_HOME`` and its database on the PostgreSQL database given by
   ``--dsn``; waits until ``GET /api/health`` answers (this includes Prefect's
   Alembic migrations of the empty database, and is not timed);
2. in this process (``PREFECT_API_URL`` pointing at that server) defines a
   ``@flow`` that calls a no-op ``@task`` L times in sequence, each call taking
   the previous call's return value (``i = noop(i)``), so every step waits for the
   one before it and passes the counter on;
3. runs that flow once as an unreported warm-up (first-call costs: the events
   websocket, the log worker, the flow's registration), then R times one after
   another, and reports, per run, the wall time from just before calling the flow
   to its return: ``seconds``.

What that time includes: the client's synchronous API calls for the flow run
(create the flow run, propose Pending/Running/Completed, each a REST round trip
to the server which commits to PostgreSQL) and, per task, Prefect's client-side
task orchestration (task runs are created and moved through their states in this
process; the states are emitted as events over a websocket, fire-and-forget).
What it does NOT include: the server recording those task runs -- its
``task_run_recorder`` service writes them to PostgreSQL asynchronously after the
events arrive. It also includes, at the flow's end, the join of the flow run's
heartbeat thread: heartbeats are on by default in 3.9.1
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=180``, ``prefect/settings/models/flows.py``;
they detect crashed "zombie" flow runs), the thread sleeps in 1 s steps
(``_send_heartbeats`` in ``prefect/flow_engine.py``), so every flow call waits up to
~1 s for it to notice the stop. Left on: turning off crash detection would make
Prefect do less (and 3.9.1 offers no env value to turn it off).

So, after each run, the adapter also polls the ``task_run`` table until all L
task runs are COMPLETED and reports that time (from the same
``sent``) as ``seconds_until_recorded``; this also keeps a run's asynchronous
bookkeeping from spilling into the next run's timing. In the other systems each
step is a job stored in the queue before a worker runs it, so
``seconds_until_recorded`` is the closer (still not identical) comparison; the
report should say which one it uses.

Extra number (printed on stderr, also in ``notes`` and ``single_task_flow_s``):
the end-to-end time (flow call to return) of one deployment-less flow that calls
a single no-op task, median of 5, on the same server after the chain runs.

``throughput``, ``latency`` and ``backlog`` return ``unsupported`` (see
``UNSUPPORTED``): Prefect executes queued work through deployments that workers
poll for (``PREFECT_WORKER_QUERY_SECONDS``, default 10 s, in
``prefect/settings/models/worker.py``) and through background tasks
(``task.delay()`` + ``prefect.task_worker.serve``) whose queue is an in-memory,
per-server ``TaskQueue`` capped at ``PREFECT_SERVER_TASKS_SCHEDULING_MAX_SCHEDULED_
QUEUE_SIZE`` = 1000 (``prefect/server/task_queue.py``); neither is built to drain
a 20,000-job (or 120,000-job) durable queue, and the issue scopes Prefect to
workload 3.

How Prefect is configured, and why
----------------------------------
Prefect 3.9.1; everything at its defaults except:

* ``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...`` (the ``--dsn``
  with its scheme changed): the docs recommend PostgreSQL over the default SQLite
  "for production use, high availability, and multi-server deployments"
  (https://docs.prefect.io/v3/concepts/server, "The Prefect database";
  https://docs.prefect.io/v3/how-to-guides/self-hosted/server-cli, "Use
  PostgreSQL"; Prefect requires an async driver, hence ``+asyncpg``). It is also
  the same database engine every other system in this benchmark uses.
* ``PREFECT_SERVER_API_HOST=127.0.0.1``, ``PREFECT_SERVER_API_PORT=<free port>``,
  ``PREFECT_API_URL=http://127.0.0.1:<port>/api`` (client): a private local server.
* ``PREFECT_HOME=<temp dir>`` (separate for server and client), and every
  ``PREFECT_*`` variable inherited from the caller's environment is dropped: no
  profile or setting from the machine leaks into the measurement.
* ``PREFECT_SERVER_UI_ENABLED=false``: the UI is not part of the workload (the
  server then does not mount or serve the static UI).
* ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` and ``DO_NOT_TRACK=1``: Prefect's
  documented telemetry opt-outs (``prefect/analytics/__init__.py``); no network
  calls to Prefect from a benchmark.

Left at their defaults on purpose (none of them makes Prefect do less than the
workload, and none is documented as a throughput knob for this pattern):
result persistence is off (``PREFECT_RESULTS_PERSIST_BY_DEFAULT=false``, the
default, so task return values are not written to storage); logging to the API
stays ON (``PREFECT_LOGGING_TO_API_ENABLED=true``: flow/task run logs are batched
to the server every ``PREFECT_LOGGING_TO_API_BATCH_INTERVAL`` = 2 s by a background
thread) and console logging at INFO to stderr stays on; the server runs with one
uvicorn worker and all its services (``--workers`` > 1 would disable the services,
including the one that records task runs); default task runner
(``ThreadPoolTaskRunner``; unused, since tasks are called directly). ``--workers``
and ``--concurrency`` do not apply: the flow runs in this process, as the issue
describes, not on a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

WORKLOADS = ("throughput", "latency", "chain", "backlog")

UNSUPPORTED = (
    "Not benchmarked (the issue scopes Prefect to workload 3): Prefect runs queued work "
    "through deployments that workers poll for (PREFECT_WORKER_QUERY_SECONDS, default "
    "10 s) or through background tasks handed out from an in-memory per-server queue "
    "(PREFECT_SERVER_TASKS_SCHEDULING_MAX_SCHEDULED_QUEUE_SIZE, default 1000), so "
    "streams of no-op jobs picked up by separate worker processes, which this workload "
    "measures, are not a use case it is built for."
)

# How long to wait for the server's task_run_recorder to persist a run's task runs
# before declaring the measurement broken (it normally takes well under a second).
RECORD_WAIT_S = 60.0
# Poll interval for that wait and for the health check: short against a run's length.
RECORD_POLL_S = 0.005
HEALTH_POLL_S = 0.2
# Grace period between SIGTERM and SIGKILL for the server's process group.
STOP_GRACE_S = 15.0
SINGLE_TASK_FLOW_SAMPLES = 5

# Process groups of the servers this process started, for Watchdog's last resort.
STARTED_PGIDS: list[int] = []


def log(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout's last line is the JSON result."""
    print(f"[prefect_peer] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Accept the whole adapter contract, even the options Prefect does not use."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--backlog", type=int, default=100000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chain-length", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


def asyncpg_url(dsn: str) -> str:
    """Turn a libpq-style DSN URL into the SQLAlchemy URL Prefect's server needs.

    Prefect's server only accepts async drivers (``postgresql+asyncpg``), see the
    ``connection_url`` setting in ``prefect/settings/models/server/database.py``.
    """
    parts = urllib.parse.urlsplit(dsn)
    if parts.scheme.split("+", 1)[0] not in ("postgres", "postgresql"):
        raise ValueError(f"--dsn must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def libpq_url(dsn: str) -> str:
    """The same DSN with a plain scheme, for psycopg (used to watch the task_run table)."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql"))


def free_port() -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """The caller's environment minus every PREFECT_* setting (no profile leaks in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def raise_exit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: exit through ``finally`` blocks so the server is stopped."""
    raise SystemExit(128 + signum)


class Watchdog:
    """Enforces --timeout without SIGALRM, which Prefect's engine takes over for its own
    timeouts (``prefect/_internal/concurrency/cancellation.py``), so an alarm set here
    never fires.

    At the deadline it sends this process SIGINT (a real signal, so even a blocking
    socket read returns and the resulting KeyboardInterrupt unwinds every ``finally``,
    stopping the server). If that has not ended the process ``HARD_EXIT_AFTER_S``
    later, it kills the server's process group itself and exits.
    """

    HARD_EXIT_AFTER_S = 60.0

    def __init__(self, timeout: float) -> None:
        self.expired = threading.Event()
        self._soft = threading.Timer(timeout, self._interrupt)
        self._hard = threading.Timer(timeout + self.HARD_EXIT_AFTER_S, self._hard_exit)
        for timer in (self._soft, self._hard):
            timer.daemon = True

    def start(self) -> None:
        self._soft.start()
        self._hard.start()

    def cancel(self) -> None:
        self._soft.cancel()
        self._hard.cancel()

    def _interrupt(self) -> None:
        self.expired.set()
        log("--timeout expired; interrupting")
        os.kill(os.getpid(), signal.SIGINT)

    def _hard_exit(self) -> None:
        log("still running long after --timeout; killing the server and exiting")
        for pgid in STARTED_PGIDS:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        os._exit(124)


class PrefectServer:
    """A private ``prefect server start`` in its own process group."""

    def __init__(self, dsn: str, workdir: Path) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = workdir / "server.log"
        home = workdir / "server-home"
        home.mkdir()
        self.settings: dict[str, str] = {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_API_DATABASE_CONNECTION_URL": asyncpg_url(dsn),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = clean_environ() | self.settings
        with self.log_path.open("wb") as out:
            # start_new_session: the server gets its own process group, so stop()
            # can signal it and every child it may spawn, by that group's id.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        STARTED_PGIDS.append(self.proc.pid)
        log(f"started prefect server pid={self.proc.pid} port={self.port}")

    def wait_healthy(self, deadline: float) -> float:
        """Poll /api/health until it answers; returns the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                # S310 is moot here: the URL is our own http://127.0.0.1 server, never user input.
                health = f"{self.api_url}/health"
                with urllib.request.urlopen(health, timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy in time:\n{self.log_tail()}")
            time.sleep(HEALTH_POLL_S)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it after a grace period."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # leader of its own session, so pgid == pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log("prefect server ignored SIGTERM; killing its process group")
        # Also reaps any straggler of the group that outlived the leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        log(f"stopped prefect server pid={self.proc.pid} rc={self.proc.returncode}")
        self.proc = None


@contextlib.contextmanager
def running_server(dsn: str, deadline: float) -> Iterator[tuple[PrefectServer, float]]:
    with tempfile.TemporaryDirectory(prefix="prefect_peer_") as tmp:
        workdir = Path(tmp)
        server = PrefectServer(dsn, workdir)
        try:
            server.start()
            ready_s = server.wait_healthy(deadline)
            # The client reads its settings when prefect is first imported, so they
            # must be in os.environ before that import (in measure_chain).
            client_home = workdir / "client-home"
            client_home.mkdir()
            for key in [k for k in os.environ if k.startswith("PREFECT_")]:
                del os.environ[key]
            os.environ.update(
                {
                    "PREFECT_HOME": str(client_home),
                    "PREFECT_API_URL": server.api_url,
                    "DO_NOT_TRACK": "1",
                }
            )
            yield server, ready_s
        finally:
            if "prefect.events.worker" in sys.modules:
                # Only if the client was used: flush its senders while the server is up.
                try:
                    drain_client_workers()
                except Exception as exc:  # cleanup must go on to stop the server
                    log(f"could not drain Prefect's client workers: {exc}")
            server.stop()


def wait_recorded(conn: Any, flow_run_id: str, expected: int) -> float:
    """Block until the server has persisted ``expected`` COMPLETED task runs of a flow run.

    Returns the time.time() at which that was first seen. Task runs reach the
    database asynchronously (client events -> server task_run_recorder service).
    """
    limit = time.monotonic() + RECORD_WAIT_S
    while True:
        row = conn.execute(
            "SELECT count(*) FROM task_run WHERE flow_run_id = %s AND state_type = 'COMPLETED'",
            (flow_run_id,),
        ).fetchone()
        if row is not None and row[0] >= expected:
            return time.time()
        if time.monotonic() > limit:
            raise RuntimeError(
                f"server recorded only {row[0] if row else 0}/{expected} completed task "
                f"runs of flow run {flow_run_id} after {RECORD_WAIT_S:.0f} s"
            )
        time.sleep(RECORD_POLL_S)


def drain_client_workers() -> None:
    """Flush Prefect's background event and log senders while the server still runs.

    Otherwise they would flush at interpreter exit, against a stopped server.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=30)
    APILogWorker.drain_all(timeout=30)


def versions(conn: Any) -> dict[str, str]:
    row = conn.execute("SHOW server_version").fetchone()
    found = {"python": platform.python_version(), "postgresql": str(row[0]) if row else "?"}
    for dist in ("prefect", "sqlalchemy", "asyncpg", "uvicorn", "psycopg"):
        found[dist] = importlib.metadata.version(dist)
    return found


def measure_chain(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    length, runs = args.chain_length, args.runs
    if length < 1 or runs < 1:
        raise ValueError("--chain-length and --runs must be >= 1")
    deadline = time.monotonic() + args.timeout
    with running_server(args.dsn, deadline) as (server, ready_s):
        log(f"server healthy after {ready_s:.1f} s (includes migrating the empty database)")
        # Imported only now: prefect reads its settings (PREFECT_API_URL, ...) at import.
        from prefect import flow, task
        from prefect.context import get_run_context

        @task
        def noop(i: int) -> int:
            return i + 1

        @flow
        def chain_flow(length: int) -> tuple[int, str]:
            i = 0
            for _ in range(length):
                # A direct call runs the task and returns its result: each step
                # starts only after the previous one finished, and gets its counter.
                i = noop(i)
            return i, str(get_run_context().flow_run.id)

        @flow
        def single_task_flow() -> tuple[int, str]:
            return noop(0), str(get_run_context().flow_run.id)

        def timed(call: Callable[[], tuple[int, str]], expected: int) -> tuple[float, float, str]:
            sent = time.time()
            counter, flow_run_id = call()
            returned = time.time()
            if counter != expected:
                raise RuntimeError(f"flow returned counter {counter}, expected {expected}")
            recorded = wait_recorded(conn, flow_run_id, expected)
            return returned - sent, recorded - sent, flow_run_id

        with psycopg.connect(libpq_url(args.dsn), autocommit=True) as conn:
            found_versions = versions(conn)
            log(f"versions: {found_versions}")

            warm_s, warm_rec_s, _ = timed(lambda: chain_flow(length), length)
            log(f"warm-up chain (not reported): {warm_s:.3f} s, recorded {warm_rec_s:.3f} s")

            seconds: list[float] = []
            recorded: list[float] = []
            for n in range(runs):
                run_s, rec_s, flow_run_id = timed(lambda: chain_flow(length), length)
                seconds.append(run_s)
                recorded.append(rec_s)
                log(
                    f"chain {n + 1}/{runs}: flow call->return {run_s:.3f} s, "
                    f"all {length} task runs recorded {rec_s:.3f} s (flow run {flow_run_id})"
                )

            single: list[float] = []
            single_rec: list[float] = []
            for _ in range(SINGLE_TASK_FLOW_SAMPLES):
                run_s, rec_s, _ = timed(single_task_flow, 1)
                single.append(run_s)
                single_rec.append(rec_s)
            single_median = statistics.median(single)
            log(
                f"EXTRA: one deployment-less flow with one no-op task, flow call->return: "
                f"median of {SINGLE_TASK_FLOW_SAMPLES} = {single_median * 1000:.1f} ms "
                f"(samples ms: {[round(s * 1000, 1) for s in single]}; "
                f"recorded median {statistics.median(single_rec) * 1000:.1f} ms)"
            )

    notes = (
        f"Prefect {found_versions['prefect']} local `prefect server start` (1 uvicorn "
        f"worker, all services, UI and analytics off, DO_NOT_TRACK=1) on PostgreSQL "
        f"{found_versions['postgresql']} via postgresql+asyncpg; other settings default "
        "(result persistence off, logging to API on, console logging INFO). "
        f"A @flow calls a no-op @task {length} times in sequence (i = noop(i)) in the "
        "adapter process (no deployment/worker; --workers/--concurrency unused). "
        "seconds = wall time from just before the flow call to its return (includes the "
        "flow run's synchronous API calls; task runs are orchestrated client-side and "
        "their states sent as fire-and-forget events). seconds_until_recorded = from the "
        f"same start until the server's task_run table shows all {length} task runs "
        "COMPLETED (polled every 5 ms). Flow run heartbeats are on (3.9.1 default, "
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=180): the engine joins its heartbeat thread, "
        "which sleeps in 1 s steps, when the flow ends, so each flow call waits up to "
        "~1 s more. One unreported warm-up flow run first "
        f"({warm_s:.3f} s). Extra: one flow with a single no-op task, flow call->return, "
        f"median of {SINGLE_TASK_FLOW_SAMPLES} = {single_median * 1000:.1f} ms. "
        f"Server startup incl. migrations {ready_s:.1f} s (not timed)."
    )
    return {
        "workload": "chain",
        "seconds": seconds,
        "seconds_until_recorded": recorded,
        "single_task_flow_s": single,
        "versions": found_versions,
        "settings": server.settings | {"PREFECT_API_URL": server.api_url},
        "notes": notes,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.workload != "chain":
        print(json.dumps({"workload": args.workload, "unsupported": UNSUPPORTED}))
        return 0
    if not args.dsn:
        log("chain needs --dsn (an empty PostgreSQL database for the Prefect server)")
        return 2
    signal.signal(signal.SIGTERM, raise_exit)
    watchdog = Watchdog(args.timeout)
    watchdog.start()
    try:
        result = measure_chain(args)
    except KeyboardInterrupt:
        if not watchdog.expired.is_set():
            raise
        log(f"FAILED: did not finish within --timeout {args.timeout:g} s")
        return 1
    except Exception as exc:  # any failure: one clear message on stderr, non-zero exit
        log(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    finally:
        watchdog.cancel()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
