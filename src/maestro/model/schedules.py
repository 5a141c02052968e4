"""API shapes of schedules (the table is scheduled_workflows)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from maestro.triggers.schedule_plan import OverlapPolicy

MAX_CATCHUP_WINDOW_SECONDS = 31 * 86_400
MAX_CATCHUP_RUNS = 1_000
MAX_JITTER_SECONDS = 3_600


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ScheduleSettings(_Model):
    """Everything a PATCH may change; None means "leave as is"."""

    description: str | None = Field(default=None, max_length=1_000)
    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="5 fields (minute hour day-of-month month day-of-week), or 6 with seconds "
        "first.",
        examples=["0 9 * * MON-FRI", "*/10 * * * * *"],
    )
    timezone: str | None = Field(
        default=None, min_length=1, max_length=64, description="IANA zone, e.g. Europe/Berlin."
    )
    enabled: bool | None = None
    input: dict[str, Any] | None = None
    catchup_window_seconds: int | None = Field(default=None, ge=1, le=MAX_CATCHUP_WINDOW_SECONDS)
    max_catchup_runs: int | None = Field(default=None, ge=0, le=MAX_CATCHUP_RUNS)
    overlap_policy: OverlapPolicy | None = None
    jitter_seconds: int | None = Field(default=None, ge=0, le=MAX_JITTER_SECONDS)


class ScheduleIn(_Model):
    workflow_id: uuid.UUID
    description: str = Field(default="", max_length=1_000)
    cron: str = Field(
        min_length=1,
        max_length=256,
        description="5 fields (minute hour day-of-month month day-of-week), or 6 with seconds "
        "first.",
        examples=["0 9 * * MON-FRI", "*/10 * * * * *"],
    )
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="IANA zone, e.g. Europe/Berlin."
    )
    enabled: bool = True
    input: dict[str, Any] = Field(default_factory=dict)
    catchup_window_seconds: int = Field(default=3_600, ge=1, le=MAX_CATCHUP_WINDOW_SECONDS)
    max_catchup_runs: int = Field(default=10, ge=0, le=MAX_CATCHUP_RUNS)
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    jitter_seconds: int = Field(default=0, ge=0, le=MAX_JITTER_SECONDS)
