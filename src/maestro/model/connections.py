"""Connections: named, tenant-scoped provider settings, one typed config per connection type.

Every secret field accepts only a secret reference (``{"secretRef": "env://NAME"}``,
``file:///path`` or ``vault://mount/path#key``); a plain value is refused with the error type
``secret_must_be_reference``, and the refused value is never echoed back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from maestro.secrets import SecretRef

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _require_reference(value: Any) -> Any:
    if isinstance(value, str | int | float | bytes):
        raise PydanticCustomError(
            "secret_must_be_reference",
            'this is a secret field: give a reference such as {"secretRef": "env://NAME"}, '
            '{"secretRef": "file:///path"} or {"secretRef": "vault://mount/path#key"}, '
            "never the value itself",
        )
    return value


Secret = Annotated[SecretRef, BeforeValidator(_require_reference)]


class _Config(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# --- HTTP authentication strategies (http and ml connections, or inline in a step) ---


class BearerAuth(_Config):
    strategy: Literal["bearer"]
    token: Secret


class ApiKeyAuth(_Config):
    strategy: Literal["apiKey"]
    in_: Literal["header", "query"] = Field(alias="in")
    name: str = Field(min_length=1, max_length=200)
    value: Secret


class BasicAuth(_Config):
    strategy: Literal["basic"]
    username: str = Field(min_length=1)
    password: Secret


class HmacAuth(_Config):
    """Signs ``"{timestamp}.{method}.{path}.{body}"`` with HMAC-SHA256 (hex)."""

    strategy: Literal["hmac"]
    secret: Secret
    header: str = "X-Signature"
    timestamp_header: str = "X-Timestamp"


HttpAuth = Annotated[
    BearerAuth | ApiKeyAuth | BasicAuth | HmacAuth, Field(discriminator="strategy")
]


class CircuitBreakerConfig(_Config):
    failure_threshold: int = Field(default=5, ge=1, le=1000)
    reset_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)


# --- one config per connection type ---


class DkimConfig(_Config):
    domain: str = Field(min_length=1)
    selector: str = Field(min_length=1)
    private_key: Secret


class SmtpConfig(_Config):
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    from_: str = Field(alias="from", min_length=3, description="Default sender.")
    allowed_senders: list[str] = Field(default_factory=list)
    dkim: DkimConfig | None = None


class SendgridConfig(_Config):
    api_key: Secret
    base_url: str = "https://api.sendgrid.com/"
    from_: str = Field(alias="from", min_length=3)
    allowed_senders: list[str] = Field(default_factory=list)


class PostmarkConfig(_Config):
    server_token: Secret
    base_url: str = "https://api.postmarkapp.com/"
    from_: str = Field(alias="from", min_length=3)
    allowed_senders: list[str] = Field(default_factory=list)
    message_stream: str = "outbound"


class SlackConfig(_Config):
    bot_token: Secret
    base_url: str = "https://slack.com/api/"


class JiraBasicAuth(_Config):
    type: Literal["basic"]
    email: str = Field(min_length=3)
    api_token: Secret


class JiraBearerAuth(_Config):
    type: Literal["bearer"]
    token: Secret


class JiraConfig(_Config):
    base_url: str = Field(min_length=8)
    auth: Annotated[JiraBasicAuth | JiraBearerAuth, Field(discriminator="type")]
    allowed_projects: list[str] = Field(
        default_factory=list, description="Project keys steps may touch; empty allows all."
    )


class HttpConnectionConfig(_Config):
    base_url: str = Field(min_length=8)
    auth: HttpAuth | None = None
    default_headers: dict[str, str] = Field(default_factory=dict)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)


class PostgresConfig(_Config):
    dsn: Secret
    read_only: bool = Field(default=True, description="Refuse `write` steps (the safe default).")
    statement_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    max_rows: int = Field(default=1000, ge=1, le=1_000_000)


class MlConfig(_Config):
    base_url: str = Field(min_length=8)
    protocol: Literal["kserve-v2", "json"] = "kserve-v2"
    auth: HttpAuth | None = None
    cold_start_timeout_seconds: float = Field(default=60.0, ge=0, le=3600)


CONNECTION_TYPES: dict[str, type[_Config]] = {
    "smtp": SmtpConfig,
    "sendgrid": SendgridConfig,
    "postmark": PostmarkConfig,
    "slack": SlackConfig,
    "jira": JiraConfig,
    "http": HttpConnectionConfig,
    "postgres": PostgresConfig,
    "ml": MlConfig,
}


class ConnectionIn(BaseModel):
    """The body of create (name in it) and replace (name in the path)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    type: str
    description: str = Field(default="", max_length=2000)
    config: dict[str, Any]


class ConnectionProblem(Exception):
    """Invalid connection settings: ``code`` is ``secret_must_be_reference`` when a secret
    field held a plain value, else ``invalid_connection``; ``errors`` lists path and message."""

    def __init__(self, code: str, errors: list[dict[str, str]]) -> None:
        super().__init__(errors[0]["message"] if errors else code)
        self.code = code
        self.errors = errors


def validate_config(connection_type: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config in canonical camelCase form, or :class:`ConnectionProblem`."""
    model = CONNECTION_TYPES.get(connection_type)
    if model is None:
        raise ConnectionProblem(
            "invalid_connection",
            [
                {
                    "path": "type",
                    "message": f"unknown connection type {connection_type!r}; use one of "
                    + ", ".join(sorted(CONNECTION_TYPES)),
                }
            ],
        )
    try:
        parsed = model.model_validate(config)
    except ValidationError as exc:
        errors = [
            {
                "path": "config." + ".".join(str(p) for p in err["loc"]),
                "message": err["msg"],  # pydantic's messages do not repeat the input value
            }
            for err in exc.errors(include_input=False, include_url=False)
        ]
        secret = any(err["type"] == "secret_must_be_reference" for err in exc.errors())
        raise ConnectionProblem(
            "secret_must_be_reference" if secret else "invalid_connection", errors
        ) from None
    return parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
