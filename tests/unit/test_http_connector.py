"""The http connector's pure parts: HMAC signing, Retry-After parsing, describe()."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from maestro.connectors.http import describe, parse_retry_after, sign_hmac

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_sign_hmac_known_vector() -> None:
    body = b'{"id":1}'
    expected = hmac.new(
        b"s3cret-key", b'1700000000.POST./orders?x=1.{"id":1}', hashlib.sha256
    ).hexdigest()
    assert sign_hmac("s3cret-key", "1700000000", "POST", "/orders?x=1", body) == expected
    # fixed vector, computed once with the hmac module
    assert (
        sign_hmac("key", "1", "GET", "/", b"")
        == hmac.new(b"key", b"1.GET./.", hashlib.sha256).hexdigest()
    )


def test_sign_hmac_non_utf8_body_is_replaced() -> None:
    expected = hmac.new(b"k", "1.PUT./p.\ufffd".encode(), hashlib.sha256).hexdigest()
    assert sign_hmac("k", "1", "PUT", "/p", b"\xff") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("soon", None),
        ("-5", None),
        ("nan", None),
        ("99999999", 24 * 3600.0),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, NOW) == pytest.approx(90.0)
    assert parse_retry_after("Fri, 02 Jan 2026 03:05:05 GMT", NOW) == pytest.approx(60.0)
    earlier = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0


def test_describe_lists_names_not_secrets() -> None:
    config = {
        "method": "POST",
        "url": "https://user:pw-in-url@api.example.com/orders?apikey=q-secret",
        "headers": {"X-Trace": "abc-trace-value"},
        "query": {"page": 2},
        "json": {"total": 5},
        "auth": {"strategy": "bearer", "token": {"secretRef": "env://ORDERS_TOKEN"}},
    }
    described = describe(config)
    text = json.dumps(described)
    for leaked in ("pw-in-url", "q-secret", "abc-trace-value", "ORDERS_TOKEN", "secretRef"):
        assert leaked not in text
    assert described["method"] == "POST"
    assert described["url"] == "https://api.example.com/orders"
    assert described["headerNames"] == ["Authorization", "Idempotency-Key", "X-Trace"]
    assert described["query"] == {"page": 2}
    assert described["body"] == "json"
    assert described["auth"] == "bearer"


def test_describe_connection_path_and_query_api_key() -> None:
    described = describe(
        {
            "connection": "orders",
            "url": "/orders/7",
            "auth": {
                "strategy": "apiKey",
                "in": "query",
                "name": "key",
                "value": {"secretRef": "env://K"},
            },
        }
    )
    assert described["url"] == "/orders/7 under connection 'orders'"
    assert described["query"] == {"key": "***"}
    assert described["body"] is None
    assert described["headerNames"] == ["Idempotency-Key"]


def test_describe_invalid_config() -> None:
    with pytest.raises(ValueError, match=r"^actionConfig: .*absolute"):
        describe({"url": "relative/without/connection"})
    with pytest.raises(ValueError, match=r"actionConfig\.method"):
        describe({"url": "https://x.test", "method": "FETCH"})
