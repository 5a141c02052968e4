"""Connector steps through the whole engine: provenance hashes, secrets scrubbed by the worker,
circuit-open deferral that uses no attempt, database steps, and simulate's call description."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.connectors.registry import step_handlers
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver
from tests.conftest import WorkerHandle, wait_for_status
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.flaky_http import FlakyHttp

SECRET = "s3cr3t-value-for-scrubbing"


def sha(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorResources]:
    monkeypatch.setenv("STEP_SECRET", SECRET)
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


async def run(client: httpx.AsyncClient, definition: dict[str, Any], input: Any = None) -> str:
    r = await client.post("/api/workflows", json=definition)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert (await client.post(f"/api/workflows/{wid}/publish")).status_code == 200
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": input or {}})
    return str(r.json()["executionId"])


async def test_steps_record_provenance_hashes(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    definition = {
        "name": "prov",
        "steps": [{"id": "a", "type": "noop", "actionConfig": {"b": "{{ input.x }}", "a": [1]}}],
    }
    eid = await run(client, definition, {"x": 5})
    assert await wait_for_status(db_dsn, eid, {"succeeded"}) == "succeeded"
    step = (await client.get(f"/api/executions/{eid}")).json()["steps"][0]
    rendered = {"a": [1], "b": 5}
    assert step["output"] == rendered
    assert step["inputSha256"] == sha(rendered)
    assert step["outputSha256"] == sha(rendered)


async def test_worker_scrubs_resolved_secrets_from_outputs_and_errors(
    client: httpx.AsyncClient,
    workers: WorkerHandle,
    resources: ConnectorResources,
    db_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def leaky(ctx: StepContext, config: Any) -> Any:
        value = await resources.resolve({"secretRef": "env://STEP_SECRET"})
        if ctx.step_id == "fails":
            raise ValueError(f"provider said: bad key {value}")
        return {"echo": value, "nested": [f"x{value}y"]}

    handlers = {**step_handlers(resources), "noop": leaky}
    await workers.start(handlers=handlers, secret_values=resources.secrets.known_values)
    eid = await run(client, {"name": "leak", "steps": [{"id": "ok", "type": "noop"}]})
    assert await wait_for_status(db_dsn, eid, {"succeeded"}) == "succeeded"
    body = (await client.get(f"/api/executions/{eid}")).text
    assert SECRET not in body
    assert (await client.get(f"/api/executions/{eid}")).json()["output"] == {
        "ok": {"echo": "***", "nested": ["x***y"]}
    }
    eid = await run(
        client,
        {"name": "leak2", "steps": [{"id": "fails", "type": "noop", "retry": {"maxAttempts": 1}}]},
    )
    assert await wait_for_status(db_dsn, eid, {"failed"}) == "failed"
    for path in (f"/api/executions/{eid}", f"/api/executions/{eid}/logs", "/api/dlq"):
        assert SECRET not in (await client.get(path)).text, path
    assert SECRET not in capsys.readouterr().out


async def test_open_circuit_defers_without_using_an_attempt(
    client: httpx.AsyncClient, workers: WorkerHandle, resources: ConnectorResources, db_dsn: str
) -> None:
    app = FlakyHttp()
    app.script("/down", [503])
    async with serve_asgi(app) as url:
        r = await client.post(
            "/api/connections",
            json={
                "name": "svc",
                "type": "http",
                "config": {
                    "baseUrl": url,
                    "circuitBreaker": {"failureThreshold": 1, "resetTimeoutSeconds": 0.5},
                },
            },
        )
        assert r.status_code == 201, r.text
        await workers.start(handlers=step_handlers(resources))
        step = {
            "id": "call",
            "type": "http",
            "actionConfig": {"connection": "svc", "url": "/down"},
            "retry": {"maxAttempts": 2, "initialDelaySeconds": 0.05, "maxDelaySeconds": 0.05},
        }
        eid = await run(client, {"name": "breaker", "steps": [step]})
        assert await wait_for_status(db_dsn, eid, {"failed", "succeeded"}) == "failed"
    execution = (await client.get(f"/api/executions/{eid}")).json()
    called = execution["steps"][0]
    # Attempt 1 got a 503 and opened the breaker; attempt 2 was deferred until the breaker
    # half-opened, then was the probe. Two attempts, two requests, none wasted.
    assert called["attempts"] == 2
    assert called["error"]["class"] == "provider_error"
    assert app.count("/down") == 2
    events = [
        line["event"] for line in (await client.get(f"/api/executions/{eid}/logs")).json()["items"]
    ]
    assert "step_deferred" in events


async def test_database_step_in_a_workflow(
    client: httpx.AsyncClient,
    workers: WorkerHandle,
    resources: ConnectorResources,
    pool: asyncpg.Pool,
    db_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TARGET_DSN", db_dsn)
    await pool.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    await pool.execute("INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 5) g")
    r = await client.post(
        "/api/connections",
        json={
            "name": "shop",
            "type": "postgres",
            "config": {"dsn": {"secretRef": "env://TARGET_DSN"}},
        },
    )
    assert r.status_code == 201, r.text
    await workers.start(handlers=step_handlers(resources))
    definition = {
        "name": "report",
        "steps": [
            {
                "id": "big",
                "type": "database",
                "actionConfig": {
                    "connection": "shop",
                    "query": "SELECT id, total FROM orders WHERE total >= $1 ORDER BY id",
                    "params": ["{{ input.min }}"],
                },
            },
            {
                "id": "summary",
                "type": "noop",
                "needs": ["big"],
                "actionConfig": {"count": "{{ steps.big.output.rowCount }}"},
            },
        ],
    }
    eid = await run(client, definition, {"min": 30})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    execution = (await client.get(f"/api/executions/{eid}")).json()
    big = next(s for s in execution["steps"] if s["stepId"] == "big")
    assert big["output"]["rows"] == [
        {"id": 3, "total": "30"},
        {"id": 4, "total": "40"},
        {"id": 5, "total": "50"},
    ]
    assert execution["output"] == {"summary": {"count": 3}}
    assert db_dsn not in execution.__repr__()


async def test_simulate_describes_connector_calls_without_secrets(
    client: httpx.AsyncClient,
) -> None:
    definition = {
        "name": "sim",
        "steps": [
            {
                "id": "fetch",
                "type": "http",
                "actionConfig": {
                    "method": "POST",
                    "url": "https://api.example.com/orders/{{ input.id }}",
                    "auth": {"strategy": "bearer", "token": {"secretRef": "env://STEP_SECRET"}},
                    "json": {"id": "{{ input.id }}"},
                },
            },
            {
                "id": "lookup",
                "type": "database",
                "actionConfig": {
                    "connection": "db",
                    "query": "SELECT 1 WHERE $1 > 0",
                    "params": [1],
                },
            },
        ],
    }
    r = await client.post("/api/workflows", json=definition)
    wid = r.json()["id"]
    r = await client.post(f"/api/workflows/{wid}/simulate", json={"input": {"id": 7}})
    assert r.status_code == 200, r.text
    plan = {s["stepId"]: s for s in r.json()["steps"]}
    call = plan["fetch"]["call"]
    assert call["method"] == "POST"
    assert call["url"] == "https://api.example.com/orders/7"
    assert "STEP_SECRET" not in orjson.dumps(call).decode()
    assert plan["lookup"]["call"]["query"] == "SELECT 1 WHERE $1 > 0"
    assert (await client.get("/api/executions")).json()["items"] == []


async def test_templated_sql_is_rejected_at_validation(client: httpx.AsyncClient) -> None:
    definition = {
        "name": "inject",
        "steps": [
            {
                "id": "q",
                "type": "database",
                "actionConfig": {
                    "connection": "db",
                    "query": "SELECT * FROM t WHERE id = {{ input.id }}",
                },
            }
        ],
    }
    r = await client.post("/api/workflows", json=definition)
    assert r.status_code == 422
    assert r.json()["errors"][0]["path"].startswith("steps[0].actionConfig.query")
