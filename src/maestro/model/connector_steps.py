"""Typed ``actionConfig`` of the connector step types (string values are templates)."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from maestro.model.connections import NAME_PATTERN, HttpAuth

_TEMPLATE_MARKERS = ("{{", "{%", "{#")


class _StepConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class HttpStepConfig(_StepConfig):
    """An HTTP request. ``url`` is absolute, or a path under the connection's ``baseUrl``."""

    connection: str | None = Field(default=None, pattern=NAME_PATTERN)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, Any] = Field(default_factory=dict)
    json_: Any = Field(default=None, alias="json", description="A JSON request body.")
    body: str | None = Field(default=None, description="A raw request body (text).")
    auth: HttpAuth | None = Field(default=None, description="Overrides the connection's auth.")
    expect_status: list[int] | None = Field(
        default=None, description="Accepted statuses; default any 2xx."
    )
    response_type: Literal["json", "text"] = "json"

    @field_validator("expect_status")
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not all(100 <= s <= 599 for s in value):
            raise ValueError("expectStatus entries must be HTTP statuses between 100 and 599")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> Self:
        if self.json_ is not None and self.body is not None:
            raise ValueError("give either json or body, not both")
        if self.connection is None and not self.url.startswith(("http://", "https://", "{{")):
            raise ValueError(
                "url must be absolute (http:// or https://) unless a connection gives the baseUrl"
            )
        return self


class DatabaseStepConfig(_StepConfig):
    """One SQL statement against a ``postgres`` connection. The SQL is never templated:
    values go in ``params`` ($1, $2, ...), which are."""

    connection: str = Field(pattern=NAME_PATTERN)
    mode: Literal["read", "write"] = "read"
    query: str = Field(min_length=1, max_length=100_000)
    params: list[Any] = Field(default_factory=list)
    max_rows: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("query")
    @classmethod
    def _not_templated(cls, value: str) -> str:
        if any(marker in value for marker in _TEMPLATE_MARKERS):
            raise ValueError(
                "query is never templated (that is how SQL injection happens); use $1, $2, ... "
                "placeholders and put the values, which may be templates, in params"
            )
        return value
