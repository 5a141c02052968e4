"""One typed Settings object, read from ``MAESTRO_*`` environment variables.

Every secret setting also accepts a ``*_FILE`` variant naming a file that holds the value
(the Kubernetes/Docker secrets convention). Bad values fail at start with a clear message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SECRET_FIELDS = ("jwt_secret", "database_url", "vault_token")


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
