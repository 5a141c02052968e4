"""`maestro up`: embedded PostgreSQL, API and worker in one process (DESIGN §1)."""

from __future__ import annotations

import json
import re
import socket
import stat
import uuid
from pathlib import Path

import asyncpg
import psutil
import pytest

from tests.e2e.conftest import (
    MaestroProcess,
    Spawner,
    api_client,
    execute,
    postgres_processes,
    postmasters,
    wait_execution,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

JWT_LINE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def admin_headers(data_dir: Path) -> dict[str, str]:
    token = (data_dir / "admin-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def start_up(spawn: Spawner, data_dir: Path) -> MaestroProcess:
    up = spawn.up(data_dir)
    await up.wait_ready()
    return up


async def run_tour(up: MaestroProcess, data_dir: Path) -> tuple[str, str]:
    """The README's five-minute tour, step by step. Returns the workflow and execution ids."""
    async with api_client(up.url, admin_headers(data_dir)) as client:
        # 1. Create the workflow from YAML: a draft.
        r = await client.post(
            "/api/workflows",
            content=(EXAMPLES / "hello.yaml").read_bytes(),
            headers={"Content-Type": "application/yaml"},
        )
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        # 2. Dry-run it.
        r = await client.post(f"/api/workflows/{wid}/simulate", json={"input": {"name": "Ada"}})
        assert r.status_code == 200, r.text
        # 3. Publish, execute with an idempotency key.
        r = await client.post(f"/api/workflows/{wid}/publish")
        assert r.status_code == 200, r.text
        key = {"Idempotency-Key": f"tour-{data_dir.name}-{up.port}"}
        body = {"input": {"name": "Ada"}}
        r = await client.post(f"/api/workflows/{wid}/execute", json=body, headers=key)
        assert r.status_code == 202, r.text
        eid = r.json()["executionId"]
        # 4. It finishes with the documented output; the logs are there.
        execution = await wait_execution(client, eid, {"succeeded", "failed", "cancelled"})
        assert execution["status"] == "succeeded", execution
        assert [s["status"] for s in execution["steps"]] == ["succeeded", "succeeded"], execution
        assert execution["output"] == {"shout": {"loud": "HELLO, ADA!", "length": 11}}, execution
        r = await client.get(f"/api/executions/{eid}/logs")
        assert r.status_code == 200, r.text
        assert r.text.count("step_succeeded") == 2, r.text
        # The same Idempotency-Key returns the same execution.
        r = await client.post(f"/api/workflows/{wid}/execute", json=body, headers=key)
        assert r.status_code in (200, 202), r.text
        assert r.json()["executionId"] == eid, r.text
    return wid, eid


async def run_schedule_tour(up: MaestroProcess, data_dir: Path, wid: str) -> str:
    """The README's schedule step: `up` runs the scheduler; a tick runs the workflow."""
    async with api_client(up.url, admin_headers(data_dir)) as client:
        body = {"workflowId": wid, "cron": "*/10 * * * * *", "input": {"name": "cron"}}
        r = await client.post("/api/schedules", json=body)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def ticked() -> list[dict[str, object]]:
            r = await client.get("/api/executions", params={"workflowId": wid})
            return [e for e in r.json()["items"] if e["trigger"]["type"] == "schedule"]

        [first, *_] = await wait_until(ticked, timeout=30, what="a scheduled execution")
        done = await wait_execution(client, str(first["id"]), {"succeeded", "failed"})
        assert done["output"] == {"shout": {"loud": "HELLO, CRON!", "length": 12}}, done
        r = await client.post(f"/api/schedules/{sid}/pause")
        assert r.status_code == 200, r.text
    return str(sid)


async def stop_cleanly(up: MaestroProcess, data_dir: Path) -> None:
    """SIGTERM: exit 0 within a bound, and no PostgreSQL left running on the data dir."""
    assert await up.terminate(timeout=20) == 0, up.describe()
    assert "Traceback" not in up.stderr, up.describe()
    left = postgres_processes(data_dir)
    assert not left, [p.cmdline() for p in left]


async def test_up_tour_stop_and_restart(spawn: Spawner, data_dir: Path) -> None:
    up = await start_up(spawn, data_dir)

    # It prints where it listens and an admin token, the one kept in <data>/admin-token.
    out = up.stdout
    assert up.url in out, out
    printed = [line.strip() for line in out.splitlines() if JWT_LINE.match(line.strip())]
    token_file = data_dir / "admin-token"
    assert printed == [token_file.read_text().strip()], out
    for name in ("admin-token", "jwt-secret"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    assert len(postmasters(data_dir)) == 1

    async with api_client(up.url, {}) as anonymous:
        r = await anonymous.get("/api/workflows")
        assert r.status_code == 401, r.text
        r = await anonymous.get("/api/workflows", headers=admin_headers(data_dir))
        assert r.status_code == 200, r.text

    wid, eid = await run_tour(up, data_dir)
    sid = await run_schedule_tour(up, data_dir, wid)
    await stop_cleanly(up, data_dir)

    # Same data dir again: same secret, same database, the workflow and its run are there.
    secret = (data_dir / "jwt-secret").read_text()
    up2 = await start_up(spawn, data_dir)
    assert (data_dir / "jwt-secret").read_text() == secret
    async with api_client(up2.url, admin_headers(data_dir)) as client:
        r = await client.get(f"/api/workflows/{wid}")
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "hello"
        r = await client.get(f"/api/executions/{eid}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded"
        r = await client.get(f"/api/schedules/{sid}")
        assert (r.status_code, r.json()["enabled"]) == (200, False), r.text
    await stop_cleanly(up2, data_dir)


async def test_up_after_sigkill_takes_over_the_orphan(spawn: Spawner, data_dir: Path) -> None:
    up = await start_up(spawn, data_dir)
    wid, eid = await run_tour(up, data_dir)
    [orphan] = postmasters(data_dir)

    await up.kill()
    # Nobody stopped the server: it is still running, ownerless.
    assert orphan.is_running()
    assert orphan.status() != psutil.STATUS_ZOMBIE
    assert [p.pid for p in postmasters(data_dir)] == [orphan.pid]

    up2 = await start_up(spawn, data_dir)
    servers = postmasters(data_dir)
    assert len(servers) == 1, [(p.pid, p.cmdline()) for p in servers]
    assert servers[0].pid != orphan.pid, "the orphan should be stopped and a server started anew"
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    async with api_client(up2.url, admin_headers(data_dir)) as client:
        r = await client.get(f"/api/workflows/{wid}")
        assert r.status_code == 200, r.text
        r = await client.get(f"/api/executions/{eid}")
        assert r.json()["status"] == "succeeded", r.text
    # ...and it still runs work: the README's next example, which waits for an approval.
    async with api_client(up2.url, admin_headers(data_dir)) as client:
        r = await client.post(
            "/api/workflows",
            content=(EXAMPLES / "order-approval.yaml").read_bytes(),
            headers={"Content-Type": "application/yaml"},
        )
        assert r.status_code == 201, r.text
        order_wf = r.json()["id"]
        r = await client.post(f"/api/workflows/{order_wf}/publish")
        assert r.status_code == 200, r.text
        order = json.loads((EXAMPLES / "order-approval.input.json").read_text())
        order_ex = await execute(client, order_wf, order)
        await wait_execution(client, order_ex, {"waiting"})

        async def open_task() -> dict[str, object] | None:
            r = await client.get("/api/human-tasks", params={"executionId": order_ex})
            items = r.json()["items"]
            return items[0] if items else None

        task = await wait_until(open_task, timeout=10, what="the approval task")
        assert task["assignees"] == ["ops-lead@example.com"], task
        r = await client.post(
            f"/api/human-tasks/{task['id']}/complete", json={"decision": "approve"}
        )
        assert r.status_code == 200, r.text
        done = await wait_execution(client, order_ex, {"succeeded", "failed", "cancelled"})
        assert done["status"] == "succeeded", done
        assert done["output"] == {"confirm": {"orderId": "A-1001", "confirmed": True}}, done
    await stop_cleanly(up2, data_dir)


async def test_second_up_on_the_same_data_dir_fails_clearly(spawn: Spawner, data_dir: Path) -> None:
    first = await start_up(spawn, data_dir)
    token_before = (data_dir / "admin-token").read_text()

    second = spawn.up(data_dir)
    rc = await second.wait_exit(timeout=30)
    assert rc != 0, second.describe()
    assert "another maestro process" in second.stderr, second.describe()
    assert str(first.pid) in second.stderr, second.describe()
    assert "Traceback" not in second.stderr, second.describe()

    # The first one is untouched: same token, one server, still running work.
    assert (data_dir / "admin-token").read_text() == token_before
    assert len(postmasters(data_dir)) == 1
    await run_tour(first, data_dir)
    await stop_cleanly(first, data_dir)


async def test_up_on_a_taken_port_fails_clearly_and_stops_postgres(
    spawn: Spawner, data_dir: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = spawn("up", "--port", str(port), MAESTRO_DATA_DIR=str(data_dir))
        rc = await up.wait_exit(timeout=30)
    assert rc != 0, up.describe()
    assert "Traceback" not in up.stderr, up.describe()
    assert "Task was destroyed" not in up.stderr, up.describe()
    assert f"maestro: the API server could not start on 127.0.0.1:{port}" in up.stderr
    assert "address already in use" in up.stdout, up.describe()
    left = postgres_processes(data_dir)
    assert not left, [p.cmdline() for p in left]


async def test_sigterm_while_up_is_starting_stops_postgres_too(
    spawn: Spawner, data_dir: Path
) -> None:
    """A SIGTERM that lands while the embedded PostgreSQL is being set up (before the event
    loop handles signals) must still stop that server: nobody else would."""
    up = spawn.up(data_dir)

    async def pg_starting() -> bool:
        assert up.proc.poll() is None, up.describe()
        return "embedded_pg_starting" in up.stdout

    await wait_until(
        pg_starting, timeout=30, what="the embedded PostgreSQL to start", interval=0.005
    )
    assert await up.terminate(timeout=30) == 0, up.describe()
    assert "Traceback" not in up.stderr, up.describe()
    left = postgres_processes(data_dir)
    assert not left, [p.cmdline() for p in left]

    # The data dir is fine for the next start.
    up2 = await start_up(spawn, data_dir)
    await stop_cleanly(up2, data_dir)


async def test_up_with_database_url_uses_it(spawn: Spawner, data_dir: Path, db_dsn: str) -> None:
    up = spawn.up(data_dir, DATABASE_URL=db_dsn)
    await up.wait_ready()
    assert not (data_dir / "pgdata").exists()
    assert not postgres_processes(data_dir)
    _, eid = await run_tour(up, data_dir)
    await stop_cleanly(up, data_dir)
    conn = await asyncpg.connect(db_dsn)
    try:
        status = await conn.fetchval(
            "SELECT status FROM workflow_executions WHERE id = $1", uuid.UUID(eid)
        )
    finally:
        await conn.close()
    assert status == "succeeded"
