"""Error classes and retry delays for failed steps (pure functions)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol


class ErrorClass(StrEnum):
    """Why a step failed; decides whether it is retried."""

    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    AUTH = "auth"
    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    PROVIDER_ERROR = "provider_error"
    NETWORK = "network"
    CIRCUIT_OPEN = "circuit_open"
    POLICY_DENIED = "policy_denied"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    INTERNAL = "internal"


RETRYABLE: frozenset[ErrorClass] = frozenset(
    {
        ErrorClass.TIMEOUT,
        ErrorClass.RATE_LIMITED,
        ErrorClass.PROVIDER_ERROR,
        ErrorClass.NETWORK,
        ErrorClass.CIRCUIT_OPEN,
        ErrorClass.BUDGET_EXHAUSTED,
        ErrorClass.INTERNAL,
    }
)


class StepError(Exception):
    """Raised by step handlers; ``retry_after`` is a provider's Retry-After in seconds."""

    def __init__(
        self, error_class: ErrorClass, message: str, *, retry_after: float | None = None
    ) -> None:
        if retry_after is not None:
            if not math.isfinite(retry_after):
                raise ValueError(f"retry_after must be a finite number, got {retry_after}")
            # A Retry-After date in the past means "now", not an error.
            retry_after = max(0.0, retry_after)
        super().__init__(message)
        self.error_class = ErrorClass(error_class)
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.error_class in RETRYABLE

    def __repr__(self) -> str:
        return (
            f"StepError({self.error_class.value!r}, {self.message!r}, "
            f"retry_after={self.retry_after!r})"
        )


class RetrySettings(Protocol):
    """What retry needs from a policy (RetryPolicy satisfies it)."""

    @property
    def max_attempts(self) -> int: ...
    @property
    def initial_delay_seconds(self) -> float: ...
    @property
    def max_delay_seconds(self) -> float: ...


def backoff_delay(
    attempt: int,
    initial: float,
    maximum: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter after failed attempt number ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # Capping the exponent keeps huge attempt numbers from overflowing a float;
    # 2**1000 already exceeds any sensible maximum.
    ceiling = min(maximum, initial * 2.0 ** min(attempt - 1, 1000))
    return rand() * ceiling


def next_retry_delay(
    policy: RetrySettings,
    attempt: int,
    error: StepError,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before the next attempt, or None when the step must not be retried.

    ``attempt`` is the number of the attempt that just failed (1 for the first run).
    """
    if not error.retryable or attempt >= policy.max_attempts:
        return None
    delay = backoff_delay(attempt, policy.initial_delay_seconds, policy.max_delay_seconds, rand)
    if error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return delay
