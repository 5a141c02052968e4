"""The schedule runner against PostgreSQL, on a clock the test moves: ticks, catch-up,
overlap policies, pause/resume, reconcile, several runners and a runner killed mid-tick."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg

from maestro.db.pool import create_pool
from maestro.settings import Settings
from maestro.triggers.schedule_plan import TickResult
from tests.integration.schedule_support import (
    FakeClock,
    api_on,
    audit_actions,
    create_schedule,
    get_schedule,
    runner,
    separate_pool,
    ticks,
    utc,
    z,
)
from tests.integration.test_api_support import noop_workflow, published_workflow

START = utc("2026-06-01T12:00:30Z")


async def test_a_due_tick_starts_one_execution_with_its_trigger_and_key(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *", input={"name": "cron"})
        assert s["nextRunAt"] == "2026-06-01T12:01:00Z"
        assert s["upcoming"][:3] == [
            "2026-06-01T12:01:00Z",
            "2026-06-01T12:02:00Z",
            "2026-06-01T12:03:00Z",
        ]
        r = runner(pool, db_dsn, clock)

        clock.set(utc("2026-06-01T12:00:59.900Z"))
        assert (await r.run_due()).checked == 0  # not due yet
        clock.set(utc("2026-06-01T12:01:00.012Z"))
        outcome = await r.run_due()
        assert outcome.ticks[TickResult.FIRED] == 1
        assert await r.run_due() == type(outcome)()  # nothing more to do at the same time

        rows = await pool.fetch(
            "SELECT e.trigger, e.input, e.status, k.key FROM workflow_executions e"
            " JOIN execution_idempotency_keys k ON k.execution_id = e.id"
        )
        assert len(rows) == 1
        assert rows[0]["trigger"] == {
            "type": "schedule",
            "scheduleId": s["id"],
            "scheduledFor": "2026-06-01T12:01:00Z",
        }
        assert rows[0]["input"] == {"name": "cron"}
        assert rows[0]["key"] == f"schedule:{s['id']}:2026-06-01T12:01:00Z"
        after = await get_schedule(client, s["id"])
        assert after["nextRunAt"] == "2026-06-01T12:02:00Z"
        assert after["lastScheduledFor"] == "2026-06-01T12:01:00Z"
        assert after["lastRunAt"] == "2026-06-01T12:01:00.012000Z"
        assert after["lastSkewMs"] == 12.0
        assert after["missedCount"] == 0
        # The execution is an ordinary one: visible through the executions API.
        listed = await client.get("/api/executions", params={"workflowId": wid})
        assert [e["trigger"]["type"] for e in listed.json()["items"]] == ["schedule"]


async def test_ten_minutes_down_replays_only_the_ticks_inside_a_five_minute_window(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(
            client, wid, cron="* * * * *", catchupWindowSeconds=300, overlapPolicy="allow"
        )
        # The runner was down from 12:00:30 to 12:10:30: ticks 12:01 ... 12:10 fell in it.
        clock.set(utc("2026-06-01T12:10:30Z"))
        outcome = await runner(pool, db_dsn, clock).run_due()

        # Inside the window (after 12:05:30): 12:06 ... 12:10. The rest is missed and counted.
        assert await ticks(pool, s["id"]) == [f"2026-06-01T12:{m:02d}:00Z" for m in range(6, 11)]
        assert outcome.ticks[TickResult.REPLAYED] == 4
        assert outcome.ticks[TickResult.FIRED] == 1
        assert outcome.ticks[TickResult.MISSED] == 5
        after = await get_schedule(client, s["id"])
        assert after["missedCount"] == 5
        assert after["nextRunAt"] == "2026-06-01T12:11:00Z"
        actions = await audit_actions(pool, s["id"])
        replayed = [d["scheduledFor"] for a, d in actions if a == "schedule.tick_replayed"]
        assert replayed == [f"2026-06-01T12:{m:02d}:00Z" for m in range(6, 10)]
        missed = [d for a, d in actions if a == "schedule.ticks_missed"]
        assert missed == [
            {
                "count": 5,
                "atLeast": False,
                "first": "2026-06-01T12:01:00Z",
                "last": "2026-06-01T12:05:00Z",
                "catchupWindowSeconds": 300,
                "maxCatchupRuns": 10,
            }
        ]


async def test_max_catchup_runs_bounds_the_replay_after_an_outage(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(
            client, wid, cron="* * * * *", maxCatchupRuns=2, overlapPolicy="allow"
        )
        clock.set(utc("2026-06-01T13:00:10Z"))  # an hour down: 60 ticks inside the window
        await runner(pool, db_dsn, clock).run_due()
        assert await ticks(pool, s["id"]) == [
            "2026-06-01T12:58:00Z",
            "2026-06-01T12:59:00Z",
            "2026-06-01T13:00:00Z",
        ]
        assert (await get_schedule(client, s["id"]))["missedCount"] == 57


async def test_overlap_skip_starts_nothing_while_the_previous_run_is_going(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *")
        assert s["overlapPolicy"] == "skip"
        r = runner(pool, db_dsn, clock)
        clock.set(utc("2026-06-01T12:01:00.005Z"))
        await r.run_due()
        clock.set(utc("2026-06-01T12:02:00.005Z"))  # no worker: the 12:01 run is still queued
        outcome = await r.run_due()
        assert outcome.ticks[TickResult.SKIPPED] == 1
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z"]
        first = (await get_schedule(client, s["id"]))["lastExecutionId"]
        assert (await get_schedule(client, s["id"]))["skippedCount"] == 1

        r2 = await client.post(f"/api/executions/{first}/cancel")
        assert r2.status_code == 200, r2.text
        clock.set(utc("2026-06-01T12:03:00.005Z"))
        await r.run_due()
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z", "2026-06-01T12:03:00Z"]
        skipped = [d for a, d in await audit_actions(pool, s["id"]) if a == "schedule.tick_skipped"]
        assert skipped == [{"scheduledFor": "2026-06-01T12:02:00Z", "reason": "overlap"}]


async def test_overlap_allow_starts_every_tick(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *", overlapPolicy="allow")
        r = runner(pool, db_dsn, clock)
        for minute in (1, 2, 3):
            clock.set(utc(f"2026-06-01T12:0{minute}:00.001Z"))
            await r.run_due()
        assert len(await ticks(pool, s["id"])) == 3


async def test_overlap_buffer_one_holds_one_tick_until_the_previous_run_ends(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *", overlapPolicy="buffer_one")
        r = runner(pool, db_dsn, clock)
        for minute in (1, 2, 3):  # 12:01 runs; 12:02 is buffered; 12:03 is skipped
            clock.set(utc(f"2026-06-01T12:0{minute}:00.001Z"))
            await r.run_due()
        mid = await get_schedule(client, s["id"])
        assert mid["bufferedFor"] == "2026-06-01T12:02:00Z"
        assert mid["skippedCount"] == 1
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z"]

        clock.set(utc("2026-06-01T12:03:10Z"))
        assert (await r.run_due()).checked == 1  # looked again; the previous run still goes
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z"]
        cancel = await client.post(f"/api/executions/{mid['lastExecutionId']}/cancel")
        assert cancel.status_code == 200, cancel.text
        clock.set(utc("2026-06-01T12:03:20Z"))
        outcome = await r.run_due()
        assert outcome.ticks[TickResult.FIRED] == 1
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z", "2026-06-01T12:02:00Z"]
        assert (await get_schedule(client, s["id"]))["bufferedFor"] is None


async def test_a_paused_schedule_fires_nothing_and_resumes_from_now(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *")
        paused = (await client.post(f"/api/schedules/{s['id']}/pause")).json()
        assert paused["enabled"] is False
        assert paused["nextRunAt"] is None
        assert paused["pausedReason"] == "paused by tester"
        r = runner(pool, db_dsn, clock)
        clock.set(utc("2026-06-01T12:05:30Z"))
        await r.run_due()
        assert await ticks(pool, s["id"]) == []

        resumed = (await client.post(f"/api/schedules/{s['id']}/resume")).json()
        assert resumed["enabled"] is True
        assert resumed["pausedReason"] is None
        assert resumed["nextRunAt"] == "2026-06-01T12:06:00Z"  # 12:01-12:05 are not replayed
        clock.set(utc("2026-06-01T12:06:00.002Z"))
        await r.run_due()
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:06:00Z"]
        assert (await get_schedule(client, s["id"]))["missedCount"] == 0


async def test_an_archived_workflow_pauses_its_schedules_with_a_reason(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *")
        archived = await client.post(f"/api/workflows/{wid}/archive")
        assert archived.status_code == 200, archived.text
        clock.set(utc("2026-06-01T12:01:00.001Z"))
        await runner(pool, db_dsn, clock).run_due()
        assert await ticks(pool, s["id"]) == []
        after = await get_schedule(client, s["id"])
        assert after["enabled"] is False
        assert after["pausedReason"].startswith("workflow_archived")
        assert ("schedule.pause", {"reason": after["pausedReason"]}) in await audit_actions(
            pool, s["id"]
        )
        again = await client.post(f"/api/schedules/{s['id']}/resume")
        assert again.status_code == 409
        assert again.json()["code"] == "workflow_archived"


async def test_jitter_delays_the_enqueue_but_not_the_nominal_time(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *", jitterSeconds=20)
        due = await pool.fetchval("SELECT due_at FROM scheduled_workflows")
        nominal = utc("2026-06-01T12:01:00Z")
        assert nominal <= due <= nominal + timedelta(seconds=20)
        clock.set(due + timedelta(milliseconds=1))
        await runner(pool, db_dsn, clock).run_due()
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z"]


async def test_denver_dst_days_fire_each_daily_time_exactly_once(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(utc("2026-03-07T00:00:00Z"))
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(
            client, wid, cron="30 2 * * *", timezone="America/Denver", overlapPolicy="allow"
        )
        s1 = await create_schedule(
            client, wid, cron="30 1 * * *", timezone="America/Denver", overlapPolicy="allow"
        )
        r = runner(pool, db_dsn, clock)
        # Walk minute by minute through both changes, as a runner that never sleeps too long.
        for start, end in (
            ("2026-03-07T00:00Z", "2026-03-10T00:00Z"),
            ("2026-10-31T00:00Z", "2026-11-03T00:00Z"),
        ):
            t = utc(start)
            if t > clock():
                await client.post(f"/api/schedules/{s['id']}/pause")
                await client.post(f"/api/schedules/{s1['id']}/pause")
                clock.set(t)
                await client.post(f"/api/schedules/{s['id']}/resume")
                await client.post(f"/api/schedules/{s1['id']}/resume")
            while t < utc(end):
                clock.set(t)
                await r.run_due()
                t += timedelta(minutes=5)
        # 02:30 does not exist on 8 March: it fires once, at 03:00 MDT (09:00 UTC).
        assert await ticks(pool, s["id"]) == [
            "2026-03-07T09:30:00Z",
            "2026-03-08T09:00:00Z",
            "2026-03-09T08:30:00Z",
            "2026-10-31T08:30:00Z",
            "2026-11-01T09:30:00Z",
            "2026-11-02T09:30:00Z",
        ]
        # 01:30 happens twice on 1 November: it fires once, at the first (MDT, 07:30 UTC).
        assert await ticks(pool, s1["id"]) == [
            "2026-03-07T08:30:00Z",
            "2026-03-08T08:30:00Z",
            "2026-03-09T07:30:00Z",
            "2026-10-31T07:30:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-02T08:30:00Z",
        ]


async def test_three_runners_over_500_schedules_enqueue_every_tick_exactly_once(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        for _ in range(500):
            await create_schedule(client, wid, cron="* * * * * *", overlapPolicy="allow")
    async with (
        separate_pool(db_dsn) as p1,
        separate_pool(db_dsn) as p2,
        separate_pool(db_dsn) as p3,
    ):
        runners = [runner(p, db_dsn, clock, batch_size=50) for p in (p1, p2, p3)]
        seconds = 5
        for i in range(1, seconds + 1):
            clock.set(START.replace(microsecond=0) + timedelta(seconds=i, milliseconds=3))
            outcomes = await asyncio.gather(*(r.run_due() for r in runners))
            assert sum(o.ticks[TickResult.FIRED] for o in outcomes) == 500
            assert sum(1 for o in outcomes if o.checked) >= 2  # the work really was shared
    rows = await pool.fetch(
        "SELECT trigger->>'scheduleId' AS s, trigger->>'scheduledFor' AS t, count(*) AS n"
        " FROM workflow_executions GROUP BY 1, 2"
    )
    assert len(rows) == 500 * seconds
    assert {r["n"] for r in rows} == {1}
    expected = {z(START.replace(microsecond=0) + timedelta(seconds=i)) for i in range(1, 6)}
    assert {r["t"] for r in rows} == expected


async def test_a_runner_killed_mid_tick_loses_and_doubles_nothing(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        ids = [
            (await create_schedule(client, wid, cron="* * * * *", overlapPolicy="allow"))["id"]
            for _ in range(20)
        ]
    clock.set(utc("2026-06-01T12:01:00.002Z"))
    blocker = await asyncpg.connect(db_dsn)
    victim_pool = await create_pool(db_dsn, max_size=2)
    try:
        # Hold the log table so the victim's tick transaction stops half-way: schedules
        # locked, executions and idempotency keys inserted, nothing committed.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE workflow_logs IN EXCLUSIVE MODE")
        victim = asyncio.create_task(runner(victim_pool, db_dsn, clock).run_due())
        pid = None
        async with asyncio.timeout(10):
            while pid is None:
                pid = await pool.fetchval(
                    "SELECT pid FROM pg_locks"
                    " WHERE NOT granted AND relation = 'workflow_logs'::regclass"
                )
        # Another runner meanwhile finds nothing to do: the victim holds those schedules.
        assert (await runner(pool, db_dsn, clock).run_due()).checked == 0
        # Kill the victim: its backend dies and its transaction rolls back.
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        try:
            await victim
            raise AssertionError("the victim's transaction should have failed")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
            pass
        await tx.rollback()
    finally:
        await blocker.close()
        victim_pool.terminate()
    assert await pool.fetchval("SELECT count(*) FROM workflow_executions") == 0
    outcome = await runner(pool, db_dsn, clock).run_due()
    assert outcome.ticks[TickResult.FIRED] == 20
    for sid in ids:
        assert await ticks(pool, sid) == ["2026-06-01T12:01:00Z"]


async def test_a_tick_enqueued_twice_starts_one_execution(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    """Even if next_run_at were moved back (a restore, a hand edit), the key holds."""
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        s = await create_schedule(client, wid, cron="* * * * *", overlapPolicy="allow")
        clock.set(utc("2026-06-01T12:01:00.002Z"))
        r = runner(pool, db_dsn, clock)
        await r.run_due()
        await pool.execute(
            "UPDATE scheduled_workflows SET next_run_at = '2026-06-01T12:01:00Z',"
            " due_at = '2026-06-01T12:01:00Z'"
        )
        outcome = await r.run_due()
        assert outcome.ticks[TickResult.DUPLICATE] == 1
        assert await ticks(pool, s["id"]) == ["2026-06-01T12:01:00Z"]


async def test_reconcile_repairs_replays_and_pauses_and_a_second_run_changes_nothing(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(START)
    async with api_on(settings, pool, clock) as client:
        wid = await published_workflow(client, noop_workflow())
        gone = await published_workflow(client, noop_workflow("soon-archived"))
        changed = await create_schedule(client, wid, cron="* * * * *")
        half = await create_schedule(client, wid, cron="*/5 * * * *")
        stale = await create_schedule(client, wid, cron="0 * * * *")
        overdue = await create_schedule(client, wid, cron="* * * * *", overlapPolicy="allow")
        orphan = await create_schedule(client, gone, cron="* * * * *")
        fine = await create_schedule(client, wid, cron="0 0 1 1 *")
        await client.post(f"/api/schedules/{stale['id']}/pause")
        await client.post(f"/api/workflows/{gone}/archive")
        # What a crash or a hand edit can leave behind:
        await pool.execute(
            "UPDATE scheduled_workflows SET cron = '30 * * * *' WHERE id = $1",
            uuid.UUID(changed["id"]),
        )
        await pool.execute(
            "UPDATE scheduled_workflows SET next_run_at = NULL WHERE id = $1",
            uuid.UUID(half["id"]),
        )
        await pool.execute(
            "UPDATE scheduled_workflows SET next_run_at = now(), due_at = now() WHERE id = $1",
            uuid.UUID(stale["id"]),
        )
        clock.set(utc("2026-06-01T12:03:30Z"))  # overdue has three ticks waiting
        snapshot = await pool.fetch("SELECT * FROM scheduled_workflows ORDER BY id")

        dry = await client.post("/api/schedules/reconcile", params={"dryRun": "true"})
        assert dry.status_code == 200, dry.text
        assert await pool.fetch("SELECT * FROM scheduled_workflows ORDER BY id") == snapshot
        assert await pool.fetchval("SELECT count(*) FROM workflow_executions") == 0

        first = await client.post("/api/schedules/reconcile")
        assert first.status_code == 200, first.text
        report = first.json()
        assert report == {**dry.json(), "dryRun": False}
        assert report["checked"] == 6
        # changed (cron edited), half (no next run), stale (paused with a next run), orphan
        assert report["updated"] == 4
        assert report["paused"] == 1
        # overdue's three ticks (two replayed, one on time)
        assert report["replayed"] == 3
        assert report["skipped"] == 0
        assert await ticks(pool, overdue["id"]) == [
            "2026-06-01T12:01:00Z",
            "2026-06-01T12:02:00Z",
            "2026-06-01T12:03:00Z",
        ]
        assert (await get_schedule(client, changed["id"]))["nextRunAt"] == "2026-06-01T12:30:00Z"
        assert (await get_schedule(client, half["id"]))["nextRunAt"] == "2026-06-01T12:05:00Z"
        assert (await get_schedule(client, stale["id"]))["nextRunAt"] is None
        assert (await get_schedule(client, orphan["id"]))["pausedReason"].startswith(
            "workflow_archived"
        )
        assert (await get_schedule(client, fine["id"]))["nextRunAt"] == "2027-01-01T00:00:00Z"

        settled = await pool.fetch("SELECT * FROM scheduled_workflows ORDER BY id")
        second = (await client.post("/api/schedules/reconcile")).json()
        assert second == {
            "dryRun": False,
            "checked": 6,
            "updated": 0,
            "paused": 0,
            "replayed": 0,
            "skipped": 0,
            "buffered": 0,
        }
        assert await pool.fetch("SELECT * FROM scheduled_workflows ORDER BY id") == settled
        audited = await pool.fetch(
            "SELECT actor, details FROM audit_log WHERE action = 'schedule.reconcile' ORDER BY id"
        )
        assert [(r["actor"], r["details"]["dryRun"]) for r in audited] == [
            ("tester", True),
            ("tester", False),
            ("tester", False),
        ]
