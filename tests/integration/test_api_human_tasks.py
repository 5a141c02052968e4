"""Human tasks (approval steps) over HTTP: list, get, approve, reject, double completion."""

from __future__ import annotations

import httpx

from tests.conftest import WorkerHandle, auth, wait_for_status
from tests.integration.test_api_support import (
    approval_workflow,
    assert_problem,
    execute,
    open_task,
    published_workflow,
)


async def test_approve_completes_the_execution_with_the_decision(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, approval_workflow())
    await workers.start()
    eid = await execute(client, wid, {"amount": 250})
    task = await open_task(client, eid)
    assert task["executionId"] == eid
    assert task["stepId"] == "gate"
    assert task["title"] == "Approve 250"
    assert task["assignees"] == ["boss"]
    assert task["status"] == "open"
    assert task["createdAt"].endswith("Z")
    assert (await client.get(f"/api/executions/{eid}")).json()["status"] == "waiting"
    r = await client.get(f"/api/human-tasks/{task['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == task

    # An operator may decide.
    r = await client.post(
        f"/api/human-tasks/{task['id']}/complete",
        json={"decision": "approve", "comment": "fine"},
        headers=auth(roles=("operator",)),
    )
    assert r.status_code == 200, r.text
    decided = r.json()
    assert decided["status"] == "approved"
    assert decided["decisionBy"] == "tester"
    assert decided["comment"] == "fine"
    assert decided["decidedAt"].endswith("Z")

    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    body = (await client.get(f"/api/executions/{eid}")).json()
    gate = next(s for s in body["steps"] if s["stepId"] == "gate")
    assert gate["status"] == "succeeded"
    assert gate["output"]["decision"] == "approve"
    assert gate["output"]["comment"] == "fine"
    assert gate["output"]["decidedBy"] == "tester"
    assert body["output"]["gate"]["decision"] == "approve"

    # No longer open; still listed with status=all / approved.
    r = await client.get("/api/human-tasks")
    assert r.json()["items"] == []
    r = await client.get("/api/human-tasks", params={"status": "approved"})
    assert [t["id"] for t in r.json()["items"]] == [task["id"]]
    r = await client.get("/api/human-tasks", params={"status": "all"})
    assert [t["id"] for t in r.json()["items"]] == [task["id"]]


async def test_reject_fails_the_execution_and_a_second_decision_is_409(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, approval_workflow())
    await workers.start()
    eid = await execute(client, wid, {"amount": 9000})
    task = await open_task(client, eid)
    r = await client.post(
        f"/api/human-tasks/{task['id']}/complete",
        json={"decision": "reject", "comment": "too much"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected"

    r = await client.post(f"/api/human-tasks/{task['id']}/complete", json={"decision": "approve"})
    assert_problem(r, 409, "human_task_closed")

    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "failed"
    body = (await client.get(f"/api/executions/{eid}")).json()
    assert body["error"]["class"] == "rejected"
    assert body["error"]["stepId"] == "gate"
    assert "too much" in body["error"]["message"]
    gate = next(s for s in body["steps"] if s["stepId"] == "gate")
    assert gate["status"] == "dead"
    assert gate["error"]["class"] == "rejected"
    # A rejection is a decision, not a fault to retry.
    assert gate["attempts"] == 1
    r = await client.get(f"/api/human-tasks/{task['id']}")
    assert r.json()["status"] == "rejected"


async def test_invalid_completion_bodies_are_422_and_leave_the_task_open(
    client: httpx.AsyncClient, workers: WorkerHandle
) -> None:
    wid = await published_workflow(client, approval_workflow())
    await workers.start()
    eid = await execute(client, wid, {"amount": 1})
    task = await open_task(client, eid)
    for body in (
        {"decision": "maybe"},
        {},
        {"decision": "approve", "extra": True},
        {"decision": "approve", "comment": "x" * 5000},
        {"decision": "approve", "comment": "nul \u0000 byte"},  # PostgreSQL text cannot hold it
    ):
        r = await client.post(f"/api/human-tasks/{task['id']}/complete", json=body)
        assert r.status_code == 422, (body, r.text)
        assert_problem(r, 422, "invalid_request")
    r = await client.get(f"/api/human-tasks/{task['id']}")
    assert r.json()["status"] == "open"
    assert (await client.get(f"/api/executions/{eid}")).json()["status"] == "waiting"


async def test_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert_problem(await client.get(f"/api/human-tasks/{missing}"), 404, "human_task_not_found")
    r = await client.post(f"/api/human-tasks/{missing}/complete", json={"decision": "approve"})
    assert_problem(r, 404, "human_task_not_found")
    assert_problem(await client.get("/api/human-tasks/xyz"), 404, "human_task_not_found")
