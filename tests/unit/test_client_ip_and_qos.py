"""Pure pieces of webhook intake: the client address behind proxies, allowlists, buckets."""

from __future__ import annotations

import ipaddress

import pytest

from maestro.api.client_ip import allowed, client_address, parse_networks
from maestro.qos import TokenBuckets, retry_after_header

PROXIES = parse_networks(("10.0.0.0/8", "fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "1.2.3.4, 198.51.100.1", "198.51.100.1"),  # left part is client-written
        ("10.0.0.2", "198.51.100.1, 10.0.0.9", "198.51.100.1"),  # two proxies in a row
        ("10.0.0.2", "10.0.0.7, 10.0.0.9", "10.0.0.7"),  # all trusted: the first
        ("10.0.0.2", "198.51.100.1, garbage", None),  # malformed hop: believe nothing
        ("10.0.0.2", "", "10.0.0.2"),
        ("fd00::1", "2001:db8::5", "2001:db8::5"),
        ("fd00::1", "[2001:db8::5]", "2001:db8::5"),
        ("::ffff:10.0.0.2", "198.51.100.1", "198.51.100.1"),  # v4-mapped peer
        ("not-an-ip", "198.51.100.1", None),
        (None, "198.51.100.1", None),
    ],
)
def test_client_address(peer: str | None, xff: str | None, expected: str | None) -> None:
    found = client_address(peer, xff, PROXIES)
    assert (str(found) if found else None) == expected


def test_allowlists() -> None:
    nets = parse_networks(("203.0.113.0/24", "2001:db8::/32"))
    assert allowed(ipaddress.ip_address("203.0.113.200"), nets)
    assert not allowed(ipaddress.ip_address("203.0.114.1"), nets)
    assert allowed(ipaddress.ip_address("2001:db8:1::1"), nets)
    assert not allowed(ipaddress.ip_address("2001:db9::1"), nets)
    assert not allowed(None, nets)
    assert allowed(None, ())  # empty admits everyone
    assert allowed(ipaddress.ip_address("192.0.2.1"), ())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    assert [buckets.take("k", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", 2.0, 3) == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("k", 2.0, 3) == 0.0
    assert buckets.take("other", 2.0, 3) == 0.0  # keys are independent
    clock.now += 100
    assert [buckets.take("k", 2.0, 3) for _ in range(4)][-1] > 0  # refills only to burst


def test_a_changed_limit_starts_a_full_bucket() -> None:
    buckets = TokenBuckets(Clock())
    assert buckets.take("k", 1.0, 1) == 0.0
    assert buckets.take("k", 1.0, 1) > 0
    assert buckets.take("k", 1.0, 2) == 0.0


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
