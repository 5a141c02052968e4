"""The connector step types a worker runs, and their simulate descriptions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from maestro.connectors import database, http
from maestro.connectors.base import ConnectorResources
from maestro.engine.steps import BUILTIN_HANDLERS, Handler
from maestro.secrets import SecretResolver, VaultConfig
from maestro.settings import Settings

Describer = Callable[[Mapping[str, Any]], dict[str, Any]]

DESCRIBERS: dict[str, Describer] = {
    "http": http.describe,
    "database": database.describe,
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
    }
