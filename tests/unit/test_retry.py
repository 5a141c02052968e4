"""Retry decisions: which errors retry, how long to wait, when to give up."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maestro.engine.retry import (
    RETRYABLE,
    ErrorClass,
    StepError,
    backoff_delay,
    next_retry_delay,
)
from maestro.model.workflow import RetryPolicy

TRANSIENT = {
    "timeout",
    "rate_limited",
    "provider_error",
    "network",
    "circuit_open",
    "budget_exhausted",
    "internal",
}
PERMANENT = {"auth", "validation", "not_found", "policy_denied", "cancelled", "rejected"}


def test_error_classes_are_the_documented_strings() -> None:
    assert {c.value for c in ErrorClass} == TRANSIENT | PERMANENT
    assert ErrorClass("rate_limited") is ErrorClass.RATE_LIMITED
    assert f"{ErrorClass.NOT_FOUND}" == "not_found"


def test_only_transient_classes_retry() -> None:
    assert {c.value for c in RETRYABLE} == TRANSIENT


@pytest.mark.parametrize("error_class", list(ErrorClass))
def test_step_error_is_retryable_exactly_for_transient_classes(error_class: ErrorClass) -> None:
    error = StepError(error_class, "boom")
    assert error.retryable is (error_class.value in TRANSIENT)


def test_step_error_carries_its_fields() -> None:
    error = StepError(ErrorClass.RATE_LIMITED, "slow down", retry_after=12.5)
    assert str(error) == "slow down"
    assert error.message == "slow down"
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 12.5
    assert StepError(ErrorClass.AUTH, "no").retry_after is None
    assert "rate_limited" in repr(error)


def test_step_error_accepts_the_class_as_a_string() -> None:
    assert StepError("network", "reset").error_class is ErrorClass.NETWORK  # type: ignore[arg-type]


def test_retry_after_in_the_past_means_now() -> None:
    assert StepError(ErrorClass.RATE_LIMITED, "x", retry_after=-3).retry_after == 0.0


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_retry_after_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        StepError(ErrorClass.RATE_LIMITED, "x", retry_after=bad)


def test_backoff_doubles_from_the_initial_delay_up_to_the_maximum() -> None:
    ceilings = [backoff_delay(n, 0.5, 5.0, rand=lambda: 1.0) for n in range(1, 7)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_is_fully_jittered() -> None:
    assert backoff_delay(3, 1.0, 60.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, 1.0, 60.0, rand=lambda: 0.25) == 1.0


def test_backoff_with_the_default_random_source_stays_in_range() -> None:
    delays = [backoff_delay(2, 1.0, 60.0) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 1


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert backoff_delay(10_000, 1.0, 30.0, rand=lambda: 1.0) == 30.0


def test_backoff_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, 1.0, 2.0)


def test_next_retry_delay_backs_off_while_attempts_remain() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_seconds=2.0, max_delay_seconds=60.0)
    error = StepError(ErrorClass.NETWORK, "reset")
    assert next_retry_delay(policy, 1, error, rand=lambda: 1.0) == 2.0
    assert next_retry_delay(policy, 2, error, rand=lambda: 1.0) == 4.0
    assert next_retry_delay(policy, 3, error, rand=lambda: 1.0) is None
    assert next_retry_delay(policy, 4, error, rand=lambda: 1.0) is None


def test_a_single_attempt_policy_never_retries() -> None:
    policy = RetryPolicy(max_attempts=1)
    assert next_retry_delay(policy, 1, StepError(ErrorClass.TIMEOUT, "slow")) is None


@pytest.mark.parametrize("error_class", sorted(PERMANENT))
def test_permanent_errors_are_not_retried(error_class: str) -> None:
    error = StepError(ErrorClass(error_class), "no", retry_after=1.0)
    assert next_retry_delay(RetryPolicy(max_attempts=100), 1, error) is None


def test_retry_after_is_honoured_even_beyond_the_maximum_delay() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay_seconds=1.0, max_delay_seconds=10.0)
    error = StepError(ErrorClass.RATE_LIMITED, "429", retry_after=120.0)
    assert next_retry_delay(policy, 1, error, rand=lambda: 1.0) == 120.0
    short = StepError(ErrorClass.RATE_LIMITED, "429", retry_after=0.5)
    assert next_retry_delay(policy, 3, short, rand=lambda: 1.0) == 4.0


@given(
    attempt=st.integers(min_value=1, max_value=2_000),
    initial=st.floats(min_value=1e-3, max_value=3600),
    maximum=st.floats(min_value=1e-3, max_value=86_400),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_backoff_stays_within_its_ceiling(
    attempt: int, initial: float, maximum: float, jitter: float
) -> None:
    ceiling = min(maximum, initial * 2.0 ** min(attempt - 1, 1000))
    delay = backoff_delay(attempt, initial, maximum, rand=lambda: jitter)
    assert 0.0 <= delay <= ceiling
    assert delay <= maximum


@given(
    attempt=st.integers(min_value=1, max_value=99),
    retry_after=st.none() | st.floats(min_value=0, max_value=1e6),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    error_class=st.sampled_from(sorted(RETRYABLE)),
)
def test_next_retry_delay_is_bounded_and_never_before_retry_after(
    attempt: int, retry_after: float | None, jitter: float, error_class: ErrorClass
) -> None:
    policy = RetryPolicy(max_attempts=100, initial_delay_seconds=0.5, max_delay_seconds=30.0)
    error = StepError(error_class, "x", retry_after=retry_after)
    delay = next_retry_delay(policy, attempt, error, rand=lambda: jitter)
    assert delay is not None
    assert delay >= (retry_after or 0.0)
    assert delay <= max(30.0, retry_after or 0.0)
