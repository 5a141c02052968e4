"""The connector step types a worker runs, and their simulate descriptions."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from maestro.connectors import database, email, http, jira, ml, slack
from maestro.connectors.base import ConnectorResources
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import BUILTIN_HANDLERS, Handler, StepContext
from maestro.secrets import SecretResolver, VaultConfig
from maestro.settings import Settings

Describer = Callable[[Mapping[str, Any]], dict[str, Any]]

DESCRIBERS: dict[str, Describer] = {
    "http": http.describe,
    "database": database.describe,
    "email": email.describe,
    "jira": jira.describe,
    "ml": ml.describe,
    "slack": slack.describe,
}


def secret_resolver(settings: Settings) -> SecretResolver:
    vault = None
    if settings.vault_addr:
        vault = VaultConfig(
            addr=settings.vault_addr,
            token=settings.vault_token,
            kubernetes_role=settings.vault_kubernetes_role,
            kubernetes_token_path=settings.vault_kubernetes_token_path,
            kubernetes_mount=settings.vault_kubernetes_mount,
            namespace=settings.vault_namespace,
        )
    return SecretResolver(vault, ttl_seconds=settings.secret_cache_seconds)


def connector_resources(pool: Any, settings: Settings) -> ConnectorResources:
    return ConnectorResources(
        pool=pool,
        secrets=secret_resolver(settings),
        http=httpx.AsyncClient(follow_redirects=False),
    )


def step_handlers(resources: ConnectorResources) -> dict[str, Handler]:
    """Every step type: the built-in ones and the connectors."""
    run_database = database.make_handler(resources)
    resources.on_close(run_database.aclose)
    return {
        **BUILTIN_HANDLERS,
        "http": http.make_handler(resources),
        "database": run_database,
        "email": email.make_handler(resources),
        "jira": jira.make_handler(resources),
        "ml": ml.make_handler(resources),
        "slack": slack.make_handler(resources),
    }


# A harmless call per connection type that proves its settings and credentials work.
Check = Callable[[ConnectorResources, Mapping[str, Any]], Awaitable[dict[str, Any]]]
CHECKS: dict[str, Check] = {
    **email.CHECKS,
    "jira": jira.check,
    "ml": ml.check,
    "slack": slack.check,
}


async def check_connection(
    resources: ConnectorResources,
    handlers: Mapping[str, Handler],
    tenant: str,
    name: str,
    kind: str,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Try the connection; raises StepError (classified) when it does not work."""
    ctx = StepContext(
        tenant=tenant,
        execution_id=uuid.UUID(int=0),
        workflow_id=uuid.UUID(int=0),
        step_id=f"connection-test-{name}",
        step_type=kind,
        attempt=1,
        correlation_id=None,
        state=None,
    )
    if kind == "http":
        # Any answer but an auth failure or a server error shows the base URL and auth work.
        answered = await handlers["http"](
            ctx,
            {
                "connection": name,
                "method": "GET",
                "url": "/",
                "responseType": "text",
                "expectStatus": [s for s in range(200, 500) if s not in (401, 403, 407)],
            },
        )
        return {"status": answered["status"]}
    if kind == "postgres":
        result = await handlers["database"](
            ctx,
            {
                "connection": name,
                "mode": "read",
                "query": "SELECT current_database() AS database, current_user AS user, "
                "current_setting('server_version') AS server_version",
            },
        )
        row = result["rows"][0]
        return {
            "database": row["database"],
            "user": row["user"],
            "serverVersion": row["server_version"],
        }
    check = CHECKS.get(kind)
    if check is None:
        raise StepError(ErrorClass.VALIDATION, f"connection type {kind!r} has no test")
    return await check(resources, config)
