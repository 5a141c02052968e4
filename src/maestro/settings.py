"""One typed Settings object, read from ``MAESTRO_*`` environment variables.

Every secret setting also accepts a ``*_FILE`` variant naming a file that holds the value
(the Kubernetes/Docker secrets convention). Bad values fail at start with a clear message.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_SECRET_FIELDS = ("jwt_secret", "database_url", "vault_token", "webhook_encryption_key")


class SettingsError(Exception):
    """A setting has a value we cannot use; the message says which and how to fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAESTRO_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MAESTRO_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL DSN; without it `maestro up` starts an embedded server.",
    )
    data_dir: Path = Path(".maestro")
    jwt_secret: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    worker_concurrency: int = Field(default=64, ge=1, le=10_000)
    claim_batch_size: int = Field(default=64, ge=1, le=1_000)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=3600)
    lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    db_pool_size: int = Field(default=10, ge=2, le=200)
    # Schedules one runner transaction claims and enqueues at once.
    schedule_batch_size: int = Field(default=500, ge=1, le=10_000)
    log_level: str = "info"
    worker_id: str | None = None
    # Secret references: vault://mount/path#key reads HashiCorp Vault KV v2.
    vault_addr: str | None = None
    vault_token: str | None = None
    vault_kubernetes_role: str | None = None
    vault_kubernetes_mount: str = "kubernetes"
    vault_kubernetes_token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
    vault_namespace: str | None = None
    secret_cache_seconds: float = Field(default=60.0, ge=0, le=86_400)
    # Browser origins, besides the API's own, whose session-cookie writes are accepted (the
    # CSRF Origin check): comma-separated exact origins such as https://console.example.com.
    # NoDecode: the variable is a plain list, not the JSON pydantic-settings expects.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _exact_origins(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return items  # pydantic reports the type
        origins = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            # Browsers send an origin without path, query or trailing slash; one written with
            # them would never match, so refuse it instead of silently allowing nothing.
            try:
                parts = urlsplit(item)
                ok = (
                    parts.scheme in ("http", "https")
                    and bool(parts.hostname)
                    and parts.port != 0
                    and parts.username is None
                    and not parts.path
                    and not {"?", "#", "*"} & set(item)  # exact origins, no wildcards
                )
            except ValueError:  # e.g. a port that is not a number
                ok = False
            if not ok:
                raise ValueError(
                    f"{item!r} is not an origin; write scheme://host[:port] with http or https "
                    "and no path, trailing slash or wildcard, e.g. https://console.example.com"
                )
            origins.append(item)
        return tuple(origins)

    # Webhooks: the AES-256-GCM key their signing secrets are stored under (base64 of 32
    # bytes; `up` generates one in the data dir), the proxies whose X-Forwarded-For is
    # believed (comma-separated CIDRs), the largest delivery body, and the base URL shown in
    # a webhook's `url` (default: the URL the request came in on).
    webhook_encryption_key: str | None = None
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    webhook_maintenance_seconds: float = Field(default=30.0, gt=0, le=3600)
    public_url: str | None = None

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return items
        networks = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            try:
                networks.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"
                ) from None
        return tuple(networks)

    @field_validator("webhook_encryption_key")
    @classmethod
    def _encryption_key(cls, value: str | None) -> str | None:
        if value is not None:
            from maestro.triggers.webhook_secrets import parse_encryption_key

            parse_encryption_key(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError("must be an absolute http(s) URL such as https://maestro.example.com")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in _SECRET_FIELDS:
            env_name = f"MAESTRO_{name.upper()}"
            file_var = f"{env_name}_FILE"
            path = os.environ.get(file_var)
            if path and not os.environ.get(env_name) and not data.get(name):
                try:
                    value = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise SettingsError(
                        f"{file_var}={path} cannot be read: {exc.strerror}"
                    ) from None
                # database_url is read through its aliases; jwt_secret by its own name.
                data[env_name if name == "database_url" else name] = value
        return data

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("must be at least 32 characters (use e.g. `openssl rand -hex 32`)")
        return value


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)
    except SettingsError:
        raise
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            env = f"MAESTRO_{field.upper()}"
            lines.append(f"{env}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
