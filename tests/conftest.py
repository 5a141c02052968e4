"""Shared fixtures: a real PostgreSQL (the machine's via MAESTRO_TEST_DATABASE_URL, else an
embedded one), a migrated template database, and a fresh database cloned from it per test."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from maestro.api.app import create_app
from maestro.api.auth import issue_token
from maestro.db.migrate import migrate
from maestro.db.pool import connect, create_pool
from maestro.engine.worker import Worker, WorkerConfig
from maestro.settings import Settings

WEBHOOK_KEY = "bWFlc3Ryby10ZXN0cy13ZWJob29rLWtleS0zMmJ5dGU="  # base64 of 32 bytes
JWT_SECRET = "test-secret-" + "x" * 40


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    configured = os.environ.get("MAESTRO_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from maestro.db.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="mtest") as tmp, EmbeddedPostgres(Path(tmp)) as pg:
        yield pg.dsn


@pytest.fixture(scope="session")
async def template_db(server_dsn: str) -> AsyncIterator[str]:
    name = f"maestro_tpl_{os.getpid()}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await connect(with_database(server_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db_dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A database of its own for each test, cloned from the migrated template."""
    name = f"maestro_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}" STRATEGY FILE_COPY')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_dsn, max_size=10)
    yield p
    await p.close()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        jwt_secret=JWT_SECRET,
        database_url="postgresql://unused",
        webhook_encryption_key=WEBHOOK_KEY,
    )


def token(tenant: str = "acme", roles: tuple[str, ...] = ("admin",), sub: str = "tester") -> str:
    return issue_token(JWT_SECRET, subject=sub, tenant=tenant, roles=list(roles), ttl=3600)


def auth(tenant: str = "acme", roles: tuple[str, ...] = ("admin",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, roles)}"}


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, pool)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=auth()
        ) as c:
            yield c


class WorkerHandle:
    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool, self.dsn = pool, dsn
        self.workers: list[Worker] = []

    async def start(
        self,
        handlers: dict[str, Any] | None = None,
        secret_values: Any = None,
        **overrides: Any,
    ) -> Worker:
        config = WorkerConfig(
            **{
                "lease_seconds": 5.0,
                "poll_interval_seconds": 0.2,
                "shutdown_grace_seconds": 5.0,
                **overrides,
            }
        )
        worker = Worker(self.pool, self.dsn, config, handlers=handlers, secret_values=secret_values)
        await worker.start()
        self.workers.append(worker)
        return worker

    async def stop_all(self) -> None:
        for w in self.workers:
            await w.shutdown()
        self.workers.clear()


@pytest.fixture
async def workers(pool: asyncpg.Pool, db_dsn: str) -> AsyncIterator[WorkerHandle]:
    handle = WorkerHandle(pool, db_dsn)
    yield handle
    await handle.stop_all()


async def wait_for_status(
    dsn: str, execution_id: str, statuses: set[str], timeout: float = 20.0
) -> str:
    """Wait, on NOTIFY rather than sleeps, until the execution reaches one of ``statuses``."""
    conn = await asyncpg.connect(dsn)
    changed = asyncio.Event()
    await conn.add_listener("maestro_execution_finished", lambda *_: changed.set())
    await conn.add_listener("maestro_steps", lambda *_: changed.set())
    try:
        try:
            return await _wait(conn, changed, execution_id, statuses, timeout)
        except TimeoutError:
            steps = await conn.fetch(
                "SELECT step_id, status, attempts, error, worker_id, lease_expires_at, run_at "
                "FROM step_runs WHERE execution_id = $1",
                uuid.UUID(execution_id),
            )
            logs = await conn.fetch(
                "SELECT event, message FROM workflow_logs WHERE execution_id = $1 ORDER BY id",
                uuid.UUID(execution_id),
            )
            raise AssertionError(
                f"execution {execution_id} did not reach {statuses} in {timeout}s; steps: "
                f"{[dict(r) for r in steps]}; logs: {[tuple(r) for r in logs]}"
            ) from None
    finally:
        await conn.close()


async def _wait(
    conn: asyncpg.Connection,
    changed: asyncio.Event,
    execution_id: str,
    statuses: set[str],
    timeout: float,
) -> str:
    async with asyncio.timeout(timeout):
        while True:
            changed.clear()
            status = await conn.fetchval(
                "SELECT status FROM workflow_executions WHERE id = $1", uuid.UUID(execution_id)
            )
            if status in statuses:
                return str(status)
            # Waiting states are not announced; fall back to a short re-check.
            try:
                async with asyncio.timeout(0.2):
                    await changed.wait()
            except TimeoutError:
                pass
