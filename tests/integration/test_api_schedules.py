"""The schedules API: create, read, list, change, pause/resume, delete; errors and audit."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from maestro.settings import Settings
from tests.conftest import auth
from tests.integration.schedule_support import (
    FakeClock,
    api_on,
    audit_actions,
    create_schedule,
    utc,
)
from tests.integration.test_api_support import (
    assert_problem,
    create_workflow,
    noop_workflow,
    published_workflow,
)

NOW = utc("2026-06-01T12:00:30Z")


async def test_create_applies_documented_defaults_and_get_and_list_return_it(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        other = await published_workflow(client, noop_workflow("other"))
        r = await client.post(
            "/api/schedules", json={"workflowId": wid, "cron": "0  9 * * MON-FRI"}
        )
        assert r.status_code == 201, r.text
        s = r.json()
        assert r.headers["location"] == f"/api/schedules/{s['id']}"
        assert s["cron"] == "0 9 * * MON-FRI"
        assert s["timezone"] == "UTC"
        assert s["enabled"] is True
        assert s["input"] == {}
        assert s["catchupWindowSeconds"] == 3600
        assert s["maxCatchupRuns"] == 10
        assert s["overlapPolicy"] == "skip"
        assert s["jitterSeconds"] == 0
        assert s["nextRunAt"] == "2026-06-02T09:00:00Z"  # 1 June 2026 is a Monday, 12:00 UTC
        assert s["lastRunAt"] is None
        assert s["lastSkewMs"] is None
        assert s["missedCount"] == 0
        assert s["skippedCount"] == 0
        assert s["upcoming"] == [
            "2026-06-02T09:00:00Z",
            "2026-06-03T09:00:00Z",
            "2026-06-04T09:00:00Z",
            "2026-06-05T09:00:00Z",
            "2026-06-08T09:00:00Z",
        ]
        got = (await client.get(f"/api/schedules/{s['id']}")).json()
        assert got == s
        await create_schedule(client, other, cron="*/5 * * * *", timezone="Europe/Berlin")
        both = (await client.get("/api/schedules")).json()["items"]
        assert len(both) == 2
        only = (await client.get("/api/schedules", params={"workflowId": wid})).json()
        assert [i["id"] for i in only["items"]] == [s["id"]]
        page1 = (await client.get("/api/schedules", params={"limit": 1})).json()
        assert len(page1["items"]) == 1
        page2 = await client.get(
            "/api/schedules", params={"limit": 1, "cursor": page1["nextCursor"]}
        )
        assert len(page2.json()["items"]) == 1
        assert page2.json()["nextCursor"] is None
        assert page2.json()["items"][0]["id"] != page1["items"][0]["id"]


async def test_a_cron_error_says_where_and_why(settings: Settings, pool: asyncpg.Pool) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        r = await client.post("/api/schedules", json={"workflowId": wid, "cron": "0 25 * * *"})
        body = assert_problem(r, 422, "invalid_cron")
        assert body["position"] == 2
        assert body["field"] == "hour"
        assert "25" in body["reason"]
        assert "position 2" in body["detail"]
        r = await client.post("/api/schedules", json={"workflowId": wid, "cron": "* * * *"})
        assert assert_problem(r, 422, "invalid_cron")["field"] is None
        r = await client.post(
            "/api/schedules", json={"workflowId": wid, "cron": "* * * * *", "timezone": "Mars/Base"}
        )
        assert "Mars/Base" in assert_problem(r, 422, "invalid_timezone")["detail"]
        r = await client.post(
            "/api/schedules",
            json={"workflowId": wid, "cron": "* * * * *", "overlapPolicy": "queue_all"},
        )
        assert_problem(r, 422, "invalid_request")
        assert (await client.get("/api/schedules")).json()["items"] == []


async def test_schedules_need_an_active_published_workflow_of_the_tenant(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        draft = await create_workflow(client, noop_workflow("draft"))
        r = await client.post("/api/schedules", json={"workflowId": draft, "cron": "* * * * *"})
        assert_problem(r, 409, "workflow_not_published")
        wid = await published_workflow(client, noop_workflow())
        await client.post(f"/api/workflows/{wid}/archive")
        r = await client.post("/api/schedules", json={"workflowId": wid, "cron": "* * * * *"})
        assert_problem(r, 409, "workflow_archived")
        r = await client.post(
            "/api/schedules", json={"workflowId": str(uuid.uuid4()), "cron": "* * * * *"}
        )
        assert_problem(r, 404, "workflow_not_found")


async def test_patch_recomputes_the_next_run_and_is_audited(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="0 * * * *")
        assert s["nextRunAt"] == "2026-06-01T13:00:00Z"
        r = await client.patch(
            f"/api/schedules/{s['id']}",
            json={"cron": "30 14 * * *", "timezone": "Europe/London", "input": {"x": 1}},
        )
        assert r.status_code == 200, r.text
        changed = r.json()
        assert changed["nextRunAt"] == "2026-06-01T13:30:00Z"  # 14:30 BST
        assert changed["input"] == {"x": 1}
        r = await client.patch(f"/api/schedules/{s['id']}", json={"overlapPolicy": "allow"})
        assert r.json()["nextRunAt"] == "2026-06-01T13:30:00Z"
        assert r.json()["overlapPolicy"] == "allow"
        r = await client.patch(f"/api/schedules/{s['id']}", json={"cron": "99 * * * *"})
        assert_problem(r, 422, "invalid_cron")
        r = await client.patch(f"/api/schedules/{s['id']}", json={"workflowId": wid})
        assert_problem(r, 422, "invalid_request")
        actions = await audit_actions(pool, s["id"])
        assert [a for a, _ in actions] == ["schedule.create", "schedule.update", "schedule.update"]
        assert actions[1][1] == {"changed": ["cron", "input", "timezone"]}


async def test_pause_and_resume_are_idempotent_and_audited(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *")
        for _ in range(2):
            r = await client.post(f"/api/schedules/{s['id']}/pause")
            assert r.status_code == 200, r.text
            assert r.json()["enabled"] is False
        for _ in range(2):
            r = await client.post(f"/api/schedules/{s['id']}/resume")
            assert r.status_code == 200, r.text
            assert r.json()["enabled"] is True
        assert [a for a, _ in await audit_actions(pool, s["id"])] == [
            "schedule.create",
            "schedule.pause",
            "schedule.resume",
        ]


async def test_delete_removes_it_and_keeps_its_executions_history(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *")
        r = await client.delete(f"/api/schedules/{s['id']}")
        assert r.status_code == 204
        assert_problem(await client.get(f"/api/schedules/{s['id']}"), 404, "schedule_not_found")
        assert_problem(await client.delete(f"/api/schedules/{s['id']}"), 404, "schedule_not_found")
        assert_problem(await client.get("/api/schedules/not-a-uuid"), 404, "schedule_not_found")
        assert [a for a, _ in await audit_actions(pool, s["id"])] == [
            "schedule.create",
            "schedule.delete",
        ]


async def test_roles_and_tenants_are_enforced(settings: Settings, pool: asyncpg.Pool) -> None:
    async with api_on(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *")
        viewer = auth(roles=("viewer",))
        r = await client.post(
            "/api/schedules", json={"workflowId": wid, "cron": "* * * * *"}, headers=viewer
        )
        assert_problem(r, 403)
        assert (await client.get(f"/api/schedules/{s['id']}", headers=viewer)).status_code == 200
        assert_problem(await client.post(f"/api/schedules/{s['id']}/pause", headers=viewer), 403)
        editor = auth(roles=("editor",))
        assert_problem(await client.post("/api/schedules/reconcile", headers=editor), 403)
        other = auth(tenant="globex")
        assert_problem(
            await client.get(f"/api/schedules/{s['id']}", headers=other), 404, "schedule_not_found"
        )
        assert_problem(
            await client.patch(
                f"/api/schedules/{s['id']}", json={"cron": "1 * * * *"}, headers=other
            ),
            404,
            "schedule_not_found",
        )
        assert (await client.get("/api/schedules", headers=other)).json()["items"] == []
        r = await client.post(
            "/api/schedules", json={"workflowId": wid, "cron": "* * * * *"}, headers=other
        )
        assert_problem(r, 404, "workflow_not_found")


async def test_every_change_notifies_the_runners(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    listener = await asyncpg.connect(db_dsn)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("maestro_schedules", lambda *a: heard.put_nowait(a[2]))
    try:
        async with api_on(settings, pool, FakeClock(NOW)) as client:
            wid = await published_workflow(client, noop_workflow())
            s = await create_schedule(client, wid, cron="* * * * *")
            await client.patch(f"/api/schedules/{s['id']}", json={"cron": "5 * * * *"})
            await client.post(f"/api/schedules/{s['id']}/pause")
            await client.post(f"/api/schedules/{s['id']}/resume")
            await client.delete(f"/api/schedules/{s['id']}")
            async with asyncio.timeout(5):
                for _ in range(5):
                    assert await heard.get() == "maestro_schedules"
    finally:
        await listener.close()


async def test_metrics_are_served_in_prometheus_format(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics", headers={})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'maestro_schedule_triggers_total{result="fired"}' in text
    assert "maestro_schedule_trigger_skew_seconds_bucket" in text
    assert "maestro_schedule_next_run_lag_seconds" in text
