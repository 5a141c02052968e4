"""Shared helpers for the HTTP API integration tests (this module holds no tests itself)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

PROBLEM_MEMBERS = ("type", "title", "status", "code", "detail")


def noop_workflow(name: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"id": "a", "type": "noop", "actionConfig": {"greeting": "hi {{ input.name }}"}},
            {
                "id": "b",
                "type": "noop",
                "needs": ["a"],
                "actionConfig": {"echo": "{{ steps.a.output.greeting }}"},
            },
        ],
        **extra,
    }


def failing_workflow() -> dict[str, Any]:
    """One noop step whose template needs an input value the tests never send."""
    return {
        "name": "needs-input",
        "steps": [{"id": "bad", "type": "noop", "actionConfig": {"v": "{{ input.missing }}"}}],
    }


def approval_workflow() -> dict[str, Any]:
    return {
        "name": "approve-me",
        "steps": [
            {"id": "prepare", "type": "noop", "actionConfig": {"amount": "{{ input.amount }}"}},
            {
                "id": "gate",
                "type": "approval",
                "needs": ["prepare"],
                "actionConfig": {"title": "Approve {{ input.amount }}", "assignees": ["boss"]},
            },
        ],
    }


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem with our members, the expected status/code, and no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    for member in PROBLEM_MEMBERS:
        assert member in body, (member, body)
    assert body["status"] == status, body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    assert "Traceback" not in response.text, response.text
    assert 'File "' not in response.text, response.text
    if code is not None:
        assert body["code"] == code, body
        assert body["type"].endswith(code), body
    return body


async def create_workflow(client: httpx.AsyncClient, definition: dict[str, Any]) -> str:
    r = await client.post("/api/workflows", json=definition)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def published_workflow(client: httpx.AsyncClient, definition: dict[str, Any]) -> str:
    wid = await create_workflow(client, definition)
    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    return wid


async def execute(
    client: httpx.AsyncClient,
    workflow_id: str,
    input: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    r = await client.post(
        f"/api/workflows/{workflow_id}/execute", json={"input": input or {}}, headers=headers
    )
    assert r.status_code == 202, r.text
    return str(r.json()["executionId"])


async def poll(
    fetch: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> Any:
    """Re-run ``fetch`` until ``accept`` holds for its result; fail after ``timeout`` seconds.
    Only for states the engine does not announce (e.g. an execution parked waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last value: {value}")
        await asyncio.sleep(interval)


async def open_task(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    """Wait until the execution has an open human task, and return it."""

    async def fetch() -> list[dict[str, Any]]:
        r = await client.get("/api/human-tasks", params={"executionId": execution_id})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    items = await poll(fetch, lambda items: len(items) == 1)
    return dict(items[0])


async def count_rows(pool: asyncpg.Pool, table: str) -> int:
    assert table.isidentifier()
    async with pool.acquire() as conn:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
