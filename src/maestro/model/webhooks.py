"""API shapes of webhook endpoints (the table is workflow_webhooks)."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

TRIGGER_PATH = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_ALLOWLIST = 100


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class RateLimit(_Model):
    per_second: float = Field(gt=0, le=100_000, description="Sustained deliveries per second.")
    burst: int = Field(ge=1, le=1_000_000, description="Deliveries allowed at once.")


def _networks(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"entry {i} must be a CIDR string such as 203.0.113.0/24")
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(
                f"entry {i} ({item!r}) is not an IPv4 or IPv6 address or CIDR block, "
                "e.g. 203.0.113.0/24 or 2001:db8::/32"
            ) from None
    return out


class WebhookSettings(_Model):
    """What PATCH may change; None means "leave as is" (send ``rateLimit: null`` via
    ``clearRateLimit`` to remove the limit)."""

    description: str | None = Field(default=None, max_length=1_000)
    enabled: bool | None = None
    ip_allowlist: list[str] | None = Field(default=None, max_length=MAX_ALLOWLIST)
    rate_limit: RateLimit | None = None
    clear_rate_limit: bool = False
    tolerance_seconds: int | None = Field(default=None, ge=1, le=3_600)

    _check_networks = field_validator("ip_allowlist", mode="before")(_networks)


class WebhookIn(_Model):
    trigger_path: str = Field(
        pattern=TRIGGER_PATH,
        description="The last segment of the delivery URL: letters, digits, . _ - (max 128).",
    )
    description: str = Field(default="", max_length=1_000)
    enabled: bool = True
    ip_allowlist: list[str] = Field(
        default_factory=list,
        max_length=MAX_ALLOWLIST,
        description="CIDR blocks allowed to deliver; empty admits every source.",
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="Per-endpoint token bucket; absent means no limit."
    )
    tolerance_seconds: int = Field(
        default=300, ge=1, le=3_600, description="Allowed clock difference, both directions."
    )

    _check_networks = field_validator("ip_allowlist", mode="before")(_networks)


class RotateIn(_Model):
    grace_period_seconds: int = Field(
        default=86_400,
        ge=0,
        le=30 * 86_400,
        description="How long the previous secret keeps verifying (0: stops at once).",
    )
