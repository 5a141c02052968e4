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

WEBHOOK_RESULTS = (
    "accepted",
    "duplicate",
    "webhook_id_reused",
    "unknown_endpoint",
    "ip_not_allowed",
    "payload_too_large",
    "rate_limited",
    "missing_signature",
    "timestamp_out_of_window",
    "invalid_signature",
)
WEBHOOK_REQUESTS = Counter(
    "maestro_webhook_requests_total",
    "Inbound webhook deliveries by result: accepted, duplicate, or the rejection code.",
    ["result"],
)
for _result in WEBHOOK_RESULTS:
    WEBHOOK_REQUESTS.labels(result=_result)
WEBHOOK_VERIFY = Histogram(
    "maestro_webhook_verify_seconds",
    "Time to check a delivery's timestamp and signatures.",
    buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3),
)
AUDIT_DROPPED = Counter(
    "maestro_audit_dropped_total",
    "Background audit entries dropped because too many were waiting to be written.",
)


def render() -> tuple[bytes, str]:
    """The exposition text of every metric of this process and its content type."""
    return _generate(REGISTRY), CONTENT_TYPE_LATEST
