"""Error shapes, body limits, health endpoints, OpenAPI, the schema and security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from maestro.api.app import create_app
from maestro.db.pool import create_pool
from maestro.settings import Settings
from tests.conftest import JWT_SECRET, auth
from tests.integration.test_api_support import (
    assert_problem,
    count_rows,
    noop_workflow,
    published_workflow,
)

SMALL_LIMIT = 2048


@pytest.fixture
async def small_client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app whose request bodies may be at most 2 KiB."""
    settings = Settings(
        jwt_secret=JWT_SECRET, database_url="postgresql://unused", max_body_bytes=SMALL_LIMIT
    )
    app = create_app(settings, pool)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=auth()
        ) as c:
            yield c


def _big_workflow() -> dict[str, object]:
    return noop_workflow(description="x" * (SMALL_LIMIT * 2))


async def _chunks(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nothing-here")
    assert_problem(r, 404, "not_found")
    r = await client.get("/definitely/not/a/route", headers={"Authorization": ""})
    assert_problem(r, 404, "not_found")
    r = await client.delete("/api/workflows")
    assert_problem(r, 405, "method_not_allowed")


async def test_oversized_body_with_content_length_is_413(
    small_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    r = await small_client.post("/api/workflows", json=_big_workflow())
    body = assert_problem(r, 413, "payload_too_large")
    assert str(SMALL_LIMIT) in body["detail"]
    assert r.headers["x-request-id"]
    assert r.headers["x-content-type-options"] == "nosniff"
    # A body just under the limit is fine.
    r = await small_client.post("/api/workflows", json=noop_workflow(description="y" * 1000))
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    r = await small_client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    r = await small_client.post(
        f"/api/workflows/{wid}/execute", json={"input": {"blob": "z" * SMALL_LIMIT}}
    )
    assert_problem(r, 413, "payload_too_large")
    assert await count_rows(pool, "workflows") == 1
    assert await count_rows(pool, "workflow_executions") == 0


async def test_oversized_streamed_body_is_413(
    small_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Without a Content-Length the limit is enforced while reading."""
    wid = await published_workflow(small_client, noop_workflow())
    big = httpx.Request("POST", "http://test", json=_big_workflow()).content
    r = await small_client.post(
        "/api/workflows", content=_chunks(big), headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 413, "payload_too_large")
    big_input = httpx.Request("POST", "http://test", json={"input": {"b": "z" * 4096}}).content
    r = await small_client.post(
        f"/api/workflows/{wid}/execute",
        content=_chunks(big_input),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(r, 413, "payload_too_large")
    assert await count_rows(pool, "workflows") == 1
    assert await count_rows(pool, "workflow_executions") == 0


async def test_nul_characters_are_422_and_store_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000; that is the client's mistake, not a 500."""
    wid = await published_workflow(client, noop_workflow())
    attempts = [
        ("POST", "/api/workflows", noop_workflow(description="a\u0000b")),
        ("PUT", f"/api/workflows/{wid}", noop_workflow("x\u0000y")),
        ("POST", f"/api/workflows/{wid}/execute", {"input": {"name": "nul\u0000"}}),
        ("POST", "/api/api-keys", {"name": "k\u0000", "roles": ["viewer"]}),
    ]
    for method, path, body in attempts:
        r = await client.request(method, path, json=body)
        assert r.status_code == 422, (method, path, r.text)
        problem = assert_problem(r, 422, "invalid_request")
        assert "NUL" in problem["detail"], problem
    assert await count_rows(pool, "workflows") == 1
    assert (await client.get(f"/api/workflows/{wid}")).json()["name"] == "hello"
    assert await count_rows(pool, "workflow_executions") == 0
    assert await count_rows(pool, "api_keys") == 0


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    # No credentials needed.
    r = await client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok"}
    r = await client.get("/readyz", headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready"}


async def test_readyz_is_503_when_the_database_is_gone(db_dsn: str) -> None:
    dead_pool = await create_pool(db_dsn, max_size=2)
    await dead_pool.close()
    settings = Settings(jwt_secret=JWT_SECRET, database_url="postgresql://unused")
    app = create_app(settings, dead_pool)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert_problem(await c.get("/readyz"), 503, "database_unavailable")
            assert (await c.get("/healthz")).status_code == 200
            # An unexpected failure is a bare 500 problem: no traceback, no exception text.
            r = await c.get("/api/workflows", headers=auth())
            body = assert_problem(r, 500, "internal_error")
            assert "pool" not in body["detail"].lower(), body
            assert "Interface" not in r.text, r.text
            assert r.headers["x-request-id"]


async def test_openapi_and_workflow_schema(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    paths = r.json()["paths"]
    for path in (
        "/api/workflows",
        "/api/workflows/{workflow_id}",
        "/api/workflows/{workflow_id}/execute",
        "/api/executions/{execution_id}",
        "/api/human-tasks",
    ):
        assert path in paths, sorted(paths)
    assert "post" in paths["/api/workflows"]

    r = await client.get("/api/schemas/workflow.json")
    assert r.status_code == 200, r.text
    schema = r.json()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"name", "steps"} <= set(schema["properties"])
    assert "steps" in schema.get("required", [])


async def test_security_headers_on_success_and_error(client: httpx.AsyncClient) -> None:
    for r in (
        await client.get("/api/workflows"),
        await client.get("/api/workflows", headers={"Authorization": ""}),
        await client.get("/nope"),
        await client.get("/healthz"),
    ):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["strict-transport-security"].startswith("max-age="), r.url
        assert r.headers["x-request-id"], r.url
