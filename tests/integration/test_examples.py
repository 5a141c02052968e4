"""Every workflow in examples/ runs to `succeeded` (approvals are approved as a person would)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import WorkerHandle, wait_for_status

EXAMPLES = Path(__file__).parents[2] / "examples"
WORKFLOWS = sorted(
    p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".json") and ".input" not in p.name
)


def test_every_example_has_an_input() -> None:
    assert WORKFLOWS
    for path in WORKFLOWS:
        assert path.with_name(path.stem + ".input.json").exists(), path


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
async def test_example_runs_to_success(
    path: Path, client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    ctype = "application/yaml" if path.suffix == ".yaml" else "application/json"
    r = await client.post(
        "/api/workflows", content=path.read_bytes(), headers={"Content-Type": ctype}
    )
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert (await client.post(f"/api/workflows/{wid}/publish")).status_code == 200
    simulated = await client.post(
        f"/api/workflows/{wid}/simulate",
        json={"input": json.loads(path.with_name(path.stem + ".input.json").read_text())},
    )
    assert simulated.json()["valid"], simulated.text
    await workers.start()
    payload = json.loads(path.with_name(path.stem + ".input.json").read_text())
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": payload})
    eid = r.json()["executionId"]
    async with asyncio.timeout(30):
        while (
            status := await wait_for_status(db_dsn, eid, {"succeeded", "failed", "waiting"})
        ) == "waiting":
            tasks = (await client.get("/api/human-tasks", params={"executionId": eid})).json()[
                "items"
            ]
            for task in tasks:
                done = await client.post(
                    f"/api/human-tasks/{task['id']}/complete",
                    json={"decision": "approve", "comment": "ok"},
                )
                assert done.status_code == 200, done.text
            if not tasks:
                await wait_for_status(db_dsn, eid, {"succeeded", "failed"})
    execution = (await client.get(f"/api/executions/{eid}")).json()
    assert status in ("succeeded", "waiting")
    assert execution["status"] == "succeeded", execution
    assert all(s["status"] in ("succeeded", "skipped") for s in execution["steps"])
