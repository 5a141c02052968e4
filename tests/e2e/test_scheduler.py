"""`maestro scheduler` as real processes on the real clock: probes, metrics, several
runners at once, and runners killed with SIGKILL while they work."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import Spawner, api_client, chain, publish, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def schedule(client: httpx.AsyncClient, workflow_id: str, **body: object) -> str:
    r = await client.post("/api/schedules", json={"workflowId": workflow_id, **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def ticks_by_schedule(dsn: str) -> dict[str, list[datetime]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT trigger->>'scheduleId' AS s, trigger->>'scheduledFor' AS t"
            " FROM workflow_executions WHERE trigger->>'type' = 'schedule'"
        )
    finally:
        await conn.close()
    found: dict[str, list[datetime]] = {}
    for r in rows:
        found.setdefault(r["s"], []).append(datetime.fromisoformat(r["t"].replace("Z", "+00:00")))
    return {k: sorted(v) for k, v in found.items()}


async def test_a_scheduler_process_fires_schedules_and_serves_probes_and_metrics(
    spawn: Spawner, db_dsn: str
) -> None:
    api = spawn.api(db_dsn)
    runner = spawn.scheduler(db_dsn)
    await asyncio.gather(api.wait_ready(), runner.wait_ready())
    async with api_client(api.url) as client:
        wid = await publish(client, chain("tick", 1))
        # Created after the runner went to sleep: the NOTIFY must wake it.
        sid = await schedule(client, wid, cron="* * * * * *", overlapPolicy="allow")

        async def fired() -> bool:
            return len((await ticks_by_schedule(db_dsn)).get(sid, [])) >= 3

        await wait_until(fired, what="three ticks of a per-second schedule", timeout=20)
        got = (await client.get(f"/api/schedules/{sid}")).json()
        assert got["lastRunAt"] is not None
        assert got["lastSkewMs"] is not None
    async with httpx.AsyncClient(base_url=runner.url, timeout=5) as probe:
        assert (await probe.get("/healthz")).status_code == 200
        assert (await probe.get("/readyz")).status_code == 200
        metrics = (await probe.get("/metrics")).text
    fired_line = next(
        line
        for line in metrics.splitlines()
        if line.startswith('maestro_schedule_triggers_total{result="fired"}')
    )
    assert float(fired_line.split()[-1]) >= 3
    assert "maestro_schedule_trigger_skew_seconds_count" in metrics
    assert await runner.terminate() == 0, runner.describe()
    assert "scheduler_stopped" in runner.stdout + runner.stderr
    assert await api.terminate() == 0, api.describe()


async def test_three_schedulers_killed_at_random_fire_every_tick_exactly_once(
    spawn: Spawner, db_dsn: str
) -> None:
    api = spawn.api(db_dsn)
    await api.wait_ready()
    async with api_client(api.url) as client:
        wid = await publish(client, chain("tick", 1))
        ids = [
            await schedule(client, wid, cron="* * * * * *", overlapPolicy="allow")
            for _ in range(40)
        ]
    started = datetime.now(UTC)
    runners = [spawn.scheduler(db_dsn) for _ in range(3)]
    await asyncio.gather(*(r.wait_ready() for r in runners))
    rng = random.Random(4)
    for _ in range(5):
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        victim = rng.randrange(len(runners))
        await runners[victim].kill()  # SIGKILL: no chance to finish anything
        runners[victim] = spawn.scheduler(db_dsn)
        await runners[victim].wait_ready()
    for r in runners:
        assert await r.terminate() == 0, r.describe()
    stopped = datetime.now(UTC)

    by_schedule = await ticks_by_schedule(db_dsn)
    assert sorted(by_schedule) == sorted(ids)
    for sid, fired in by_schedule.items():
        assert len(fired) == len(set(fired)), f"{sid} fired a tick twice"
        # Every second from the first tick to the last, none lost to a kill.
        span = int((fired[-1] - fired[0]).total_seconds()) + 1
        assert len(fired) == span, (sid, fired)
        assert fired[0] <= started + timedelta(seconds=3)
        assert fired[-1] >= stopped - timedelta(seconds=3)
    await api.terminate()


async def test_a_scheduler_killed_inside_its_transaction_is_replaced_without_loss(
    spawn: Spawner, db_dsn: str
) -> None:
    api = spawn.api(db_dsn)
    victim = spawn.scheduler(db_dsn)
    await asyncio.gather(api.wait_ready(), victim.wait_ready())
    async with api_client(api.url) as client:
        wid = await publish(client, chain("tick", 1))
        ids = [
            await schedule(
                client, wid, cron="* * * * * *", overlapPolicy="allow", maxCatchupRuns=100
            )
            for _ in range(10)
        ]
    blocker = await asyncpg.connect(db_dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        # The victim's next tick stops half-way: schedules locked, executions inserted.
        await blocker.execute("LOCK TABLE workflow_logs IN EXCLUSIVE MODE")

        async def stuck() -> bool:
            return bool(
                await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE NOT granted AND relation = 'workflow_logs'::regclass"
                )
            )

        await wait_until(stuck, what="the victim blocked inside its tick", timeout=10)
        await victim.kill()
        await tx.rollback()
    finally:
        await blocker.close()
    heir = spawn.scheduler(db_dsn)
    await heir.wait_ready()

    async def caught_up() -> bool:
        by_schedule = await ticks_by_schedule(db_dsn)
        return all(len(by_schedule.get(sid, [])) >= 4 for sid in ids)

    await wait_until(caught_up, what="the heir firing the schedules", timeout=20)
    assert await heir.terminate() == 0, heir.describe()
    for sid, fired in (await ticks_by_schedule(db_dsn)).items():
        assert len(fired) == len(set(fired)), f"{sid} fired a tick twice"
        span = int((fired[-1] - fired[0]).total_seconds()) + 1
        assert len(fired) == span, (sid, fired)
    await api.terminate()
