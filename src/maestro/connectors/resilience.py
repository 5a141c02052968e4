"""Circuit breakers, per (tenant, connection or host), in each worker process.

Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls fail fast
with ``circuit_open`` and a ``retry_after`` of the time left, so the step is rescheduled for
when the breaker may close (and the attempt is not counted). After ``reset_timeout`` one probe
is let through (half-open): success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from maestro.engine.retry import ErrorClass, StepError


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class CircuitBreakers:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[tuple[str, str], _Breaker] = {}

    def state(self, key: tuple[str, str], reset_timeout: float) -> str:
        breaker = self._breakers.get(key)
        if breaker is None or breaker.opened_at is None:
            return "closed"
        if self._clock() - breaker.opened_at >= reset_timeout:
            return "half-open"
        return "open"

    def before_call(self, key: tuple[str, str], reset_timeout: float) -> None:
        """Raise ``circuit_open`` unless a call may go through now."""
        breaker = self._breakers.setdefault(key, _Breaker())
        if breaker.opened_at is None:
            return
        waited = self._clock() - breaker.opened_at
        if waited < reset_timeout:
            raise StepError(
                ErrorClass.CIRCUIT_OPEN,
                f"circuit open for {key[1]} after {breaker.failures} consecutive failures; "
                f"next probe in {reset_timeout - waited:.1f}s",
                retry_after=reset_timeout - waited,
            )
        if breaker.probing:  # one probe at a time while half-open
            raise StepError(
                ErrorClass.CIRCUIT_OPEN,
                f"circuit half-open for {key[1]}; a probe request is under way",
                retry_after=min(1.0, reset_timeout),
            )
        breaker.probing = True

    def record_success(self, key: tuple[str, str]) -> None:
        self._breakers[key] = _Breaker()

    def record_failure(self, key: tuple[str, str], failure_threshold: int) -> None:
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.failures += 1
        if breaker.probing or breaker.failures >= failure_threshold:
            breaker.opened_at = self._clock()
        breaker.probing = False
