"""Workflows over HTTP: create (JSON, YAML), list, get, replace, publish, archive, simulate,
execute, and how invalid definitions are reported."""

from __future__ import annotations

import base64
import json
from typing import Any

import asyncpg
import httpx

from tests.integration.test_api_support import (
    assert_problem,
    count_rows,
    create_workflow,
    noop_workflow,
    published_workflow,
)

YAML_WORKFLOW = """\
name: from-yaml
description: written in YAML
steps:
  - id: first
    type: noop
    actionConfig:
      msg: "hello {{ input.who }}"
  - id: second
    type: noop
    needs: [first]
"""


async def test_create_json_returns_201_location_and_get_includes_versions(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/api/workflows", json=noop_workflow(description="greets"))
    assert r.status_code == 201, r.text
    created = r.json()
    wid = created["id"]
    assert r.headers["location"] == f"/api/workflows/{wid}"
    assert created["name"] == "hello"
    assert created["description"] == "greets"
    assert created["status"] == "active"
    assert created["latestVersion"] is None
    assert [s["id"] for s in created["draft"]["steps"]] == ["a", "b"]

    r = await client.get(r.headers["location"])
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["id"] == wid
    assert got["versions"] == []
    assert got["createdAt"].endswith("Z")
    assert got["updatedAt"].endswith("Z")

    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    versions = (await client.get(f"/api/workflows/{wid}")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["publishedBy"] == "tester"
    assert versions[0]["publishedAt"].endswith("Z")


async def test_create_from_yaml(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/workflows",
        content=YAML_WORKFLOW,
        headers={"Content-Type": "application/yaml"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "from-yaml"
    assert body["description"] == "written in YAML"
    steps = body["draft"]["steps"]
    assert [(s["id"], s["type"]) for s in steps] == [("first", "noop"), ("second", "noop")]
    assert steps[1]["needs"] == ["first"]
    assert steps[0]["actionConfig"] == {"msg": "hello {{ input.who }}"}


async def test_list_pages_with_cursor(client: httpx.AsyncClient) -> None:
    created = [await create_workflow(client, noop_workflow(f"wf-{i}")) for i in range(5)]
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = await client.get("/api/workflows", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
        assert pages < 10, "paging does not end"
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == set(created)
    # Newest first.
    assert seen == list(reversed(created))


def _b64(parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


BAD_CURSORS = {
    "garbage": "not-a-cursor!!",
    "wrong-arity": _b64(["only-one"]),
    "not-a-list": _b64({"a": 1}),
    "well-formed-but-bad-values": _b64(["yesterday", "not-a-uuid"]),
}


async def test_bad_cursor_is_400(client: httpx.AsyncClient) -> None:
    for path in ("/api/workflows", "/api/executions", "/api/dlq"):
        for name, cursor in BAD_CURSORS.items():
            r = await client.get(path, params={"cursor": cursor})
            assert r.status_code == 400, (path, name, r.text)
            assert_problem(r, 400, "invalid_cursor")


async def test_replace_draft(client: httpx.AsyncClient) -> None:
    wid = await published_workflow(client, noop_workflow())
    replacement = {
        "name": "renamed",
        "description": "now with one step",
        "steps": [{"id": "only", "type": "noop"}],
    }
    r = await client.put(f"/api/workflows/{wid}", json=replacement)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "renamed"
    assert [s["id"] for s in body["draft"]["steps"]] == ["only"]
    assert [v["version"] for v in body["versions"]] == [1]
    # The published version is frozen; only the draft changed.
    r = await client.get(f"/api/workflows/{wid}/versions/1")
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["definition"]["steps"]] == ["a", "b"]
    r = await client.get(f"/api/workflows/{wid}")
    assert r.json()["draft"]["name"] == "renamed"


async def test_replace_with_invalid_definition_keeps_the_draft(
    client: httpx.AsyncClient,
) -> None:
    wid = await create_workflow(client, noop_workflow())
    r = await client.put(
        f"/api/workflows/{wid}",
        json={"name": "x", "steps": [{"id": "a", "type": "noop", "needs": ["ghost"]}]},
    )
    assert_problem(r, 422, "invalid_workflow")
    r = await client.get(f"/api/workflows/{wid}")
    assert r.json()["name"] == "hello"


async def test_publish_increments_and_unchanged_draft_keeps_version(
    client: httpx.AsyncClient,
) -> None:
    wid = await create_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert r.json()["unchanged"] is False

    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert r.json()["unchanged"] is True

    r = await client.put(f"/api/workflows/{wid}", json=noop_workflow("changed"))
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.json()["version"] == 2
    assert r.json()["unchanged"] is False

    body = (await client.get(f"/api/workflows/{wid}")).json()
    assert body["latestVersion"] == 2
    assert [v["version"] for v in body["versions"]] == [1, 2]


async def test_archive_blocks_execute_update_and_publish(client: httpx.AsyncClient) -> None:
    wid = await published_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/archive")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "archived"

    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": {}})
    assert_problem(r, 409, "workflow_archived")
    r = await client.put(f"/api/workflows/{wid}", json=noop_workflow("again"))
    assert_problem(r, 409, "workflow_archived")
    r = await client.post(f"/api/workflows/{wid}/publish")
    assert_problem(r, 409, "workflow_archived")

    r = await client.get("/api/workflows", params={"status": "archived"})
    assert [w["id"] for w in r.json()["items"]] == [wid]
    r = await client.get("/api/workflows", params={"status": "active"})
    assert r.json()["items"] == []


async def test_simulate_renders_with_input_and_creates_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    wid = await create_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/simulate", json={"input": {"name": "Ada"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True, body
    assert body["errors"] == []
    plan = {s["stepId"]: s for s in body["steps"]}
    assert list(plan) == ["a", "b"]
    assert plan["a"]["actionConfig"] == {"greeting": "hi Ada"}
    assert plan["b"]["actionConfig"] == {"echo": "hi Ada"}
    assert plan["b"]["needs"] == ["a"]
    assert all(s["wouldRun"] for s in body["steps"])
    assert await count_rows(pool, "workflow_executions") == 0
    assert await count_rows(pool, "step_runs") == 0
    r = await client.get("/api/executions", params={"workflowId": wid})
    assert r.json()["items"] == []


async def test_simulate_reports_a_template_that_cannot_render(client: httpx.AsyncClient) -> None:
    wid = await create_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/simulate", json={"input": {}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is False
    assert [e["stepId"] for e in body["errors"]] == ["a"]


async def test_execute_returns_202_with_execution_id(client: httpx.AsyncClient) -> None:
    wid = await published_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": {"name": "Ada"}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) >= {"executionId", "status"}
    assert body["status"] == "queued"
    assert r.headers["location"] == f"/api/executions/{body['executionId']}"
    r = await client.get(f"/api/executions/{body['executionId']}")
    assert r.status_code == 200, r.text
    assert r.json()["workflowId"] == wid
    assert r.json()["workflowVersion"] == 1


async def test_execute_unpublished_is_409(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    wid = await create_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": {}})
    assert_problem(r, 409, "workflow_not_published")
    assert await count_rows(pool, "workflow_executions") == 0


INVALID_EXECUTE_BODIES = {
    "unknown-field": {"input": {}, "surprise": 1},
    "input-not-object": {"input": "not an object"},
    "version-below-1": {"input": {}, "version": 0},
}


async def test_execute_with_invalid_body_is_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    wid = await published_workflow(client, noop_workflow())
    for name, body in INVALID_EXECUTE_BODIES.items():
        r = await client.post(f"/api/workflows/{wid}/execute", json=body)
        assert r.status_code == 422, (name, r.text)
        problem = assert_problem(r, 422, "invalid_request")
        assert problem["errors"], problem
    assert await count_rows(pool, "workflow_executions") == 0


async def test_execute_with_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    wid = await published_workflow(client, noop_workflow())
    r = await client.post(
        f"/api/workflows/{wid}/execute",
        content=b'{"input": ',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(r, 422, "invalid_request")


def _wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "bad", "steps": list(steps), **extra}


# name -> (definition, the step an error must name (None: either step of the cycle),
#          the path an error must start with)
INVALID_WORKFLOWS: dict[str, tuple[dict[str, Any], str | None, str]] = {
    "duplicate-step-ids": (
        _wf({"id": "a", "type": "noop"}, {"id": "a", "type": "noop"}),
        "a",
        "steps[1]",
    ),
    "unknown-needs": (
        _wf({"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "needs": ["ghost"]}),
        "b",
        "steps[1].needs",
    ),
    "cycle": (
        _wf(
            {"id": "a", "type": "noop", "needs": ["b"]},
            {"id": "b", "type": "noop", "needs": ["a"]},
        ),
        None,
        "steps[",
    ),
    "unknown-field": (_wf({"id": "a", "type": "noop", "colour": "red"}), "a", "steps[0].colour"),
    "unknown-step-type": (_wf({"id": "a", "type": "teleport"}), "a", "steps[0].type"),
}


async def test_invalid_workflow_is_422_naming_step_and_path(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for name, (definition, step_id, path) in INVALID_WORKFLOWS.items():
        r = await client.post("/api/workflows", json=definition)
        assert r.status_code == 422, (name, r.text)
        problem = assert_problem(r, 422, "invalid_workflow")
        errors = problem["errors"]
        assert isinstance(errors, list), (name, problem)
        assert errors, (name, problem)
        for error in errors:
            assert {"path", "stepId", "message"} <= set(error), (name, error)
        assert any(e["path"].startswith(path) for e in errors), (name, errors)
        if step_id is not None:
            assert any(e["stepId"] == step_id for e in errors), (name, errors)
        else:  # a cycle names the steps on it
            assert {e["stepId"] for e in errors} & {"a", "b"}, (name, errors)
    assert await count_rows(pool, "workflows") == 0


MALFORMED_DOCUMENTS = [
    (b'{"name": "x", "steps": [', "application/json", "JSON"),
    (b"name: x\nsteps: [\n  - id: a\n", "application/yaml", "YAML"),
]


async def test_malformed_document_is_422(client: httpx.AsyncClient) -> None:
    for content, content_type, fragment in MALFORMED_DOCUMENTS:
        r = await client.post(
            "/api/workflows", content=content, headers={"Content-Type": content_type}
        )
        problem = assert_problem(r, 422, "invalid_workflow")
        assert problem["errors"], problem
        assert fragment in problem["errors"][0]["message"], problem


async def test_unsupported_media_type_is_415(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/workflows", content=b"name=x", headers={"Content-Type": "text/plain"}
    )
    assert_problem(r, 415, "unsupported_media_type")


async def test_get_unknown_and_malformed_workflow_ids_are_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/workflows/00000000-0000-4000-8000-000000000000")
    assert_problem(r, 404, "workflow_not_found")
    r = await client.get("/api/workflows/not-a-uuid")
    assert_problem(r, 404, "workflow_not_found")
