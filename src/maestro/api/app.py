"""FastAPI application factory. Wiring happens in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI

from maestro.api.client_ip import parse_networks
from maestro.api.errors import install_error_handlers
from maestro.api.middleware import RequestContextMiddleware
from maestro.api.routers import (
    api_keys,
    connections,
    dlq,
    executions,
    health,
    human_tasks,
    schedules,
    session,
    webhook_deliveries,
    webhooks,
    workflows,
)
from maestro.connectors.registry import connector_resources, step_handlers
from maestro.db.queries import sql
from maestro.engine.compiled import WorkflowCache
from maestro.engine.executions import TemplateCache
from maestro.governance.audit import AuditBuffer
from maestro.qos import TokenBuckets
from maestro.settings import Settings
from maestro.triggers.schedule_store import Clock, wall_clock
from maestro.triggers.webhook_maintenance import maintain_webhooks
from maestro.triggers.webhook_secrets import SecretBox, parse_encryption_key


def create_app(settings: Settings, pool: asyncpg.Pool, clock: Clock = wall_clock) -> FastAPI:
    """Build the API around an existing pool (the caller owns its lifecycle). ``clock`` is
    the time schedules are computed from."""

    async def load_version(tenant: str, workflow_id: Any, version: int) -> Mapping[str, Any]:
        async with pool.acquire() as conn:
            definition = await conn.fetchval(sql("load_version"), tenant, workflow_id, version)
        if definition is None:
            raise LookupError(version)
        return definition  # type: ignore[no-any-return]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = pool
        app.state.known_tenants = set()
        app.state.compiled = WorkflowCache(load_version)
        # Step templates of workflow versions, for schedules' and webhooks' executions.
        app.state.step_templates = TemplateCache()
        app.state.clock = clock
        # For POST /api/connections/{name}/test: the same connectors the workers run.
        resources = connector_resources(pool, settings)
        app.state.connector_resources = resources
        app.state.step_handlers = step_handlers(resources)
        # Webhooks: secrets at rest, the source-address rule, per-endpoint limits, and the
        # batched audit of rejected deliveries.
        key = settings.webhook_encryption_key
        app.state.secret_box = SecretBox(parse_encryption_key(key)) if key else None
        app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
        app.state.webhook_buckets = TokenBuckets()
        app.state.audit_buffer = AuditBuffer(pool)
        app.state.audit_buffer.start()
        upkeep = asyncio.create_task(
            maintain_webhooks(pool, clock, settings.webhook_maintenance_seconds),
            name="maestro-webhook-upkeep",
        )
        try:
            yield
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            await app.state.audit_buffer.aclose()
            await resources.aclose()

    app = FastAPI(
        title="Maestro Composer",
        version="0.1.0",
        description="Durable workflow orchestration on PostgreSQL.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (
        webhook_deliveries,  # first: the hot, unauthenticated path matches without a scan
        health,
        workflows,
        executions,
        dlq,
        human_tasks,
        connections,
        api_keys,
        schedules,
        session,
        webhooks,
    ):
        app.include_router(module.router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
