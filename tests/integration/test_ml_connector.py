"""The ml step handler and check() against a real HTTP KServe v2 emulator and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.connectors.ml import check, make_handler
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.kserve import KServeFake

TENANT = "acme"
TOKEN = "tok-very-secret-model-token-123"
FIXED_NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
EXECUTION = uuid.UUID(int=42)
KEY = f"{EXECUTION}:predict"
FEATURES = {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [0.5, -0.25, 1.0]}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[KServeFake, str]]:
    app = KServeFake()
    async with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorResources]:
    monkeypatch.setenv("ML_TOKEN", TOKEN)
    monkeypatch.setenv("ML_WRONG_TOKEN", TOKEN + "-wrong")
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


async def add_connection(pool: asyncpg.Pool, name: str, config: dict[str, Any]) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (tenant_id, name, type, description, config) "
            "VALUES ($1, $2, 'ml', '', $3)",
            TENANT,
            name,
            config,
        )


def context(attempt: int = 1) -> StepContext:
    return StepContext(
        tenant=TENANT,
        execution_id=EXECUTION,
        workflow_id=uuid.UUID(int=7),
        step_id="predict",
        step_type="ml",
        attempt=attempt,
        correlation_id=None,
        state=None,
        now=lambda: FIXED_NOW,
    )


async def run(resources: ConnectorResources, config: dict[str, Any]) -> Any:
    return await make_handler(resources, timeout_seconds=5.0)(context(), config)


async def fails(resources: ConnectorResources, config: dict[str, Any]) -> StepError:
    with pytest.raises(StepError) as caught:
        await run(resources, config)
    assert TOKEN not in f"{caught.value} {caught.value!r}"
    return caught.value


def infer(model: str = "classifier", **extra: Any) -> dict[str, Any]:
    return {"connection": "models", "model": model, "inputs": [FEATURES], **extra}


async def test_inference_with_version_headers_and_hashes(
    fake: tuple[KServeFake, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(pool, "models", {"baseUrl": url})
    output = await run(resources, infer(version="1", parameters={"trace": True}))

    [request] = app.requests
    assert request.method == "POST"
    assert request.path == "/v2/models/classifier/versions/1/infer"
    assert request.headers["x-model-name"] == "classifier"
    assert request.headers["x-model-version"] == "1"
    assert request.headers["idempotency-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "id": KEY,
        "inputs": [FEATURES],
        "parameters": {"trace": True},
    }
    sent = json.loads(request.response_body)
    p = sent["outputs"][1]["data"][0]
    assert p == round(1 / (1 + math.exp(-1.25)), 6)  # version 1: sigmoid(sum)
    assert output == {
        "model": "classifier",
        "version": "1",
        "outputs": sent["outputs"],
        "confidence": max(p, 1 - p),  # the largest probability
        "requestSha256": hashlib.sha256(request.body).hexdigest(),
        "responseSha256": hashlib.sha256(request.response_body).hexdigest(),
    }
    assert sent["id"] == KEY


async def test_inference_without_version_and_requested_outputs(
    fake: tuple[KServeFake, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(pool, "models", {"baseUrl": url + "/"})
    output = await run(resources, infer(outputs=["probabilities"]))
    [request] = app.requests
    assert request.path == "/v2/models/classifier/infer"
    assert "x-model-version" not in request.headers
    assert request.json()["outputs"] == [{"name": "probabilities"}]
    assert output["version"] == "2"  # the server's answer names the version it used
    assert [o["name"] for o in output["outputs"]] == ["probabilities"]
    assert output["confidence"] == max(output["outputs"][0]["data"])


async def test_confidence_from_explicit_output_and_from_path(
    fake: tuple[KServeFake, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    _, url = fake
    await add_connection(pool, "models", {"baseUrl": url})
    explicit = await run(resources, infer("scorer"))
    assert explicit["confidence"] == 0.875
    by_path = await run(resources, infer("classifier", confidencePath="outputs.1.data.1"))
    assert by_path["confidence"] == by_path["outputs"][1]["data"][1]
    by_name = await run(resources, infer("scorer", confidencePath="outputs.score.data.0"))
    assert by_name["confidence"] == 1.25
    error = await fails(resources, infer("scorer", confidencePath="outputs.7.data.0"))
    assert error.error_class is ErrorClass.VALIDATION
    assert "confidencePath" in error.message


async def test_cold_start_is_waited_out_within_one_attempt(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app = KServeFake(cold_requests=3)
    async with serve_asgi(app) as url:
        await add_connection(pool, "models", {"baseUrl": url})
        started = time.monotonic()
        output = await run(resources, infer())
        elapsed = time.monotonic() - started
    statuses = [r.status for r in app.infer_requests()]
    assert statuses == [503, 503, 503, 200]
    assert {r.headers["idempotency-key"] for r in app.infer_requests()} == {KEY}
    assert output["confidence"] is not None
    assert 0.6 <= elapsed < 3.0  # backoff 0.1 + 0.2 + 0.4 s


async def test_cold_start_honours_retry_after(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app = KServeFake(cold_requests=2, cold_retry_after="0")
    async with serve_asgi(app) as url:
        await add_connection(pool, "models", {"baseUrl": url})
        started = time.monotonic()
        await run(resources, infer())
        elapsed = time.monotonic() - started
    assert [r.status for r in app.infer_requests()] == [503, 503, 200]
    assert elapsed < 0.25  # Retry-After: 0 replaced the 0.1 + 0.2 s backoff


async def test_cold_start_exceeding_the_timeout(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app = KServeFake(cold_requests=1000)
    async with serve_asgi(app) as url:
        await add_connection(pool, "models", {"baseUrl": url, "coldStartTimeoutSeconds": 0.25})
        started = time.monotonic()
        error = await fails(resources, infer())
        elapsed = time.monotonic() - started
    assert error.error_class is ErrorClass.PROVIDER_ERROR
    assert error.retryable
    assert "model 'classifier' did not become ready within 0.25 s" in error.message
    assert "503" in error.message
    assert 0.25 <= elapsed < 1.5
    assert 2 <= len(app.infer_requests()) <= 6


async def test_connection_refused_counts_as_cold(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await add_connection(
        pool, "models", {"baseUrl": f"http://127.0.0.1:{port}", "coldStartTimeoutSeconds": 0.3}
    )
    error = await fails(resources, infer())
    assert error.error_class is ErrorClass.PROVIDER_ERROR
    assert "did not become ready within 0.3 s" in error.message
    assert "connection failed" in error.message


async def test_not_found_and_validation(
    fake: tuple[KServeFake, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(pool, "models", {"baseUrl": url})
    missing = await fails(resources, infer("nope"))
    assert missing.error_class is ErrorClass.NOT_FOUND
    assert "Model nope not found" in missing.message
    no_version = await fails(resources, infer(version="9"))
    assert no_version.error_class is ErrorClass.NOT_FOUND
    wrong_input = {"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}
    bad = await fails(
        resources, {"connection": "models", "model": "classifier", "inputs": [wrong_input]}
    )
    assert bad.error_class is ErrorClass.VALIDATION
    assert bad.message.endswith(
        "answered 400: unexpected inference input 'pixels' for model classifier"
    )
    assert not bad.retryable
    # Checked before any request: a shape that does not match the data.
    count = len(app.requests)
    local = await fails(
        resources,
        infer(inputs=[{"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1]}]),
    )
    assert local.error_class is ErrorClass.VALIDATION
    assert "needs 4 elements, data has 1" in local.message
    assert len(app.requests) == count
    # A payload on a kserve connection is refused.
    wrong_protocol = await fails(
        resources, {"connection": "models", "model": "classifier", "payload": {"x": 1}}
    )
    assert wrong_protocol.error_class is ErrorClass.VALIDATION


async def test_bearer_auth(resources: ConnectorResources, pool: asyncpg.Pool) -> None:
    app = KServeFake(token=TOKEN)
    async with serve_asgi(app) as url:
        await add_connection(
            pool,
            "models",
            {
                "baseUrl": url,
                "auth": {"strategy": "bearer", "token": {"secretRef": "env://ML_TOKEN"}},
            },
        )
        await add_connection(
            pool,
            "wrong",
            {
                "baseUrl": url,
                "auth": {"strategy": "bearer", "token": {"secretRef": "env://ML_WRONG_TOKEN"}},
            },
        )
        output = await run(resources, infer())
        assert app.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in json.dumps(output)
        refused = await fails(resources, {**infer(), "connection": "wrong"})
        assert refused.error_class is ErrorClass.AUTH
        assert TOKEN not in refused.message
        assert (
            await check(
                resources,
                {
                    "baseUrl": url,
                    "auth": {"strategy": "bearer", "token": {"secretRef": "env://ML_TOKEN"}},
                },
            )
        )["ready"] is True
        with pytest.raises(StepError) as caught:
            await check(resources, {"baseUrl": url})
        assert caught.value.error_class is ErrorClass.AUTH


async def test_secrets_echoed_by_the_server_are_scrubbed(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    # A json server that echoes the request headers back (some gateways do).
    app = KServeFake()
    async with serve_asgi(app) as url:
        await add_connection(
            pool,
            "models",
            {
                "baseUrl": url,
                "protocol": "json",
                "auth": {
                    "strategy": "apiKey",
                    "in": "header",
                    "name": "X-Api-Key",
                    "value": {"secretRef": "env://ML_TOKEN"},
                },
            },
        )
        config = {"connection": "models", "model": "m", "path": "/predict"}
        output = await run(resources, {**config, "payload": {"instances": [[1]], "echo": TOKEN}})
        error = await fails(resources, {**config, "payload": {"instances": [TOKEN]}})
    assert app.requests[-1].headers["x-api-key"] == TOKEN
    assert output["body"]["echo"] == "***"
    assert TOKEN not in json.dumps(output)
    assert error.error_class is ErrorClass.VALIDATION  # 422, echoing the bad instance
    assert "***" in error.message


async def test_json_protocol(
    fake: tuple[KServeFake, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(pool, "models", {"baseUrl": url, "protocol": "json"})
    config = {
        "connection": "models",
        "model": "sentiment",
        "version": "3",
        "path": "/predict",
        "payload": {"instances": [[1, 2], [-5, 1]]},
        "confidencePath": "predictions.1.score",
    }
    output = await run(resources, config)
    [request] = app.requests
    assert request.path == "/predict"
    assert request.json() == {"instances": [[1, 2], [-5, 1]]}
    assert request.headers["x-model-name"] == "sentiment"
    assert request.headers["x-model-version"] == "3"
    assert request.headers["idempotency-key"] == KEY
    body = json.loads(request.response_body)
    assert output == {
        "model": "sentiment",
        "version": "3",
        "body": body,
        "confidence": body["predictions"][1]["score"],
        "requestSha256": hashlib.sha256(request.body).hexdigest(),
        "responseSha256": hashlib.sha256(request.response_body).hexdigest(),
    }
    no_path = await run(resources, {**config, "confidencePath": None, "path": "/predict"})
    assert no_path["confidence"] is None  # no top-level confidence, no outputs list
    invalid = await fails(resources, {**config, "payload": {"instances": []}})
    assert invalid.error_class is ErrorClass.VALIDATION  # 422
    assert "'instances' must be a non-empty list" in invalid.message
    tensors = await fails(resources, {**config, "payload": None, "inputs": [FEATURES]})
    assert tensors.error_class is ErrorClass.VALIDATION


async def test_check(fake: tuple[KServeFake, str], resources: ConnectorResources) -> None:
    app, url = fake
    assert await check(resources, {"baseUrl": url}) == {
        "protocol": "kserve-v2",
        "ready": True,
        "server": "fake-kserve",
        "version": "0.11.0",
    }
    assert [r.path for r in app.requests] == ["/v2/health/ready", "/v2"]
    assert await check(resources, {"baseUrl": url, "protocol": "json"}) == {
        "protocol": "json",
        "reachable": True,
        "status": 200,
    }
    app.start_cold(requests=1)
    with pytest.raises(StepError) as caught:
        await check(resources, {"baseUrl": url})
    assert caught.value.error_class is ErrorClass.PROVIDER_ERROR
    with pytest.raises(StepError) as caught:
        await check(resources, {"baseUrl": url + "/nowhere", "protocol": "json"})
    assert caught.value.error_class is ErrorClass.NOT_FOUND
    with pytest.raises(StepError) as caught:
        await check(resources, {"baseUrl": url, "auth": {"strategy": "bearer", "token": "plain"}})
    assert caught.value.error_class is ErrorClass.VALIDATION


async def test_unknown_connection_and_wrong_type(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    missing = await fails(resources, infer())
    assert missing.error_class is ErrorClass.NOT_FOUND
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (tenant_id, name, type, description, config) "
            "VALUES ($1, 'models', 'http', '', $2)",
            TENANT,
            {"baseUrl": "http://127.0.0.1:1"},
        )
    wrong = await fails(resources, infer())
    assert wrong.error_class is ErrorClass.VALIDATION
