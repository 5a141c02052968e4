"""`maestro api` and `maestro worker` as separate processes on one database (DESIGN §1, §8)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import (
    Spawner,
    api_client,
    chain,
    execute,
    publish,
    wait_execution,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAST = {"MAESTRO_POLL_INTERVAL_SECONDS": "0.2"}


async def test_api_and_worker_processes_run_an_execution(spawn: Spawner, db_dsn: str) -> None:
    api = spawn.api(db_dsn)
    worker = spawn.worker(db_dsn, **FAST)
    await asyncio.gather(api.wait_ready(), worker.wait_ready())

    async with httpx.AsyncClient(base_url=worker.url, timeout=5) as probe:
        r = await probe.get("/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        r = await probe.get("/readyz")
        assert (r.status_code, r.json()) == (200, {"status": "ready"})
        r = await probe.get("/nope")
        assert r.status_code == 404

    async with api_client(api.url) as client:
        wid = await publish(client, chain("split", 3))
        eid = await execute(client, wid, {"n": 7})
        body = await wait_execution(client, eid, {"succeeded", "failed", "cancelled"})
    assert body["status"] == "succeeded", body
    assert [s["status"] for s in body["steps"]] == ["succeeded"] * 3, body
    assert body["output"] == {"s2": {"i": 2, "n": 7}}, body

    assert await api.terminate() == 0, api.describe()
    assert await worker.terminate() == 0, worker.describe()


APPROVE_AND_WAIT = {
    "name": "survives-restarts",
    "steps": [
        {
            "id": "approve",
            "type": "approval",
            "actionConfig": {"title": "ship {{ input.n }}?", "assignees": ["ops", "qa"]},
        },
        {"id": "pause", "type": "delay", "actionConfig": {"seconds": 3}},
        {
            "id": "done",
            "type": "noop",
            "needs": ["approve", "pause"],
            "actionConfig": {"decision": "{{ steps.approve.output.decision }}"},
        },
    ],
}


async def test_waiting_execution_survives_restart_of_api_and_worker(
    spawn: Spawner, db_dsn: str
) -> None:
    api = spawn.api(db_dsn)
    worker = spawn.worker(db_dsn, **FAST)
    await asyncio.gather(api.wait_ready(), worker.wait_ready())
    async with api_client(api.url) as client:
        wid = await publish(client, APPROVE_AND_WAIT)
        eid = await execute(client, wid, {"n": 1})
        await wait_execution(client, eid, {"waiting"})

        async def open_task() -> str | None:
            r = await client.get("/api/human-tasks", params={"executionId": eid})
            items = r.json()["items"]
            if not items:
                return None
            assert items[0]["assignees"] == ["ops", "qa"], items
            return str(items[0]["id"])

        task_id = await wait_until(open_task, timeout=10, what="the approval's human task")

    conn = await asyncpg.connect(db_dsn)
    try:

        async def both_waiting() -> bool:
            rows = await conn.fetch(
                "SELECT step_id, status FROM step_runs WHERE execution_id = $1", uuid.UUID(eid)
            )
            return {r["step_id"]: r["status"] for r in rows} == {
                "approve": "waiting",
                "pause": "waiting",
                "done": "pending",
            }

        await wait_until(both_waiting, timeout=10, what="approve and pause waiting")
        assert await api.terminate() == 0, api.describe()
        assert await worker.terminate() == 0, worker.describe()
        # Nothing ran while everything was down; the delay is still ahead.
        assert await both_waiting()
    finally:
        await conn.close()

    api2 = spawn.api(db_dsn)
    worker2 = spawn.worker(db_dsn, **FAST)
    await asyncio.gather(api2.wait_ready(), worker2.wait_ready())
    async with api_client(api2.url) as client:
        r = await client.get(f"/api/executions/{eid}")
        assert r.json()["status"] == "waiting", r.text
        r = await client.post(
            f"/api/human-tasks/{task_id}/complete", json={"decision": "approve", "comment": "ok"}
        )
        assert r.status_code == 200, r.text
        body = await wait_execution(client, eid, {"succeeded", "failed", "cancelled"}, timeout=20)
    assert body["status"] == "succeeded", body
    steps = {s["stepId"]: s for s in body["steps"]}
    assert {k: s["status"] for k, s in steps.items()} == dict.fromkeys(
        ("approve", "pause", "done"), "succeeded"
    ), body
    assert steps["approve"]["output"]["decision"] == "approve", body
    assert steps["pause"]["output"] == {"waitedSeconds": 3.0}, body
    assert body["output"] == {"done": {"decision": "approve"}}, body
    assert await api2.terminate() == 0, api2.describe()
    assert await worker2.terminate() == 0, worker2.describe()
