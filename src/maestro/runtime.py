"""Composition root: database, migrations, API server, worker, and their lifecycles."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

import asyncpg
import structlog
import uvicorn

from maestro.api.app import create_app
from maestro.connectors.base import ConnectorResources
from maestro.connectors.registry import connector_resources, step_handlers
from maestro.db.embedded import EmbeddedPostgres
from maestro.db.migrate import migrate
from maestro.db.pool import connect, create_pool
from maestro.engine.worker import Worker, WorkerConfig
from maestro.observability.health_server import serve_health
from maestro.settings import Settings, SettingsError
from maestro.triggers.schedule_runner import RunnerConfig, ScheduleRunner
from maestro.triggers.webhook_secrets import new_encryption_key

log = structlog.get_logger("maestro")

JWT_SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a secret
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
WEBHOOK_KEY_FILE = "webhook-key"


class StartupError(Exception):
    """The process cannot start (database unreachable, port taken); the message says why."""


def resolve_jwt_secret(settings: Settings, *, generate: bool) -> str:
    """The configured secret, else the one `up` keeps in the data dir (generated if asked)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = settings.data_dir / JWT_SECRET_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    if not generate:
        raise SettingsError(
            "MAESTRO_JWT_SECRET is not set (nor MAESTRO_JWT_SECRET_FILE), and "
            f"{path} does not exist; set one with e.g. MAESTRO_JWT_SECRET=$(openssl rand -hex 32)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(0o600)
    return secret


def resolve_webhook_key(settings: Settings, *, generate: bool) -> str | None:
    """The configured webhook encryption key, else the one `up` keeps in the data dir
    (generated if asked). None: webhooks cannot be created or verified by this process."""
    if settings.webhook_encryption_key:
        return settings.webhook_encryption_key
    path = settings.data_dir / WEBHOOK_KEY_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    if not generate:
        return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = new_encryption_key()
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield a DSN: DATABASE_URL when set, else an embedded server under the data dir."""
    if settings.database_url:
        yield settings.database_url
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = EmbeddedPostgres(settings.data_dir.resolve())
    dsn = embedded.start()
    try:
        yield dsn
    finally:
        embedded.stop()


async def run_migrations(dsn: str) -> list[int]:
    try:
        conn = await connect(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # OSError covers refused connections, unknown hosts and timeouts.
        raise StartupError(f"cannot connect to the database (DATABASE_URL): {exc}") from None
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        concurrency=settings.worker_concurrency,
        claim_batch_size=settings.claim_batch_size,
        lease_seconds=settings.lease_seconds,
        poll_interval_seconds=settings.poll_interval_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        worker_id=settings.worker_id,
    )


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after serving, which would skip our graceful worker drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Processes:
    api: bool
    worker: bool
    scheduler: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    health_port: int | None = None


async def _serve_api(server: _Server, host: str, port: int) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn logs why (e.g. the address is in use) and calls sys.exit(), which would
        # escape the event loop and skip the graceful shutdown below.
        raise StartupError(
            f"the API server could not start on {host}:{port} (see the error logged above)"
        ) from None


class EarlyStop:
    """Records SIGTERM/SIGINT that arrive before :func:`serve` handles them (e.g. while the
    embedded PostgreSQL starts or stops), so that `up` finishes that step and then stops
    cleanly, instead of dying and leaving PostgreSQL running without an owner."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


async def serve(
    settings: Settings, dsn: str, what: Processes, early_stop: EarlyStop | None = None
) -> None:
    """Run the API, a worker and/or a schedule runner until SIGTERM/SIGINT, then shut down
    gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if early_stop is not None and early_stop.requested:
        return
    await run_migrations(dsn)
    pool: asyncpg.Pool = await create_pool(dsn, max_size=settings.db_pool_size)
    tasks: list[asyncio.Task[None]] = []
    worker: Worker | None = None
    runner: ScheduleRunner | None = None
    resources: ConnectorResources | None = None
    server: _Server | None = None
    health: asyncio.AbstractServer | None = None
    try:
        if what.worker:
            resources = connector_resources(pool, settings)
            worker = Worker(
                pool,
                dsn,
                worker_config(settings),
                handlers=step_handlers(resources),
                secret_values=resources.secrets.known_values,
            )
            await worker.start()
        if what.scheduler:
            runner = ScheduleRunner(
                pool, dsn, RunnerConfig(batch_size=settings.schedule_batch_size)
            )
            await runner.start()
        if what.api:
            app = create_app(settings, pool)
            config = uvicorn.Config(
                app,
                host=what.host,
                port=what.port,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            )
            server = _Server(config)
            tasks.append(asyncio.create_task(_serve_api(server, what.host, what.port)))
        if what.health_port is not None:
            health = await serve_health(pool, what.host, what.health_port)
        # Everything built so far lives as long as the process: move it out of the collector's
        # sight, so that a full collection walks only what requests allocate (a 60 ms pause
        # per gen-2 collection under load before, a few ms after).
        gc.collect()
        gc.freeze()
        log.info("maestro_running", api=what.api, worker=what.worker, scheduler=what.scheduler)
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        log.info("maestro_stopping")
    finally:
        if server is not None:
            server.should_exit = True

        async def drain_api() -> None:
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task

        # API, worker and scheduler stop at the same time: `up` stops within one grace period.
        await asyncio.gather(
            drain_api(),
            *([worker.shutdown()] if worker is not None else []),
            *([runner.shutdown()] if runner is not None else []),
        )
        if resources is not None:
            await resources.aclose()
        if health is not None:
            health.close()
            await health.wait_closed()
        await pool.close()
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, StartupError):
                raise exc
            raise RuntimeError("the API server stopped unexpectedly") from exc
