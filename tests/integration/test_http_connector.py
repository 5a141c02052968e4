"""The http step handler against a real HTTP server (the FlakyHttp emulator) and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.connectors.http import make_handler
from maestro.connectors.registry import step_handlers
from maestro.connectors.resilience import CircuitBreakers
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver
from tests.conftest import WorkerHandle, wait_for_status
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.flaky_http import FlakyHttp, Scripted

TENANT = "acme"
TOKEN = "tok-very-secret-bearer-123"
API_KEY = "key-very-secret-apikey-456"
PASSWORD = "pw-very-secret-basic-789"
HMAC_SECRET = "hmac-very-secret-shared-000"
ALL_SECRETS = (TOKEN, API_KEY, PASSWORD, HMAC_SECRET)
FIXED_NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FlakyHttp, str]]:
    app = FlakyHttp(hang_seconds=5.0)
    async with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorResources]:
    monkeypatch.setenv("HTTP_TOKEN", TOKEN)
    monkeypatch.setenv("HTTP_API_KEY", API_KEY)
    monkeypatch.setenv("HTTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("HTTP_HMAC", HMAC_SECRET)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
    res = ConnectorResources(
        pool=pool,
        secrets=SecretResolver(),
        http=httpx.AsyncClient(),
        breakers=CircuitBreakers(clock=clock),
    )
    yield res
    await res.aclose()


async def add_connection(
    pool: asyncpg.Pool, name: str, config: dict[str, Any], kind: str = "http"
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (tenant_id, name, type, description, config) "
            "VALUES ($1, $2, $3, '', $4)",
            TENANT,
            name,
            kind,
            config,
        )


def context(attempt: int = 1, execution_id: uuid.UUID | None = None) -> StepContext:
    return StepContext(
        tenant=TENANT,
        execution_id=execution_id or uuid.UUID(int=42),
        workflow_id=uuid.UUID(int=7),
        step_id="call",
        step_type="http",
        attempt=attempt,
        correlation_id=None,
        state=None,
        now=lambda: FIXED_NOW,
    )


async def run(
    resources: ConnectorResources, config: dict[str, Any], *, timeout: float = 30.0, **ctx: Any
) -> Any:
    return await make_handler(resources, timeout_seconds=timeout)(context(**ctx), config)


async def fails(
    resources: ConnectorResources, config: dict[str, Any], *, timeout: float = 30.0
) -> StepError:
    with pytest.raises(StepError) as caught:
        await run(resources, config, timeout=timeout)
    text = f"{caught.value} {caught.value!r}"
    for secret in ALL_SECRETS:
        assert secret not in text
    return caught.value


def ref(name: str) -> dict[str, str]:
    return {"secretRef": f"env://{name}"}


def assert_no_secret(value: Any) -> None:
    text = json.dumps(value)
    for secret in ALL_SECRETS:
        assert secret not in text


# --- auth strategies, headers, idempotency ----------------------------------------------------


async def test_bearer_auth_and_idempotency_key(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    config = {
        "method": "POST",
        "url": f"{url}/echo/orders",
        "query": {"page": 2, "flag": True},
        "json": {"total": 1500},
        "auth": {"strategy": "bearer", "token": ref("HTTP_TOKEN")},
        "responseType": "json",
    }
    out = await run(resources, config)
    out2 = await run(resources, config, attempt=2)
    assert out["status"] == 200
    assert out["body"]["method"] == "POST"
    assert out["body"]["params"] == {"page": "2", "flag": "true"}
    assert json.loads(out["body"]["body"]) == {"total": 1500}
    seen = [r.headers for r in app.requests]
    assert seen[0]["authorization"] == f"Bearer {TOKEN}"
    assert seen[0]["content-type"] == "application/json"
    key = f"{uuid.UUID(int=42)}:call"
    assert seen[0]["idempotency-key"] == seen[1]["idempotency-key"] == key
    # The server echoed the token back: the output never shows it.
    assert_no_secret(out)
    assert_no_secret(out2)
    assert out["body"]["headers"]["authorization"] == "Bearer ***"


async def test_explicit_idempotency_key_wins(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    await run(resources, {"url": f"{url}/echo", "headers": {"idempotency-key": "mine"}})
    assert app.requests[0].headers["idempotency-key"] == "mine"


async def test_api_key_in_header_and_in_query(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    header = {
        "strategy": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "value": ref("HTTP_API_KEY"),
    }
    out = await run(resources, {"url": f"{url}/echo", "auth": header})
    assert app.requests[-1].headers["x-api-key"] == API_KEY
    assert_no_secret(out)
    query = {"strategy": "apiKey", "in": "query", "name": "api_key", "value": ref("HTTP_API_KEY")}
    out = await run(resources, {"url": f"{url}/echo", "query": {"q": "x"}, "auth": query})
    assert app.requests[-1].query == f"q=x&api_key={API_KEY}"
    assert "x-api-key" not in app.requests[-1].headers
    assert_no_secret(out)


async def test_basic_auth(fake: tuple[FlakyHttp, str], resources: ConnectorResources) -> None:
    app, url = fake
    auth = {"strategy": "basic", "username": "bob", "password": ref("HTTP_PASSWORD")}
    out = await run(resources, {"url": f"{url}/echo", "auth": auth})
    expected = base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    assert app.requests[0].headers["authorization"] == f"Basic {expected}"
    assert expected not in json.dumps(out)
    assert_no_secret(out)


async def test_hmac_auth_signs_what_is_sent(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    auth = {"strategy": "hmac", "secret": ref("HTTP_HMAC"), "header": "X-Sig"}
    out = await run(
        resources,
        {
            "method": "PUT",
            "url": f"{url}/echo/hooks",
            "query": {"a": "1"},
            "body": "héllo",
            "auth": auth,
        },
    )
    seen = app.requests[0]
    timestamp = str(int(FIXED_NOW.timestamp()))
    assert seen.headers["x-timestamp"] == timestamp
    message = f"{timestamp}.PUT./echo/hooks?a=1.héllo".encode()
    expected = hmac.new(HMAC_SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert seen.headers["x-sig"] == expected
    assert seen.text == "héllo"
    assert out["status"] == 200
    assert_no_secret(out)


async def test_connection_base_url_default_headers_and_auth_override(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(
        pool,
        "orders",
        {
            "baseUrl": f"{url}/echo/api/",
            "auth": {"strategy": "bearer", "token": ref("HTTP_TOKEN")},
            "defaultHeaders": {"X-Team": "ops", "Accept": "application/json"},
        },
    )
    out = await run(
        resources,
        {"connection": "orders", "url": "/orders/1", "headers": {"x-team": "billing"}},
    )
    seen = app.requests[-1]
    assert seen.path == "/echo/api/orders/1"
    assert seen.headers["x-team"] == "billing"  # step header over connection default
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert out["body"]["path"] == "/echo/api/orders/1"
    # the step's auth overrides the connection's
    override = {"strategy": "apiKey", "in": "header", "name": "X-Key", "value": ref("HTTP_API_KEY")}
    await run(resources, {"connection": "orders", "url": "orders/2", "auth": override})
    seen = app.requests[-1]
    assert seen.path == "/echo/api/orders/2"
    assert "authorization" not in seen.headers
    assert seen.headers["x-key"] == API_KEY


async def test_connection_credentials_never_go_to_another_host(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(
        pool,
        "orders",
        {"baseUrl": url, "auth": {"strategy": "bearer", "token": ref("HTTP_TOKEN")}},
    )
    err = await fails(resources, {"connection": "orders", "url": "http://elsewhere.test/x"})
    assert err.error_class is ErrorClass.VALIDATION
    assert app.requests == []
    # an absolute url on the connection's own origin is fine
    out = await run(resources, {"connection": "orders", "url": f"{url}/echo/abs"})
    assert out["body"]["path"] == "/echo/abs"


async def test_unknown_connection_and_wrong_type(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    err = await fails(resources, {"connection": "nope", "url": "/x"})
    assert err.error_class is ErrorClass.NOT_FOUND
    await add_connection(pool, "slacky", {"botToken": ref("HTTP_TOKEN")}, kind="slack")
    err = await fails(resources, {"connection": "slacky", "url": "/x"})
    assert err.error_class is ErrorClass.VALIDATION


async def test_invalid_config_is_validation(resources: ConnectorResources) -> None:
    err = await fails(resources, {"url": "https://x.test", "json": {}, "body": "both"})
    assert err.error_class is ErrorClass.VALIDATION
    err = await fails(resources, {"url": "https://x.test", "method": "FETCH"})
    assert err.error_class is ErrorClass.VALIDATION
    assert "actionConfig.method" in err.message


async def test_missing_secret_is_validation(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    auth = {"strategy": "bearer", "token": ref("HTTP_NOT_SET_ANYWHERE")}
    err = await fails(resources, {"url": f"{url}/echo", "auth": auth})
    assert err.error_class is ErrorClass.VALIDATION
    assert app.requests == []


# --- status handling --------------------------------------------------------------------------


async def test_expect_status(fake: tuple[FlakyHttp, str], resources: ConnectorResources) -> None:
    app, url = fake
    app.script("/gone", [Scripted(410, {"gone": True})])
    out = await run(resources, {"url": f"{url}/gone", "expectStatus": [200, 410]})
    assert out == {"status": 410, "headers": out["headers"], "body": {"gone": True}}
    app.script("/created", [Scripted(201, {"id": 1})])
    err = await fails(resources, {"url": f"{url}/created", "expectStatus": [200]})
    assert err.error_class is ErrorClass.VALIDATION
    assert "answered 201" in err.message


async def test_503_is_retryable_provider_error_with_retry_after(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    app.script(
        "/orders/1",
        [
            Scripted(503, "upstream down", {"Retry-After": "7"}),
            Scripted(200, {"id": 1}),
        ],
    )
    err = await fails(resources, {"method": "POST", "url": f"{url}/orders/1?x=1", "json": {}})
    assert err.error_class is ErrorClass.PROVIDER_ERROR
    assert err.retryable
    assert err.retry_after == 7.0
    assert err.message == f"POST {url}/orders/1 answered 503: upstream down"
    out = await run(resources, {"url": f"{url}/orders/1"})
    assert out["body"] == {"id": 1}


async def test_429_rate_limited_with_http_date(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    app.script(
        "/limited", [Scripted(429, headers={"Retry-After": "Wed, 04 Mar 2026 05:07:07 GMT"})]
    )
    err = await fails(resources, {"url": f"{url}/limited"})
    assert err.error_class is ErrorClass.RATE_LIMITED
    assert err.retryable
    assert err.retry_after == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (404, ErrorClass.NOT_FOUND),
        (400, ErrorClass.VALIDATION),
        (422, ErrorClass.VALIDATION),
        (401, ErrorClass.AUTH),
        (403, ErrorClass.AUTH),
        (408, ErrorClass.TIMEOUT),
        (500, ErrorClass.PROVIDER_ERROR),
    ],
)
async def test_status_classes(
    fake: tuple[FlakyHttp, str],
    resources: ConnectorResources,
    status: int,
    error_class: ErrorClass,
) -> None:
    app, url = fake
    app.script("/s", [Scripted(status, {"error": "x" * 500})])
    err = await fails(resources, {"url": f"{url}/s"})
    assert err.error_class is error_class
    assert err.retryable == (status in (408, 500))
    assert len(err.message) < 300  # the body is cut to 200 characters


async def test_connection_refused_is_network(resources: ConnectorResources) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port any more
    err = await fails(resources, {"url": f"http://127.0.0.1:{port}/x"})
    assert err.error_class is ErrorClass.NETWORK
    assert err.retryable


async def test_timeout(fake: tuple[FlakyHttp, str], resources: ConnectorResources) -> None:
    app, url = fake
    app.hang_seconds = 1.0  # longer than the client timeout; short so teardown is quick
    err = await fails(resources, {"url": f"{url}/hang"}, timeout=0.3)
    assert err.error_class is ErrorClass.TIMEOUT
    assert err.retryable


async def test_non_json_body_falls_back_to_text(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    app.script("/html", [Scripted(200, "<html>hi</html>", {"Content-Type": "text/html"})])
    out = await run(resources, {"url": f"{url}/html"})
    assert out["body"] == "<html>hi</html>"
    assert out["bodyType"] == "text"
    out = await run(resources, {"url": f"{url}/html", "responseType": "text"})
    assert out["body"] == "<html>hi</html>"
    assert "bodyType" not in out


async def test_response_headers_drop_credentials(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    app.script(
        "/h",
        [
            Scripted(
                200,
                {"ok": True},
                {"Set-Cookie": "sid=abc", "X-Auth-Token": "t", "X-Request-Id": "r1"},
            )
        ],
    )
    out = await run(resources, {"url": f"{url}/h"})
    assert out["headers"]["x-request-id"] == "r1"
    assert "set-cookie" not in out["headers"]
    assert "x-auth-token" not in out["headers"]


async def test_response_larger_than_1_mib(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    app.script("/big", [Scripted(200, "x" * (1024 * 1024 + 10))])
    err = await fails(resources, {"url": f"{url}/big", "responseType": "text"})
    assert err.error_class is ErrorClass.VALIDATION
    assert "larger than 1 MiB" in err.message


async def test_secret_echoed_in_error_is_scrubbed(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    app.script("/leaky", [Scripted(500, f"bad token {TOKEN}")])
    auth = {"strategy": "bearer", "token": ref("HTTP_TOKEN")}
    err = await fails(resources, {"url": f"{url}/leaky", "auth": auth})
    assert "bad token ***" in err.message
    app.script("/leaky-ok", [Scripted(200, {"you sent": TOKEN, TOKEN: "as a key"})])
    out = await run(resources, {"url": f"{url}/leaky-ok", "auth": auth})
    assert_no_secret(out)


# --- circuit breaker --------------------------------------------------------------------------


async def test_breaker_opens_half_opens_and_closes(
    fake: tuple[FlakyHttp, str],
    resources: ConnectorResources,
    pool: asyncpg.Pool,
    clock: FakeClock,
) -> None:
    app, url = fake
    await add_connection(
        pool,
        "fragile",
        {"baseUrl": url, "circuitBreaker": {"failureThreshold": 3, "resetTimeoutSeconds": 10}},
    )
    app.script("/f", [503, 503, 503, 503, 200])
    config = {"connection": "fragile", "url": "/f"}
    for _ in range(3):
        assert (await fails(resources, config)).error_class is ErrorClass.PROVIDER_ERROR
    assert app.count("/f") == 3
    # open: fails fast, nothing reaches the server
    err = await fails(resources, config)
    assert err.error_class is ErrorClass.CIRCUIT_OPEN
    assert err.retry_after == pytest.approx(10.0)
    assert app.count("/f") == 3
    # half-open after the reset time: one probe; it fails and the breaker opens again
    clock.now += 10
    assert (await fails(resources, config)).error_class is ErrorClass.PROVIDER_ERROR
    assert app.count("/f") == 4
    assert (await fails(resources, config)).error_class is ErrorClass.CIRCUIT_OPEN
    # the next probe succeeds and closes it
    clock.now += 10
    assert (await run(resources, config))["status"] == 200
    assert (await run(resources, config))["status"] == 200
    assert app.count("/f") == 6


async def test_breaker_per_host_without_connection(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    _, url = fake
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = {"url": f"http://127.0.0.1:{port}/x"}
    for _ in range(5):  # default threshold
        assert (await fails(resources, dead)).error_class is ErrorClass.NETWORK
    assert (await fails(resources, dead)).error_class is ErrorClass.CIRCUIT_OPEN
    # another host (port) is unaffected
    assert (await run(resources, {"url": f"{url}/echo"}))["status"] == 200


async def test_4xx_does_not_open_the_breaker(
    fake: tuple[FlakyHttp, str], resources: ConnectorResources
) -> None:
    app, url = fake
    for _ in range(7):
        assert (await fails(resources, {"url": f"{url}/missing"})).error_class is (
            ErrorClass.NOT_FOUND
        )
    assert app.count("/missing") == 7


# --- end to end through the engine ------------------------------------------------------------


async def start_execution(
    client: httpx.AsyncClient, definition: dict[str, Any], input: dict[str, Any] | None = None
) -> str:
    r = await client.post("/api/workflows", json=definition)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert (await client.post(f"/api/workflows/{wid}/publish")).status_code == 200
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": input or {}})
    assert r.status_code == 202, r.text
    return str(r.json()["executionId"])


async def steps_of(client: httpx.AsyncClient, eid: str) -> dict[str, dict[str, Any]]:
    body = (await client.get(f"/api/executions/{eid}")).json()
    return {s["stepId"]: s for s in body["steps"]}


async def test_end_to_end_retries_then_succeeds(
    fake: tuple[FlakyHttp, str],
    resources: ConnectorResources,
    client: httpx.AsyncClient,
    workers: WorkerHandle,
    db_dsn: str,
) -> None:
    app, url = fake
    app.script("/orders/7", [503, 503, Scripted(200, {"id": 7, "token": TOKEN})])
    await workers.start(handlers=step_handlers(resources))
    step = {
        "id": "fetch",
        "type": "http",
        "actionConfig": {
            "url": url + "/orders/{{ input.orderId }}",
            "auth": {"strategy": "bearer", "token": ref("HTTP_TOKEN")},
        },
        "retry": {"maxAttempts": 4, "initialDelaySeconds": 0.05, "maxDelaySeconds": 0.1},
    }
    eid = await start_execution(client, {"name": "e2e-http", "steps": [step]}, {"orderId": 7})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    fetched = (await steps_of(client, eid))["fetch"]
    assert fetched["attempts"] == 3
    assert fetched["output"]["status"] == 200
    assert fetched["output"]["body"]["id"] == 7
    assert_no_secret(fetched)
    keys = {r.headers["idempotency-key"] for r in app.requests}
    assert keys == {f"{eid}:fetch"}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in app.requests)


async def test_end_to_end_not_found_is_not_retried(
    fake: tuple[FlakyHttp, str],
    resources: ConnectorResources,
    client: httpx.AsyncClient,
    workers: WorkerHandle,
    db_dsn: str,
) -> None:
    app, url = fake
    await workers.start(handlers=step_handlers(resources))
    step = {
        "id": "fetch",
        "type": "http",
        "actionConfig": {"url": f"{url}/missing"},
        "retry": {"maxAttempts": 4, "initialDelaySeconds": 0.05, "maxDelaySeconds": 0.1},
    }
    eid = await start_execution(client, {"name": "e2e-http-404", "steps": [step]})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "failed"
    fetched = (await steps_of(client, eid))["fetch"]
    assert fetched["attempts"] == 1
    assert app.count("/missing") == 1
    assert fetched["error"]["class"] == "not_found"
