"""What every connector shares: connections, secret resolution, the HTTP client, breakers.

A connector is a step handler ``async (ctx, config) -> output`` built once per worker by a
factory that receives :class:`ConnectorResources`. Handlers raise
:class:`~maestro.engine.retry.StepError` with an error class; the worker retries, scrubs secret
values from outputs and errors, and records provenance hashes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import httpx
from pydantic import BaseModel, ValidationError

from maestro.connectors.resilience import CircuitBreakers
from maestro.db.queries import sql
from maestro.engine.retry import ErrorClass, StepError
from maestro.secrets import SecretError, SecretResolver

M = TypeVar("M", bound=BaseModel)

# A connection changed through the API is seen by workers within this many seconds.
CONNECTION_CACHE_SECONDS = 5.0


def secret_failure(exc: SecretError) -> StepError:
    """A secret that cannot be resolved, as a step error (retried only if the backend is down)."""
    if exc.retryable:
        return StepError(ErrorClass.NETWORK, exc.message)
    if exc.code == "secret_backend_denied":
        return StepError(ErrorClass.AUTH, exc.message)
    return StepError(ErrorClass.VALIDATION, exc.message)


@dataclass
class ConnectorResources:
    pool: asyncpg.Pool
    secrets: SecretResolver
    http: httpx.AsyncClient
    breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    clock: Callable[[], float] = time.monotonic
    _connections: dict[tuple[str, str], tuple[float, str, dict[str, Any]]] = field(
        default_factory=dict
    )
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the worker stops (e.g. a connector's connection pools)."""
        self._closers.append(closer)

    async def connection(
        self, tenant: str, name: str, expected_types: tuple[str, ...]
    ) -> dict[str, Any]:
        """The named connection's config (secret fields still references)."""
        key = (tenant, name)
        cached = self._connections.get(key)
        if cached is None or self.clock() - cached[0] > CONNECTION_CACHE_SECONDS:
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow(sql("get_connection"), tenant, name)
            if row is None:
                raise StepError(
                    ErrorClass.NOT_FOUND,
                    f"no connection named {name!r} in this tenant; create it with "
                    "POST /api/connections",
                )
            cached = (self.clock(), row["type"], row["config"])
            self._connections[key] = cached
        _, kind, config = cached
        if kind not in expected_types:
            raise StepError(
                ErrorClass.VALIDATION,
                f"connection {name!r} is of type {kind!r}; this step needs "
                + " or ".join(repr(t) for t in expected_types),
            )
        return config

    async def resolve(self, value: Any) -> Any:
        """``value`` with every ``{"secretRef": ...}`` replaced by the secret."""
        try:
            return await self.secrets.resolve_all(value)
        except SecretError as exc:
            raise secret_failure(exc) from None

    async def audit(
        self,
        tenant: str,
        actor: str,
        action: str,
        resource_type: str,
        resource_id: str,
        details: dict[str, Any] | None,
    ) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                sql("insert_audit"),
                tenant,
                actor,
                action,
                resource_type,
                resource_id,
                details,
                None,
            )

    async def aclose(self) -> None:
        for closer in self._closers:
            await closer()
        await self.http.aclose()
        await self.secrets.aclose()


def typed_step(model: type[M], config: Any) -> M:
    """The rendered ``actionConfig`` validated by the step type's model."""
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        where = f"actionConfig.{where}" if where else "actionConfig"
        raise StepError(ErrorClass.VALIDATION, f"{where}: {first['msg']} after rendering") from None


def typed_connection(model: type[M], name: str, kind: str, config: Any) -> M:
    """A stored connection's config validated by its type's model."""
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise StepError(
            ErrorClass.VALIDATION,
            f"connection {name!r} is not a valid {kind} connection: {where}: {first['msg']}",
        ) from None


async def send_request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout_seconds: float,
    where: str,
    body: Any = None,
) -> httpx.Response:
    """One JSON request to a provider API; transport failures become classified step errors
    (timeouts ``timeout``, everything else ``network``). Statuses are the caller's to judge."""
    try:
        return await http.request(
            method, url, headers=headers, json=body, timeout=httpx.Timeout(timeout_seconds)
        )
    except httpx.TimeoutException as exc:
        raise StepError(ErrorClass.TIMEOUT, f"{where} timed out ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise StepError(
            ErrorClass.NETWORK, f"{where} failed: {type(exc).__name__}: {exc}"
        ) from None
