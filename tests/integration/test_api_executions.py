"""Executions over HTTP: idempotent execute, get, list and filters, cancel, replay, DLQ, logs."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import WorkerHandle, wait_for_status
from tests.integration.test_api_support import (
    approval_workflow,
    assert_problem,
    count_rows,
    execute,
    failing_workflow,
    noop_workflow,
    open_task,
    published_workflow,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_utc(value: Any) -> None:
    assert isinstance(value, str), value
    assert RFC3339_UTC.match(value), value


async def executions_of(client: httpx.AsyncClient, workflow_id: str) -> list[dict[str, Any]]:
    r = await client.get("/api/executions", params={"workflowId": workflow_id})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


# ----------------------------------------------------------------------------- idempotency


async def test_same_idempotency_key_and_body_returns_the_same_execution(
    client: httpx.AsyncClient,
) -> None:
    wid = await published_workflow(client, noop_workflow())
    headers = {"Idempotency-Key": "order-42"}
    body = {"input": {"name": "Ada"}}
    first = await client.post(f"/api/workflows/{wid}/execute", json=body, headers=headers)
    second = await client.post(f"/api/workflows/{wid}/execute", json=body, headers=headers)
    assert first.status_code == 202, first.text
    assert second.status_code == 202, second.text
    assert first.json()["executionId"] == second.json()["executionId"]
    assert second.headers.get("idempotent-replayed") == "true"
    items = await executions_of(client, wid)
    assert [e["id"] for e in items] == [first.json()["executionId"]]


async def test_same_idempotency_key_with_a_different_body_is_409(
    client: httpx.AsyncClient,
) -> None:
    wid = await published_workflow(client, noop_workflow())
    headers = {"Idempotency-Key": "order-43"}
    r = await client.post(
        f"/api/workflows/{wid}/execute", json={"input": {"name": "Ada"}}, headers=headers
    )
    assert r.status_code == 202, r.text
    original = r.json()["executionId"]
    r = await client.post(
        f"/api/workflows/{wid}/execute", json={"input": {"name": "Bob"}}, headers=headers
    )
    problem = assert_problem(r, 409, "idempotency_key_reused")
    assert problem["executionId"] == original
    assert len(await executions_of(client, wid)) == 1


async def test_concurrent_executes_with_one_key_create_one_execution(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    wid = await published_workflow(client, noop_workflow())
    headers = {"Idempotency-Key": "burst-1"}
    # More requests at once than the pool has connections, on a cold compiled-workflow cache.
    async with asyncio.timeout(10):  # a pool deadlock shows up as a failure, not a hang
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/api/workflows/{wid}/execute",
                    json={"input": {"name": "Ada"}},
                    headers=headers,
                )
                for _ in range(12)
            )
        )
    assert [r.status_code for r in responses] == [202] * 12, [r.text for r in responses]
    ids = {r.json()["executionId"] for r in responses}
    assert len(ids) == 1
    assert len(await executions_of(client, wid)) == 1
    assert await count_rows(pool, "workflow_executions") == 1
    assert await count_rows(pool, "step_runs") == 2


async def test_unusable_idempotency_keys_are_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    wid = await published_workflow(client, noop_workflow())
    for key in ("", "k" * 256):
        r = await client.post(
            f"/api/workflows/{wid}/execute", json={"input": {}}, headers={"Idempotency-Key": key}
        )
        assert r.status_code == 422, (key, r.text)
        assert_problem(r, 422, "invalid_request")
    assert await count_rows(pool, "workflow_executions") == 0


async def test_without_a_key_every_execute_creates_an_execution(
    client: httpx.AsyncClient,
) -> None:
    wid = await published_workflow(client, noop_workflow())
    a = await execute(client, wid, {"name": "Ada"})
    b = await execute(client, wid, {"name": "Ada"})
    assert a != b
    assert len(await executions_of(client, wid)) == 2


# ----------------------------------------------------------------------------- get / list


async def test_get_execution_reports_every_field(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, noop_workflow())
    await workers.start()
    eid = await execute(client, wid, {"name": "Ada"})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"

    r = await client.get(f"/api/executions/{eid}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == eid
    assert body["workflowId"] == wid
    assert body["workflowVersion"] == 1
    assert body["status"] == "succeeded"
    assert body["trigger"]["type"] == "api"
    assert body["input"] == {"name": "Ada"}
    assert body["output"] == {"b": {"echo": "hi Ada"}}
    for field in ("createdAt", "startedAt", "finishedAt"):
        assert_utc(body[field])
    assert body["createdAt"] <= body["startedAt"] <= body["finishedAt"]
    steps = {s["stepId"]: s for s in body["steps"]}
    assert list(steps) == ["a", "b"]
    for step in steps.values():
        assert {
            "stepId",
            "status",
            "attempts",
            "startedAt",
            "finishedAt",
            "output",
            "error",
        } <= set(step)
        assert step["status"] == "succeeded"
        assert step["attempts"] == 1
        assert step["error"] is None
        assert_utc(step["startedAt"])
        assert_utc(step["finishedAt"])
    assert steps["a"]["output"] == {"greeting": "hi Ada"}
    assert steps["b"]["output"] == {"echo": "hi Ada"}


async def test_get_unknown_execution_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/api/executions/{uuid.uuid4()}"), 404, "execution_not_found")
    assert_problem(await client.get("/api/executions/nope"), 404, "execution_not_found")


async def test_list_filters_and_pages(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    hello = await published_workflow(client, noop_workflow())
    broken = await published_workflow(client, failing_workflow())
    before = datetime.now(UTC) - timedelta(seconds=1)
    queued = [await execute(client, hello, {"name": str(i)}) for i in range(3)]
    # Cancel one so that statuses differ without a worker.
    r = await client.post(f"/api/executions/{queued[0]}/cancel")
    assert r.status_code == 200, r.text
    await workers.start()
    failed = await execute(client, broken)
    assert await wait_for_status(db_dsn, failed, {"failed", "succeeded"}) == "failed"
    for eid in queued[1:]:
        assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"

    async def ids(**params: Any) -> list[str]:
        r = await client.get("/api/executions", params=params)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["items"]]

    everything = await ids()
    assert set(everything) == {*queued, failed}
    assert everything[0] == failed  # newest first
    assert set(await ids(workflowId=hello)) == set(queued)
    assert await ids(workflowId=broken) == [failed]
    assert await ids(status="failed") == [failed]
    assert await ids(status="cancelled") == [queued[0]]
    assert set(await ids(status="succeeded")) == set(queued[1:])
    assert set(await ids(status="cancelled,failed")) == {queued[0], failed}
    assert set(await ids(createdAfter=before.isoformat())) == set(everything)
    assert await ids(createdBefore=before.isoformat()) == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(createdAfter=future) == []
    assert await ids(limit=1) == [failed]

    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        r = await client.get("/api/executions", params=params)
        assert r.status_code == 200, r.text
        seen += [e["id"] for e in r.json()["items"]]
        pages += 1
        cursor = r.json()["nextCursor"]
        if cursor is None:
            break
        assert pages < 5
    assert pages == 2
    assert seen == everything


async def test_list_with_unknown_status_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/executions", params={"status": "exploded"})
    assert_problem(r, 400, "invalid_status")
    r = await client.get("/api/executions", params={"status": "failed,exploded"})
    assert_problem(r, 400, "invalid_status")


# ----------------------------------------------------------------------------- cancel


async def test_cancel_a_queued_execution(client: httpx.AsyncClient) -> None:
    wid = await published_workflow(client, noop_workflow())
    eid = await execute(client, wid, {"name": "Ada"})
    r = await client.post(f"/api/executions/{eid}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    body = (await client.get(f"/api/executions/{eid}")).json()
    assert body["status"] == "cancelled"
    assert_utc(body["finishedAt"])
    assert [s["status"] for s in body["steps"]] == ["cancelled", "cancelled"]

    r = await client.post(f"/api/executions/{eid}/cancel")
    assert_problem(r, 409, "execution_finished")


async def test_cancel_a_waiting_execution_closes_its_human_task(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, approval_workflow())
    await workers.start()
    eid = await execute(client, wid, {"amount": 5})
    task = await open_task(client, eid)
    r = await client.post(f"/api/executions/{eid}/cancel")
    assert r.status_code == 200, r.text
    r = await client.get(f"/api/human-tasks/{task['id']}")
    assert r.json()["status"] == "cancelled"
    r = await client.post(f"/api/human-tasks/{task['id']}/complete", json={"decision": "approve"})
    assert_problem(r, 409, "human_task_closed")
    body = (await client.get(f"/api/executions/{eid}")).json()
    assert body["status"] == "cancelled"
    assert {s["stepId"]: s["status"] for s in body["steps"]} == {
        "prepare": "succeeded",
        "gate": "cancelled",
    }


# ----------------------------------------------------------------------------- replay and DLQ


async def test_failed_step_goes_to_the_dlq_and_replays(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, failing_workflow())
    await workers.start()
    eid = await execute(client, wid)
    assert await wait_for_status(db_dsn, eid, {"failed", "succeeded"}) == "failed"

    body = (await client.get(f"/api/executions/{eid}")).json()
    assert body["error"]["class"] == "validation"
    assert body["error"]["stepId"] == "bad"
    (step,) = body["steps"]
    assert step["status"] == "dead"
    assert step["attempts"] == 1
    assert step["error"]["class"] == "validation"
    assert "missing" in step["error"]["message"]

    r = await client.get("/api/dlq")
    assert r.status_code == 200, r.text
    (dead,) = r.json()["items"]
    assert dead["executionId"] == eid
    assert dead["workflowId"] == wid
    assert dead["stepId"] == "bad"
    assert dead["stepRunId"] == step["stepRunId"]
    assert dead["error"]["class"] == "validation"
    assert_utc(dead["failedAt"])

    # Replay the execution: nothing was fixed, so it fails again, but it did run again.
    r = await client.post(f"/api/executions/{eid}/replay")
    assert r.status_code == 202, r.text
    assert r.json()["executionId"] == eid
    assert r.json()["status"] == "queued"
    assert r.json()["requeuedSteps"] == 1
    assert await wait_for_status(db_dsn, eid, {"failed", "succeeded"}) == "failed"

    # Replay the dead step from the DLQ: the same again.
    (dead,) = (await client.get("/api/dlq")).json()["items"]
    r = await client.post(f"/api/dlq/{dead['stepRunId']}/replay")
    assert r.status_code == 202, r.text
    assert r.json()["executionId"] == eid
    assert await wait_for_status(db_dsn, eid, {"failed", "succeeded"}) == "failed"

    r = await client.get(f"/api/executions/{eid}/logs")
    events = [line["event"] for line in r.json()["items"]]
    assert events.count("execution_replayed") == 2, events
    assert events.count("step_dead") == 3, events
    assert events.count("execution_failed") == 3, events


async def test_replay_of_a_succeeded_execution_is_409(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, noop_workflow())
    await workers.start()
    eid = await execute(client, wid, {"name": "Ada"})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    r = await client.post(f"/api/executions/{eid}/replay")
    assert_problem(r, 409, "execution_not_replayable")


async def test_replay_of_a_queued_execution_is_409(client: httpx.AsyncClient) -> None:
    wid = await published_workflow(client, noop_workflow())
    eid = await execute(client, wid, {"name": "Ada"})
    r = await client.post(f"/api/executions/{eid}/replay")
    assert_problem(r, 409, "execution_not_replayable")


async def test_dlq_replay_of_unknown_step_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/dlq/987654321/replay")
    assert_problem(r, 404, "dead_step_not_found")


async def test_rejected_approval_replays_to_success_keeping_earlier_outputs(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, approval_workflow())
    await workers.start()
    eid = await execute(client, wid, {"amount": 700})
    first = await open_task(client, eid)
    r = await client.post(
        f"/api/human-tasks/{first['id']}/complete",
        json={"decision": "reject", "comment": "too much"},
    )
    assert r.status_code == 200, r.text
    assert await wait_for_status(db_dsn, eid, {"failed", "succeeded"}) == "failed"
    before = (await client.get(f"/api/executions/{eid}")).json()
    prepare_before = next(s for s in before["steps"] if s["stepId"] == "prepare")

    r = await client.post(f"/api/executions/{eid}/replay")
    assert r.status_code == 202, r.text
    second = await open_task(client, eid)
    assert second["id"] != first["id"]
    assert second["title"] == "Approve 700"
    r = await client.post(
        f"/api/human-tasks/{second['id']}/complete", json={"decision": "approve", "comment": "ok"}
    )
    assert r.status_code == 200, r.text
    assert await wait_for_status(db_dsn, eid, {"failed", "succeeded"}) == "succeeded"

    after = (await client.get(f"/api/executions/{eid}")).json()
    assert after["error"] is None
    steps = {s["stepId"]: s for s in after["steps"]}
    assert steps["prepare"]["attempts"] == 1
    assert steps["prepare"]["output"] == {"amount": 700}
    assert steps["prepare"]["finishedAt"] == prepare_before["finishedAt"]
    assert steps["gate"]["status"] == "succeeded"
    assert steps["gate"]["output"]["decision"] == "approve"
    assert after["output"]["gate"]["comment"] == "ok"


# ----------------------------------------------------------------------------- logs and ids


async def test_logs_carry_the_request_id_of_the_execute_call(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wid = await published_workflow(client, noop_workflow())
    await workers.start()
    r = await client.post(
        f"/api/workflows/{wid}/execute",
        json={"input": {"name": "Ada"}},
        headers={"X-Request-ID": "req-trace-0001"},
    )
    assert r.status_code == 202, r.text
    assert r.headers["x-request-id"] == "req-trace-0001"
    eid = r.json()["executionId"]
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"

    r = await client.get(f"/api/executions/{eid}/logs")
    assert r.status_code == 200, r.text
    lines = r.json()["items"]
    events = [line["event"] for line in lines]
    assert events[0] == "execution_created"
    assert events.count("step_succeeded") == 2, events
    assert {line["stepId"] for line in lines if line["event"] == "step_succeeded"} == {"a", "b"}
    assert {line["correlationId"] for line in lines} == {"req-trace-0001"}, lines
    for line in lines:
        assert_utc(line["createdAt"])
    assert (await client.get(f"/api/executions/{eid}")).json()["correlationId"] == "req-trace-0001"

    # Paging through the lines with after/limit.
    r = await client.get(f"/api/executions/{eid}/logs", params={"limit": 1})
    page = r.json()
    assert [line["id"] for line in page["items"]] == [lines[0]["id"]]
    r = await client.get(f"/api/executions/{eid}/logs", params={"after": page["next"]})
    assert [line["id"] for line in r.json()["items"]] == [line["id"] for line in lines[1:]]


async def test_cancel_and_replay_log_lines_carry_the_correlation_id(
    client: httpx.AsyncClient,
) -> None:
    wid = await published_workflow(client, noop_workflow())
    eid = await execute(client, wid, {"name": "Ada"}, headers={"X-Request-ID": "corr-7"})
    r = await client.post(f"/api/executions/{eid}/cancel")
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/executions/{eid}/replay")
    assert r.status_code == 202, r.text
    lines = (await client.get(f"/api/executions/{eid}/logs")).json()["items"]
    assert [line["event"] for line in lines] == [
        "execution_created",
        "execution_cancelled",
        "execution_replayed",
    ]
    assert [line["correlationId"] for line in lines] == ["corr-7"] * 3, lines


async def test_request_id_is_generated_when_absent_or_unusable(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/workflows")
    generated = r.headers["x-request-id"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{8,128}", generated), generated
    other = (await client.get("/api/workflows")).headers["x-request-id"]
    assert other != generated
    r = await client.get("/api/workflows", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"
    # Errors carry it too.
    r = await client.get(f"/api/executions/{uuid.uuid4()}", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "err-1"
