"""Helpers for end-to-end tests: real `maestro` processes driven over HTTP.

Every process is started as ``python -m maestro.cli.main ...`` with a clean environment (no
inherited MAESTRO_*, DATABASE_URL or PG* variables), its stdout/stderr in files (never pipes,
which could fill up and block it), and is killed at teardown if a test left it running.
Waits poll with a deadline; none is a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest

from tests.conftest import JWT_SECRET, auth, with_database

READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAESTRO_", "PG")) and k != "DATABASE_URL"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


class MaestroProcess:
    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, port: int | None
    ) -> None:
        self.name = name
        self.args = args
        self.port = port  # the HTTP (or health) port it serves, when it has one
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maestro.cli.main", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=log_dir,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"{self.name} {self.args} rc={self.proc.poll()}\n"
            f"--- stdout (tail) ---\n{self.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-3000:]}"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll /readyz on its port until 200 (fails at once if the process dies)."""
        port = self.port
        assert port is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"process exited before ready\n{self.describe()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"http://127.0.0.1:{port}/readyz")
                    if r.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"not ready after {timeout:g}s\n{self.describe()}")
                await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout:g}s\n{self.describe()}")
            await asyncio.sleep(0.02)
        return rc

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait_exit(10)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Spawner:
    """Starts maestro processes for one test and kills whatever is left at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[MaestroProcess] = []
        self._count = 0

    def __call__(self, *args: str, port: int | None = None, **env: str) -> MaestroProcess:
        self._count += 1
        name = f"{self._count:02d}-{args[0]}"
        proc = MaestroProcess(name, list(args), clean_env(**env), self.log_dir, port)
        self.started.append(proc)
        return proc

    def run(
        self, *args: str, timeout: float = 30.0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a short-lived command to completion, capturing its output."""
        return subprocess.run(
            [sys.executable, "-m", "maestro.cli.main", *args],
            env=clean_env(**env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.log_dir,
            check=False,
        )

    def up(self, data_dir: Path, **env: str) -> MaestroProcess:
        """`maestro up` on a free port with an embedded PostgreSQL under ``data_dir``."""
        port = free_port()
        return self("up", "--port", str(port), port=port, MAESTRO_DATA_DIR=str(data_dir), **env)

    def api(self, dsn: str, **env: str) -> MaestroProcess:
        """`maestro api` on a free port with the tests' JWT secret."""
        port = free_port()
        return self(
            "api",
            "--port",
            str(port),
            port=port,
            DATABASE_URL=dsn,
            MAESTRO_JWT_SECRET=JWT_SECRET,
            **env,
        )

    def worker(self, dsn: str, **env: str) -> MaestroProcess:
        """`maestro worker --health-port P` (``port`` is P, for readiness)."""
        port = free_port()
        return self("worker", "--health-port", str(port), port=port, DATABASE_URL=dsn, **env)

    def scheduler(self, dsn: str, **env: str) -> MaestroProcess:
        """`maestro scheduler --health-port P` (``port`` is P, for readiness)."""
        port = free_port()
        return self("scheduler", "--health-port", str(port), port=port, DATABASE_URL=dsn, **env)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        for proc in spawner.started:
            proc.cleanup()


# ----------------------------------------------------------------------- embedded PostgreSQL


def postmasters(data_dir: Path) -> list[psutil.Process]:
    """Live postmasters whose command line mentions ``data_dir`` (backends rename themselves
    to ``postgres: ...`` and are children of a postmaster, so they are not counted)."""
    target = str(data_dir)
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["name"] != "postgres" or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not any(target in arg for arg in proc.info["cmdline"] or []):
                continue
            parent = proc.parent()
            if parent is not None and parent.name() == "postgres":
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Every live postgres process whose command line contains ``data_dir``."""
    target = str(data_dir)
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and any(target in a for a in cmdline):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short, fresh MAESTRO_DATA_DIR; any server left running on it is killed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="me2e-"))
    try:
        yield path
    finally:
        for proc in postmasters(path):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGQUIT)
                proc.wait(10)
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------- databases and API


@pytest.fixture
async def empty_db(server_dsn: str) -> AsyncIterator[str]:
    """A new database with nothing in it (not migrated)."""
    name = f"maestro_e2e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def chain(name: str, length: int, **step_extra: Any) -> dict[str, Any]:
    """A workflow of ``length`` noop steps, each needing the previous one."""
    steps: list[dict[str, Any]] = []
    for i in range(length):
        step: dict[str, Any] = {
            "id": f"s{i}",
            "type": "noop",
            "actionConfig": {"i": i, "n": "{{ input.n }}"},
            **step_extra,
        }
        if i:
            step["needs"] = [f"s{i - 1}"]
        steps.append(step)
    return {"name": name, "steps": steps}


async def publish(client: httpx.AsyncClient, definition: dict[str, Any]) -> str:
    r = await client.post("/api/workflows", json=definition)
    assert r.status_code == 201, r.text
    wid = str(r.json()["id"])
    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    return wid


async def execute(client: httpx.AsyncClient, workflow_id: str, input: Any = None) -> str:
    r = await client.post(f"/api/workflows/{workflow_id}/execute", json={"input": input or {}})
    assert r.status_code == 202, r.text
    return str(r.json()["executionId"])


async def execute_many(
    client: httpx.AsyncClient, workflow_id: str, count: int, parallel: int = 16
) -> list[str]:
    ids: list[str] = []

    async def one(start: int) -> None:
        for n in range(start, count, parallel):
            ids.append(await execute(client, workflow_id, {"n": n}))

    await asyncio.gather(*(one(i) for i in range(parallel)))
    return ids


def api_client(base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers=headers or auth(), timeout=15.0)


async def wait_execution(
    client: httpx.AsyncClient, execution_id: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    """GET the execution until its status is one of ``statuses``; returns the last body."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal last
        r = await client.get(f"/api/executions/{execution_id}")
        assert r.status_code == 200, r.text
        last = r.json()
        return last["status"] in statuses

    try:
        await wait_until(check, timeout=timeout, what=f"execution in {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last}") from None
    return last


async def assert_each_step_succeeded_once(
    conn: asyncpg.Connection, executions: int, steps_per_execution: int
) -> None:
    """Every execution succeeded; one succeeded step_runs row per (execution, step); and the
    log has exactly one ``step_succeeded`` line per step (a double-recorded success would
    write two)."""
    by_status = dict(
        await conn.fetch("SELECT status, count(*) FROM workflow_executions GROUP BY status")
    )
    assert by_status == {"succeeded": executions}, by_status
    steps = dict(await conn.fetch("SELECT status, count(*) FROM step_runs GROUP BY status"))
    assert steps == {"succeeded": executions * steps_per_execution}, steps
    dup_rows = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM step_runs GROUP BY tenant_id, execution_id, step_id"
        " HAVING count(*) > 1) d"
    )
    assert dup_rows == 0
    per_step = await conn.fetch(
        """SELECT s.execution_id, s.step_id, count(l.id) AS n
             FROM step_runs s
             LEFT JOIN workflow_logs l
               ON l.tenant_id = s.tenant_id AND l.execution_id = s.execution_id
              AND l.step_id = s.step_id AND l.event = 'step_succeeded'
            GROUP BY s.execution_id, s.step_id
           HAVING count(l.id) <> 1"""
    )
    assert not per_step, [dict(r) for r in per_step[:10]]
