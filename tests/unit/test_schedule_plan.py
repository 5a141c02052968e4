"""The pure planning of due schedules: catch-up window, maxCatchupRuns, overlap policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from maestro.observability.metrics import SCHEDULE_TICK_RESULTS
from maestro.triggers.cron import next_fire, parse_schedule
from maestro.triggers.schedule_plan import (
    BUFFER_RECHECK,
    MAX_TICKS_PER_PLAN,
    OverlapPolicy,
    ScheduleState,
    TickResult,
    due_at,
    plan_due,
)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EVERY_MINUTE = parse_schedule("* * * * *", "UTC")


def state(**changes: object) -> ScheduleState:
    base: dict[str, object] = {
        "schedule": EVERY_MINUTE,
        "next_run_at": T0,
        "catchup_window": timedelta(hours=1),
        "max_catchup_runs": 10,
        "overlap_policy": OverlapPolicy.ALLOW,
        "buffered_for": None,
        "previous_running": False,
    }
    base.update(changes)
    return ScheduleState(**base)  # type: ignore[arg-type]


def minutes(*ms: int) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in ms]


def test_an_on_time_tick_fires_and_the_next_one_is_computed() -> None:
    plan = plan_due(state(), T0 + timedelta(milliseconds=5))
    assert plan.enqueue == [(T0, TickResult.FIRED)]
    assert plan.next_run_at == T0 + timedelta(minutes=1)
    assert plan.missed == 0


def test_nothing_is_due_before_the_tick() -> None:
    plan = plan_due(state(), T0 - timedelta(milliseconds=1))
    assert plan.enqueue == []
    assert plan.next_run_at == T0


def test_ticks_older_than_the_window_are_missed_and_the_rest_replayed() -> None:
    now = T0 + timedelta(minutes=10, seconds=30)
    plan = plan_due(state(catchup_window=timedelta(minutes=5)), now)
    assert [t for t, _ in plan.enqueue] == minutes(6, 7, 8, 9, 10)
    assert [r for _, r in plan.enqueue] == [TickResult.REPLAYED] * 4 + [TickResult.FIRED]
    assert plan.missed == 6
    assert (plan.missed_first, plan.missed_last) == (T0, T0 + timedelta(minutes=5))
    assert plan.next_run_at == T0 + timedelta(minutes=11)


def test_a_tick_exactly_at_the_window_edge_is_replayed() -> None:
    plan = plan_due(state(catchup_window=timedelta(minutes=5)), T0 + timedelta(minutes=5))
    assert plan.enqueue[0][0] == T0


def test_max_catchup_runs_keeps_the_most_recent_ticks() -> None:
    plan = plan_due(state(max_catchup_runs=2), T0 + timedelta(minutes=30, seconds=1))
    assert [t for t, _ in plan.enqueue] == minutes(28, 29, 30)
    assert plan.missed == 28


def test_zero_catchup_runs_fires_only_the_latest_tick() -> None:
    plan = plan_due(state(max_catchup_runs=0), T0 + timedelta(minutes=3, seconds=1))
    assert plan.enqueue == [(T0 + timedelta(minutes=3), TickResult.FIRED)]
    assert plan.missed == 3


def test_skip_starts_nothing_while_the_previous_run_goes() -> None:
    plan = plan_due(state(overlap_policy=OverlapPolicy.SKIP, previous_running=True), T0)
    assert plan.enqueue == []
    assert plan.skipped == [T0]


def test_skip_applies_to_catch_up_ticks_too() -> None:
    plan = plan_due(state(overlap_policy=OverlapPolicy.SKIP), T0 + timedelta(minutes=2))
    assert plan.enqueue == [(T0, TickResult.REPLAYED)]
    assert plan.skipped == minutes(1, 2)


def test_buffer_one_holds_the_first_tick_and_skips_the_others() -> None:
    plan = plan_due(
        state(overlap_policy=OverlapPolicy.BUFFER_ONE, previous_running=True),
        T0 + timedelta(minutes=2),
    )
    assert plan.enqueue == []
    assert plan.buffered == [T0]
    assert plan.buffered_for == T0
    assert plan.skipped == minutes(1, 2)


def test_a_buffered_tick_starts_once_the_previous_run_ended() -> None:
    plan = plan_due(
        state(
            overlap_policy=OverlapPolicy.BUFFER_ONE,
            buffered_for=T0 - timedelta(minutes=1),
            next_run_at=T0 + timedelta(minutes=1),
        ),
        T0 + timedelta(seconds=10),
    )
    assert plan.enqueue == [(T0 - timedelta(minutes=1), TickResult.FIRED)]
    assert plan.buffered_for is None
    assert plan.next_run_at == T0 + timedelta(minutes=1)


def test_a_buffered_tick_waits_while_the_previous_run_goes() -> None:
    plan = plan_due(
        state(
            overlap_policy=OverlapPolicy.BUFFER_ONE,
            buffered_for=T0,
            previous_running=True,
            next_run_at=T0 + timedelta(minutes=1),
        ),
        T0 + timedelta(seconds=10),
    )
    assert plan.enqueue == []
    assert plan.buffered_for == T0


def test_due_at_adds_jitter_and_rechecks_a_buffer_soon() -> None:
    now = T0 - timedelta(seconds=30)
    assert due_at(T0, timedelta(seconds=7), None, now) == T0 + timedelta(seconds=7)
    assert due_at(T0, timedelta(), T0, now) == now + BUFFER_RECHECK
    assert due_at(None, timedelta(), None, now) is None


def test_an_enormous_outage_is_skipped_to_now_with_a_lower_bound_of_missed_ticks() -> None:
    every_second = parse_schedule("* * * * * *", "UTC")
    now = T0 + timedelta(days=1)
    plan = plan_due(state(schedule=every_second), now)
    assert plan.truncated
    assert plan.enqueue == []
    assert plan.missed == MAX_TICKS_PER_PLAN
    assert plan.next_run_at == now + timedelta(seconds=1)


def test_the_metric_labels_are_the_tick_results() -> None:
    assert set(SCHEDULE_TICK_RESULTS) == {r.value for r in TickResult}


@settings(max_examples=200, deadline=None)
@given(
    down_minutes=st.integers(min_value=0, max_value=180),
    window_minutes=st.integers(min_value=1, max_value=240),
    max_runs=st.integers(min_value=0, max_value=20),
    policy=st.sampled_from(list(OverlapPolicy)),
    running=st.booleans(),
)
def test_every_due_tick_is_accounted_for_exactly_once(
    down_minutes: int, window_minutes: int, max_runs: int, policy: OverlapPolicy, running: bool
) -> None:
    now = T0 + timedelta(minutes=down_minutes, seconds=30)
    plan = plan_due(
        state(
            catchup_window=timedelta(minutes=window_minutes),
            max_catchup_runs=max_runs,
            overlap_policy=policy,
            previous_running=running,
        ),
        now,
    )
    due = minutes(*range(down_minutes + 1))
    started = [t for t, _ in plan.enqueue]
    accounted = sorted(started + plan.skipped + plan.buffered)
    assert plan.missed + len(accounted) == len(due)
    assert len(set(accounted)) == len(accounted)
    assert set(accounted) <= set(due)
    assert started == sorted(started)
    assert all(now - t <= timedelta(minutes=window_minutes) for t in started)
    assert len(started) <= max_runs + 1
    assert plan.next_run_at == next_fire(EVERY_MINUTE, now)
    if policy is OverlapPolicy.ALLOW and accounted:
        assert started == accounted
