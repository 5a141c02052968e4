"""Prometheus metrics of this process, served at ``/metrics`` (API) and on ``--health-port``.

Label sets are bounded (never an id as a label)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate

SCHEDULE_TRIGGERS = Counter(
    "maestro_schedule_triggers_total",
    "Schedule ticks by result: fired, replayed, missed, skipped, buffered, duplicate.",
    ["result"],
)
# Every label present from the start, at 0 (the values of triggers.schedule_plan.TickResult).
SCHEDULE_TICK_RESULTS = ("fired", "replayed", "missed", "skipped", "buffered", "duplicate")
for _result in SCHEDULE_TICK_RESULTS:
    SCHEDULE_TRIGGERS.labels(result=_result)
SCHEDULE_SKEW = Histogram(
    "maestro_schedule_trigger_skew_seconds",
    "Enqueue time minus nominal time of each tick enqueued by the schedule runner.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
SCHEDULE_LAG = Gauge(
    "maestro_schedule_next_run_lag_seconds",
    "How overdue the most overdue enabled schedule is (0 when none is overdue).",
)


def render() -> tuple[bytes, str]:
    """The exposition text of every metric of this process and its content type."""
    return _generate(REGISTRY), CONTENT_TYPE_LATEST
