"""What to do with a due schedule: which ticks to enqueue, replay, skip or count as missed.

Pure functions of the schedule's state and the time; the runner and reconcile apply the plan
in one transaction (see :mod:`maestro.triggers.schedule_store`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from maestro.triggers.cron import CronSchedule, cached_next_fire

# How many overdue ticks one plan walks through. A per-second schedule that was down for a
# day has 86,400 of them; walking them all would stall the runner, so past this many the
# outage is skipped to the present and the missed count says "at least".
MAX_TICKS_PER_PLAN = 20_000
# While a buffer_one tick waits for the previous run, how often the runner looks again.
BUFFER_RECHECK = timedelta(seconds=1)


class OverlapPolicy(StrEnum):
    SKIP = "skip"
    ALLOW = "allow"
    BUFFER_ONE = "buffer_one"


class TickResult(StrEnum):
    """The fate of one tick; the label of ``maestro_schedule_triggers_total``."""

    FIRED = "fired"  # enqueued on time, or released from the buffer
    REPLAYED = "replayed"  # an older tick inside the catch-up window, enqueued late
    MISSED = "missed"  # older than the catch-up window, or beyond maxCatchupRuns
    SKIPPED = "skipped"  # the previous run was still going (overlap policy)
    BUFFERED = "buffered"  # held until the previous run finishes (buffer_one)
    DUPLICATE = "duplicate"  # its execution existed already (idempotency key)


@dataclass(frozen=True, slots=True)
class ScheduleState:
    schedule: CronSchedule
    next_run_at: datetime | None
    catchup_window: timedelta
    max_catchup_runs: int
    overlap_policy: OverlapPolicy
    buffered_for: datetime | None
    previous_running: bool


@dataclass(slots=True)
class Plan:
    enqueue: list[tuple[datetime, TickResult]] = field(default_factory=list)
    skipped: list[datetime] = field(default_factory=list)
    buffered: list[datetime] = field(default_factory=list)
    missed: int = 0
    missed_first: datetime | None = None
    missed_last: datetime | None = None
    # True when the outage had more ticks than MAX_TICKS_PER_PLAN: ``missed`` is a lower bound.
    truncated: bool = False
    buffered_for: datetime | None = None
    next_run_at: datetime | None = None

    def _miss(self, tick: datetime) -> None:
        self.missed += 1
        if self.missed_first is None:
            self.missed_first = tick
        self.missed_last = tick


def plan_due(state: ScheduleState, now: datetime) -> Plan:
    """Decide the fate of every tick from ``state.next_run_at`` up to ``now``.

    Ticks older than the catch-up window are missed. Of the rest, the most recent fires and
    up to ``max_catchup_runs`` before it are replayed, oldest first; older ones are missed.
    Each tick to start is then subject to the overlap policy, against the previous run —
    which includes a run this plan just started.
    """
    plan = Plan(buffered_for=state.buffered_for)
    tick = state.next_run_at
    cutoff = now - state.catchup_window
    walked = 0
    due: collections.deque[datetime] = collections.deque()
    while tick is not None and tick <= now:
        walked += 1
        if walked > MAX_TICKS_PER_PLAN:
            plan.truncated = True
            while due:
                plan._miss(due.popleft())
            tick = cached_next_fire(state.schedule, now)
            break
        if tick < cutoff:
            plan._miss(tick)
        else:
            due.append(tick)
            if len(due) > state.max_catchup_runs + 1:
                plan._miss(due.popleft())
        tick = cached_next_fire(state.schedule, tick)
    plan.next_run_at = tick

    running = state.previous_running
    if plan.buffered_for is not None and not running:
        plan.enqueue.append((plan.buffered_for, TickResult.FIRED))
        plan.buffered_for = None
        running = True
    latest = due[-1] if due else None
    for tick in due:
        if running and state.overlap_policy is not OverlapPolicy.ALLOW:
            if state.overlap_policy is OverlapPolicy.BUFFER_ONE and plan.buffered_for is None:
                plan.buffered_for = tick
                plan.buffered.append(tick)
            else:
                plan.skipped.append(tick)
            continue
        plan.enqueue.append((tick, TickResult.FIRED if tick == latest else TickResult.REPLAYED))
        running = True
    return plan


def due_at(
    next_run_at: datetime | None, jitter: timedelta, buffered_for: datetime | None, now: datetime
) -> datetime | None:
    """When a runner should look at the schedule next."""
    due = None if next_run_at is None else next_run_at + jitter
    if buffered_for is not None:
        recheck = now + BUFFER_RECHECK
        due = recheck if due is None else min(due, recheck)
    return due
