from __future__ import annotations

import httpx

from tests.conftest import WorkerHandle, wait_for_status


async def test_create_publish_execute(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    wf = {
        "name": "hello",
        "steps": [
            {"id": "a", "type": "noop", "actionConfig": {"greeting": "hi {{ input.name }}"}},
            {
                "id": "b",
                "type": "noop",
                "needs": ["a"],
                "actionConfig": {"echo": "{{ steps.a.output.greeting }}"},
            },
        ],
    }
    r = await client.post("/api/workflows", json=wf)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    r = await client.post(f"/api/workflows/{wid}/publish")
    assert r.status_code == 200, r.text
    await workers.start()
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": {"name": "Ada"}})
    assert r.status_code == 202, r.text
    eid = r.json()["executionId"]
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    r = await client.get(f"/api/executions/{eid}")
    body = r.json()
    assert body["output"] == {"b": {"echo": "hi Ada"}}, body
