"""Circuit breakers: open after consecutive failures, fail fast, one probe when half-open."""

from __future__ import annotations

import pytest

from maestro.connectors.resilience import CircuitBreakers
from maestro.engine.retry import ErrorClass, StepError

KEY = ("acme", "host:api.example.com")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    breakers = CircuitBreakers(clock)
    for _ in range(2):
        breakers.before_call(KEY, 30)
        breakers.record_failure(KEY, failure_threshold=3)
    assert breakers.state(KEY, 30) == "closed"
    breakers.before_call(KEY, 30)
    breakers.record_failure(KEY, failure_threshold=3)
    assert breakers.state(KEY, 30) == "open"
    clock.now += 10
    with pytest.raises(StepError) as caught:
        breakers.before_call(KEY, 30)
    assert caught.value.error_class is ErrorClass.CIRCUIT_OPEN
    assert caught.value.retry_after == pytest.approx(20)


def test_a_success_resets_the_count() -> None:
    breakers = CircuitBreakers(Clock())
    for _ in range(5):
        breakers.before_call(KEY, 30)
        breakers.record_failure(KEY, failure_threshold=3)
        breakers.before_call(KEY, 30)
        breakers.record_success(KEY)
    assert breakers.state(KEY, 30) == "closed"


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    breakers = CircuitBreakers(clock)
    breakers.before_call(KEY, 30)
    breakers.record_failure(KEY, failure_threshold=1)
    clock.now += 30
    assert breakers.state(KEY, 30) == "half-open"
    breakers.before_call(KEY, 30)  # the probe
    with pytest.raises(StepError) as caught:
        breakers.before_call(KEY, 30)  # a second caller while the probe is out
    assert caught.value.error_class is ErrorClass.CIRCUIT_OPEN


def test_failed_probe_opens_again_and_successful_probe_closes() -> None:
    clock = Clock()
    breakers = CircuitBreakers(clock)
    breakers.before_call(KEY, 30)
    breakers.record_failure(KEY, failure_threshold=1)
    clock.now += 31
    breakers.before_call(KEY, 30)
    breakers.record_failure(KEY, failure_threshold=1)
    assert breakers.state(KEY, 30) == "open"
    clock.now += 31
    breakers.before_call(KEY, 30)
    breakers.record_success(KEY)
    assert breakers.state(KEY, 30) == "closed"
    breakers.before_call(KEY, 30)


def test_breakers_are_per_key() -> None:
    breakers = CircuitBreakers(Clock())
    breakers.before_call(KEY, 30)
    breakers.record_failure(KEY, failure_threshold=1)
    other = ("globex", KEY[1])
    breakers.before_call(other, 30)  # another tenant's calls to the same host still go out
    assert breakers.state(other, 30) == "closed"
