"""Live tests against real providers (`make test-live`). They need credentials in the
environment and fail, rather than skip, when those are missing: a live run that tested
nothing must not look green."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver


def require(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(f"live test needs {', '.join(missing)} in the environment", pytrace=False)
    return {n: os.environ[n] for n in names}


@pytest.fixture
async def resources(pool: asyncpg.Pool) -> AsyncIterator[ConnectorResources]:
    await pool.execute("INSERT INTO tenants (id) VALUES ('live') ON CONFLICT DO NOTHING")
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


@pytest.fixture
def add_connection(pool: asyncpg.Pool) -> Callable[[str, str, dict[str, object]], object]:
    async def add(name: str, kind: str, config: dict[str, object]) -> None:
        await pool.execute(
            "INSERT INTO connections (tenant_id, name, type, config) VALUES ('live', $1, $2, $3)",
            name,
            kind,
            config,
        )

    return add


def live_context(step_id: str) -> StepContext:
    return StepContext(
        tenant="live",
        execution_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        step_id=step_id,
        step_type="live",
        attempt=1,
        correlation_id="live-test",
        state=None,
    )
