"""Webhook signature benchmark: the cost of `verify()` alone for a 4 KiB body.

Times each call with `time.perf_counter_ns` after a warm-up (so the numbers include the ~0.1 µs
of the timer itself), in this process, with no I/O: one key and one signature (the common
case, target p99 ≤ 50 µs), a rotation with two keys where only the last key matches the last of
two signatures (the worst case: two HMACs), a rejected signature, and a full header of ten
entries. A bare `hmac.digest` of the same message is the floor.

Usage: `python bench/webhook_verify.py [--quick]`.
"""

from __future__ import annotations

import argparse
import hmac
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime

from maestro.triggers.webhook_signature import (
    CandidateKey,
    VerificationError,
    new_secret,
    secret_key,
    sign,
    verify,
)

BODY_SIZE = 4096
TOLERANCE = 300
TARGET_P99_US = 50.0


def measure(call: Callable[[], object], calls: int, warmup: int) -> list[int]:
    """Nanoseconds of each of `calls` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        start = clock()
        call()
        samples[i] = clock() - start
    return samples


def rejecting(call: Callable[[], object]) -> Callable[[], object]:
    """`call`, which must raise VerificationError, as a call that returns."""

    def run() -> object:
        try:
            call()
        except VerificationError as err:
            return err
        raise AssertionError("expected a rejection")

    return run


def percentiles(samples: list[int]) -> tuple[float, float, float, float]:
    """p50, p95, p99 and max, in µs."""
    ordered = sorted(samples)
    last = len(ordered) - 1

    def at(p: float) -> float:
        return ordered[min(last, round(p / 100 * last))] / 1000

    return at(50), at(95), at(99), ordered[-1] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs for a smoke test")
    args = parser.parse_args()
    calls, warmup = (10_000, 1_000) if args.quick else (100_000, 10_000)

    current, previous = new_secret(), new_secret()
    body = os.urandom(BODY_SIZE)
    webhook_id = "msg_2Xk7tGQ9pLmN4vR8sW1yZ3aB"
    now = time.time()
    ts = int(now)
    one_key = [CandidateKey(secret_key(current), None, "current")]
    rotation = [
        CandidateKey(secret_key(current), None, "current"),
        CandidateKey(secret_key(previous), now + 86_400, "previous"),
    ]

    def headers(signature: str) -> dict[str, str]:
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature,
        }

    good = sign(current, webhook_id, ts, body)
    by_previous = sign(previous, webhook_id, ts, body)
    wrong = sign(new_secret(), webhook_id, ts, body)
    single = headers(good)
    rotated = headers(f"{wrong} {by_previous}")
    bad = headers(wrong)
    full = headers(" ".join([wrong] * 9 + [good]))
    msg = f"{webhook_id}.{ts}.".encode() + body
    raw_key = secret_key(current)

    def run(hdrs: dict[str, str], keys: list[CandidateKey]) -> Callable[[], object]:
        return lambda: verify(hdrs, body, keys, now=now, tolerance_seconds=TOLERANCE)

    cases: list[tuple[str, Callable[[], object], bool]] = [
        ("1 key, 1 signature (valid)", run(single, one_key), True),
        ("2 keys (rotation), 2 signatures, last key matches last", run(rotated, rotation), False),
        ("1 key, 1 signature (rejected: invalid)", rejecting(run(bad, one_key)), False),
        ("1 key, 10 signatures, last matches", run(full, one_key), False),
        (
            "floor: hmac.digest of the same message",
            lambda: hmac.digest(raw_key, msg, "sha256"),
            False,
        ),
    ]
    rows = []
    for name, call, targeted in cases:
        p50, p95, p99, worst = percentiles(measure(call, calls, warmup))
        target = f"p99 ≤ {TARGET_P99_US:.0f} µs" if targeted else "—"
        verdict = ("PASS" if p99 <= TARGET_P99_US else "FAIL") if targeted else ""
        rows.append(
            [name, f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{worst:.1f}", target, verdict]
        )

    print(
        f"\nWebhook verify() benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.machine()}; {BODY_SIZE} B body, {calls:,} timed calls per case\n"
    )
    print("| case | p50 µs | p95 µs | p99 µs | max µs | target | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
