"""Tenant isolation: another tenant's resources are 404 (never 403) on every endpoint, and
lists only ever show one's own tenant."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import WorkerHandle, auth, wait_for_status
from tests.integration.test_api_support import (
    approval_workflow,
    assert_problem,
    execute,
    failing_workflow,
    noop_workflow,
    open_task,
    published_workflow,
)

LISTS = (
    "/api/workflows",
    "/api/executions",
    "/api/dlq",
    "/api/human-tasks?status=all",
    "/api/api-keys",
)


async def test_other_tenants_resources_are_invisible(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    # Tenant A ("acme", the client's default token): a workflow, a waiting execution with an
    # open human task, a failed execution with a dead step, and an API key.
    wid = await published_workflow(client, approval_workflow())
    broken = await published_workflow(client, failing_workflow())
    await workers.start()
    waiting = await execute(client, wid, {"amount": 3}, headers={"Idempotency-Key": "shared"})
    task = await open_task(client, waiting)
    failed = await execute(client, broken)
    assert await wait_for_status(db_dsn, failed, {"failed", "succeeded"}) == "failed"
    (dead,) = (await client.get("/api/dlq")).json()["items"]
    r = await client.post("/api/api-keys", json={"name": "a-key", "roles": ["viewer"]})
    assert r.status_code == 201, r.text
    key_id, key = r.json()["id"], r.json()["key"]

    b = auth(tenant="globex")  # an admin, but of another tenant
    probes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/api/workflows/{wid}", None),
        ("GET", f"/api/workflows/{wid}/versions/1", None),
        ("PUT", f"/api/workflows/{wid}", noop_workflow("hijacked")),
        ("POST", f"/api/workflows/{wid}/publish", None),
        ("POST", f"/api/workflows/{wid}/archive", None),
        ("POST", f"/api/workflows/{wid}/simulate", {"input": {}}),
        ("POST", f"/api/workflows/{wid}/execute", {"input": {}}),
        ("GET", f"/api/executions/{waiting}", None),
        ("POST", f"/api/executions/{waiting}/cancel", None),
        ("POST", f"/api/executions/{failed}/replay", None),
        ("GET", f"/api/executions/{waiting}/logs", None),
        ("POST", f"/api/dlq/{dead['stepRunId']}/replay", None),
        ("GET", f"/api/human-tasks/{task['id']}", None),
        ("POST", f"/api/human-tasks/{task['id']}/complete", {"decision": "approve"}),
        ("DELETE", f"/api/api-keys/{key_id}", None),
    ]
    for method, path, body in probes:
        r = await client.request(method, path, json=body, headers=b)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        problem = assert_problem(r, 404)
        assert problem["code"].endswith("_not_found"), problem

    for path in LISTS:
        r = await client.get(path, headers=b)
        assert r.status_code == 200, (path, r.text)
        assert r.json()["items"] == [], (path, r.json())
    for params in ({"workflowId": wid}, {"status": "failed"}, {"status": "waiting"}):
        r = await client.get("/api/executions", params=params, headers=b)
        assert r.json()["items"] == [], (params, r.json())
    r = await client.get("/api/human-tasks", params={"executionId": waiting}, headers=b)
    assert r.json()["items"] == []

    # B's idempotency keys are its own: the same key starts B's own execution.
    b_wid = (await client.post("/api/workflows", json=noop_workflow(), headers=b)).json()["id"]
    r = await client.post(f"/api/workflows/{b_wid}/publish", headers=b)
    assert r.status_code == 200, r.text
    r = await client.post(
        f"/api/workflows/{b_wid}/execute",
        json={"input": {"name": "B"}},
        headers={**b, "Idempotency-Key": "shared"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["executionId"] != waiting
    b_executions = (await client.get("/api/executions", headers=b)).json()["items"]
    assert [e["workflowId"] for e in b_executions] == [b_wid]
    # ...and A does not see B's.
    a_ids = {e["id"] for e in (await client.get("/api/executions")).json()["items"]}
    assert a_ids == {waiting, failed}

    # Nothing B tried changed A's resources.
    r = await client.get(f"/api/workflows/{wid}")
    assert r.json()["status"] == "active"
    assert r.json()["name"] == "approve-me"
    assert (await client.get(f"/api/executions/{waiting}")).json()["status"] == "waiting"
    assert (await client.get(f"/api/executions/{failed}")).json()["status"] == "failed"
    assert (await client.get(f"/api/human-tasks/{task['id']}")).json()["status"] == "open"
    assert [d["stepRunId"] for d in (await client.get("/api/dlq")).json()["items"]] == [
        dead["stepRunId"]
    ]
    r = await client.get("/api/workflows", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert {w["id"] for w in r.json()["items"]} == {wid, broken}


async def test_an_api_key_acts_in_its_own_tenant(client: httpx.AsyncClient) -> None:
    b = auth(tenant="globex")
    r = await client.post("/api/api-keys", json={"name": "b-key", "roles": ["admin"]}, headers=b)
    assert r.status_code == 201, r.text
    b_key = {"Authorization": f"Bearer {r.json()['key']}"}
    a_wid = await published_workflow(client, noop_workflow())
    assert (await client.get("/api/workflows", headers=b_key)).json()["items"] == []
    assert_problem(await client.get(f"/api/workflows/{a_wid}", headers=b_key), 404)
    r = await client.post("/api/workflows", json=noop_workflow("from-b"), headers=b_key)
    assert r.status_code == 201, r.text
    names = [w["name"] for w in (await client.get("/api/workflows", headers=b)).json()["items"]]
    assert names == ["from-b"]
    assert [w["id"] for w in (await client.get("/api/workflows")).json()["items"]] == [a_wid]


async def test_a_new_tenant_sees_empty_lists(client: httpx.AsyncClient) -> None:
    await published_workflow(client, noop_workflow())  # something exists in another tenant
    for roles in (("viewer",), ("admin",)):
        headers = auth(tenant="brand-new.tenant_1", roles=roles)
        for path in LISTS:
            if path == "/api/api-keys" and roles == ("viewer",):
                continue
            r = await client.get(path, headers=headers)
            assert r.status_code == 200, (roles, path, r.text)
            assert r.json()["items"] == [], (roles, path, r.json())
            assert r.json().get("nextCursor") is None
