"""The executor against a real PostgreSQL: retries, timeouts, DLQ, skips, delays, approvals,
cancellation, leases, fencing and fair claiming."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import BUILTIN_HANDLERS, StepContext
from tests.conftest import WorkerHandle, wait_for_status


async def start_execution(
    client: httpx.AsyncClient, definition: dict[str, Any], input: dict[str, Any] | None = None
) -> str:
    r = await client.post("/api/workflows", json=definition)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert (await client.post(f"/api/workflows/{wid}/publish")).status_code == 200
    r = await client.post(f"/api/workflows/{wid}/execute", json={"input": input or {}})
    assert r.status_code == 202, r.text
    return str(r.json()["executionId"])


async def steps_of(client: httpx.AsyncClient, eid: str) -> dict[str, dict[str, Any]]:
    body = (await client.get(f"/api/executions/{eid}")).json()
    return {s["stepId"]: s for s in body["steps"]}


def one_step(
    step_type: str = "noop", config: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    step = {"id": "s", "type": step_type, "actionConfig": config or {}, **extra}
    return {"name": "t", "steps": [step]}


def with_noop(handler: Any) -> dict[str, Any]:
    return {**BUILTIN_HANDLERS, "noop": handler}


async def test_retryable_failure_retries_then_succeeds(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    calls: list[int] = []

    async def flaky(ctx: StepContext, config: Any) -> Any:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise StepError(ErrorClass.PROVIDER_ERROR, "upstream answered 503")
        return {"ok": True}

    await workers.start(handlers=with_noop(flaky))
    retry = {"maxAttempts": 3, "initialDelaySeconds": 0.05, "maxDelaySeconds": 0.1}
    eid = await start_execution(client, one_step(retry=retry))
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    step = (await steps_of(client, eid))["s"]
    assert calls == [1, 2, 3]
    assert step["attempts"] == 3
    assert step["output"] == {"ok": True}
    logs = (await client.get(f"/api/executions/{eid}/logs")).json()["items"]
    assert [line["event"] for line in logs if line["stepId"] == "s"] == [
        "step_failed",
        "step_failed",
        "step_succeeded",
    ]


async def test_exhausted_retries_go_to_dlq_and_fail_execution(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    async def broken(ctx: StepContext, config: Any) -> Any:
        raise StepError(ErrorClass.NETWORK, "connection reset")

    await workers.start(handlers=with_noop(broken))
    retry = {"maxAttempts": 2, "initialDelaySeconds": 0.05, "maxDelaySeconds": 0.05}
    eid = await start_execution(client, one_step(retry=retry))
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "failed"
    execution = (await client.get(f"/api/executions/{eid}")).json()
    assert execution["error"]["class"] == "network"
    assert execution["error"]["stepId"] == "s"
    step = execution["steps"][0]
    assert (step["status"], step["attempts"]) == ("dead", 2)
    dlq = (await client.get("/api/dlq")).json()["items"]
    assert [(d["executionId"], d["stepId"], d["error"]["class"]) for d in dlq] == [
        (eid, "s", "network")
    ]


async def test_non_retryable_error_is_dead_at_first_attempt(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    definition = one_step(config={"x": "{{ input.missing }}"}, retry={"maxAttempts": 5})
    eid = await start_execution(client, definition, {"present": 1})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "failed"
    step = (await steps_of(client, eid))["s"]
    assert step["status"] == "dead"
    assert step["attempts"] == 1
    assert step["error"]["class"] == "validation"
    assert "missing" in step["error"]["message"]


async def test_timeout_is_enforced_and_retried(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    async def hangs_once(ctx: StepContext, config: Any) -> Any:
        if ctx.attempt == 1:
            await asyncio.Event().wait()  # a provider that never answers
        return "answered"

    await workers.start(handlers=with_noop(hangs_once))
    retry = {"maxAttempts": 2, "initialDelaySeconds": 0.05, "maxDelaySeconds": 0.05}
    eid = await start_execution(client, one_step(timeoutSeconds=0.3, retry=retry))
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    logs = (await client.get(f"/api/executions/{eid}/logs")).json()["items"]
    failed = [line for line in logs if line["event"] == "step_failed"]
    assert len(failed) == 1
    assert "timeout" in failed[0]["message"]


async def test_retry_after_is_honoured(
    client: httpx.AsyncClient, workers: WorkerHandle, pool: asyncpg.Pool, db_dsn: str
) -> None:
    async def limited(ctx: StepContext, config: Any) -> Any:
        if ctx.attempt == 1:
            raise StepError(ErrorClass.RATE_LIMITED, "slow down", retry_after=1.0)
        return "ok"

    await workers.start(handlers=with_noop(limited))
    retry = {"maxAttempts": 2, "initialDelaySeconds": 0.01, "maxDelaySeconds": 0.01}
    eid = await start_execution(client, one_step(retry=retry))
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    times = await pool.fetch(
        "SELECT created_at FROM workflow_logs WHERE execution_id = $1 AND step_id = 's' "
        "ORDER BY id",
        uuid.UUID(eid),
    )
    assert (times[1]["created_at"] - times[0]["created_at"]) >= timedelta(seconds=0.95)


async def test_if_false_skips_and_skips_cascade(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    definition = {
        "name": "skips",
        "steps": [
            {"id": "start", "type": "noop", "actionConfig": {"v": 1}},
            {"id": "gate", "type": "noop", "needs": ["start"], "if": "{{ input.go }}"},
            {"id": "after_gate", "type": "noop", "needs": ["gate"]},
            {"id": "join", "type": "noop", "needs": ["gate", "start"]},
        ],
    }
    eid = await start_execution(client, definition, {"go": False})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    steps = await steps_of(client, eid)
    assert {k: v["status"] for k, v in steps.items()} == {
        "start": "succeeded",
        "gate": "skipped",
        "after_gate": "skipped",  # it needs only skipped steps
        "join": "succeeded",  # one of its needs succeeded
    }
    execution = (await client.get(f"/api/executions/{eid}")).json()
    assert execution["output"] == {"after_gate": None, "join": {}}


async def test_step_sees_outputs_input_and_stable_idempotency_key(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    definition = {
        "name": "ctx",
        "steps": [
            {"id": "a", "type": "noop", "actionConfig": {"n": "{{ input.n * 2 }}"}},
            {
                "id": "b",
                "type": "noop",
                "needs": ["a"],
                "actionConfig": {
                    "n": "{{ steps.a.output.n + 1 }}",
                    "key": "{{ execution.idempotencyKey }}",
                    "trigger": "{{ trigger.type }}",
                },
            },
        ],
    }
    eid = await start_execution(client, definition, {"n": 20})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    output = (await client.get(f"/api/executions/{eid}")).json()["output"]
    assert output == {"b": {"n": 41, "key": f"{eid}:b", "trigger": "api"}}


async def test_delay_is_durable_and_holds_no_worker(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    worker = await workers.start()
    eid = await start_execution(client, one_step("delay", {"seconds": 1.0}))
    assert await wait_for_status(db_dsn, eid, {"waiting"}) == "waiting"
    assert (await steps_of(client, eid))["s"]["status"] == "waiting"
    assert worker._inflight == {}  # no worker slot is held while the delay runs
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    execution = (await client.get(f"/api/executions/{eid}")).json()
    assert execution["output"] == {"s": {"waitedSeconds": 1.0}}
    started = datetime.fromisoformat(execution["startedAt"])
    finished = datetime.fromisoformat(execution["finishedAt"])
    assert finished - started >= timedelta(seconds=1)
    assert execution["steps"][0]["attempts"] == 1


async def test_delay_survives_worker_restart(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    eid = await start_execution(client, one_step("delay", {"seconds": 1.0}))
    assert await wait_for_status(db_dsn, eid, {"waiting"}) == "waiting"
    await workers.stop_all()
    await workers.start()
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"


async def test_cancel_stops_a_running_step(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def blocks(ctx: StepContext, config: Any) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await workers.start(handlers=with_noop(blocks))
    eid = await start_execution(client, one_step(timeoutSeconds=60))
    await asyncio.wait_for(started.wait(), 10)
    r = await client.post(f"/api/executions/{eid}/cancel")
    assert r.status_code == 200, r.text
    await asyncio.wait_for(cancelled.wait(), 10)
    execution = (await client.get(f"/api/executions/{eid}")).json()
    assert execution["status"] == "cancelled"
    assert execution["steps"][0]["status"] == "cancelled"


async def test_expired_lease_is_reclaimed_by_another_worker(
    client: httpx.AsyncClient, workers: WorkerHandle, pool: asyncpg.Pool, db_dsn: str
) -> None:
    eid = await start_execution(client, one_step())
    # A worker that claims the step and then vanishes (its lease runs out).
    claimed = await pool.fetch("SELECT * FROM maestro_claim_steps('ghost', 10, 30)")
    assert [r["execution_id"] for r in claimed] == [uuid.UUID(eid)]
    await pool.execute(
        "UPDATE step_runs SET lease_expires_at = now() - interval '1 second' "
        "WHERE worker_id = 'ghost'"
    )
    await workers.start(lease_seconds=2.0)
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    step = (await steps_of(client, eid))["s"]
    assert step["attempts"] == 2
    events = [
        line["event"] for line in (await client.get(f"/api/executions/{eid}/logs")).json()["items"]
    ]
    assert "step_lease_expired" in events
    # The ghost comes back and reports success for its attempt: it is ignored (fencing).
    row = claimed[0]
    await pool.fetch(
        "SELECT * FROM maestro_complete_steps('ghost', $1, $2, $3, $4, $5, $6, $7, $8, "
        "$9, $10, 0, 30)",
        [row["id"]],
        [row["attempts"]],
        ["succeeded"],
        ['{"from": "ghost"}'],
        [None],
        [None],
        [None],
        [1.0],
        [None],
        [None],
    )
    assert (await steps_of(client, eid))["s"]["output"] == {}
    successes = await pool.fetchval(
        "SELECT count(*) FROM workflow_logs WHERE execution_id = $1 AND event = 'step_succeeded'",
        uuid.UUID(eid),
    )
    assert successes == 1


async def test_claims_are_fair_across_tenants(pool: asyncpg.Pool) -> None:
    """A tenant with 10,000 queued steps does not delay another tenant's single step."""
    from maestro.engine.compiled import compile_definition_data
    from maestro.engine.executions import create_execution

    definition = one_step()
    compiled = compile_definition_data(definition)
    async with pool.acquire() as conn:
        for tenant in ("big", "small"):
            await conn.execute("INSERT INTO tenants (id) VALUES ($1)", tenant)
            await conn.execute(
                "INSERT INTO workflows (tenant_id, id, name, draft, latest_version) "
                "VALUES ($1, $2, 't', $3, 1)",
                tenant,
                uuid.UUID(int=1),
                definition,
            )
            await conn.execute(
                "INSERT INTO workflow_versions (tenant_id, workflow_id, version, definition) "
                "VALUES ($1, $2, 1, $3)",
                tenant,
                uuid.UUID(int=1),
                definition,
            )
        # The big tenant's backlog, inserted in bulk (older than the small tenant's step).
        await conn.execute(
            """
            WITH e AS (
                INSERT INTO workflow_executions (tenant_id, id, workflow_id, workflow_version,
                                                 trigger, input, remaining_steps, created_at)
                SELECT 'big', gen_random_uuid(), $1, 1, '{}', '{}', 1, now() - interval '1 hour'
                  FROM generate_series(1, 10000)
                RETURNING id
            )
            INSERT INTO step_runs (tenant_id, execution_id, step_id, step_type, status,
                                   pending_needs, is_leaf, max_attempts, run_at)
            SELECT 'big', id, 's', 'noop', 'ready', 0, true, 3, now() - interval '1 hour' FROM e
            """,
            uuid.UUID(int=1),
        )
        small = await create_execution(
            conn,
            tenant="small",
            workflow_id=uuid.UUID(int=1),
            version=1,
            workflow=compiled,
            input={},
            trigger={"type": "api"},
            correlation_id=None,
        )
        claimed = await conn.fetch("SELECT * FROM maestro_claim_steps('w1', 16, 30)")
    tenants = [r["tenant_id"] for r in claimed]
    assert "small" in tenants, "the small tenant's step waited behind the big backlog"
    assert [r["execution_id"] for r in claimed if r["tenant_id"] == "small"] == [small.execution_id]
    assert len(claimed) == 16


@pytest.mark.parametrize("grace", [5.0, 0.2])
async def test_graceful_shutdown_finishes_or_releases(
    client: httpx.AsyncClient, workers: WorkerHandle, pool: asyncpg.Pool, db_dsn: str, grace: float
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(ctx: StepContext, config: Any) -> Any:
        started.set()
        await release.wait()
        return "done"

    worker = await workers.start(handlers=with_noop(slow), shutdown_grace_seconds=grace)
    eid = await start_execution(client, one_step(timeoutSeconds=60))
    await asyncio.wait_for(started.wait(), 10)
    shutdown = asyncio.create_task(worker.shutdown())
    if grace > 1:
        release.set()  # the step finishes within the grace period: recorded as succeeded
        await shutdown
        assert await wait_for_status(db_dsn, eid, {"succeeded"}) == "succeeded"
    else:
        await shutdown  # grace ran out: the step goes back to the queue, not lost
        row = await pool.fetchrow(
            "SELECT status, attempts FROM step_runs WHERE execution_id = $1", uuid.UUID(eid)
        )
        # Back in the queue, and the interrupted attempt does not count against the retries.
        assert (row["status"], row["attempts"]) == ("ready", 0)
        workers.workers.remove(worker)
        release.set()
        await workers.start(handlers=with_noop(slow))
        assert await wait_for_status(db_dsn, eid, {"succeeded"}) == "succeeded"
        assert (await steps_of(client, eid))["s"]["attempts"] == 1


async def test_parallel_branches_and_output_of_leaves(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    definition = {
        "name": "diamond",
        "steps": [
            {"id": "root", "type": "noop", "actionConfig": {"v": "{{ input.v }}"}},
            {"id": "left", "type": "noop", "needs": ["root"], "actionConfig": {"l": 1}},
            {"id": "right", "type": "noop", "needs": ["root"], "actionConfig": {"r": 2}},
            {
                "id": "join",
                "type": "noop",
                "needs": ["left", "right"],
                "actionConfig": {
                    "sum": "{{ steps.left.output.l + steps.right.output.r + steps.root.output.v }}"
                },
            },
            {"id": "side", "type": "noop", "needs": ["root"], "actionConfig": {"s": True}},
        ],
    }
    eid = await start_execution(client, definition, {"v": 10})
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"
    execution = (await client.get(f"/api/executions/{eid}")).json()
    assert execution["output"] == {"join": {"sum": 13}, "side": {"s": True}}
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in execution["steps"])


async def test_worker_logs_carry_correlation_id(
    client: httpx.AsyncClient,
    workers: WorkerHandle,
    db_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def fails(ctx: StepContext, config: Any) -> Any:
        raise StepError(ErrorClass.AUTH, "token revoked")

    await workers.start(handlers=with_noop(fails))
    r = await client.post("/api/workflows", json=one_step())
    wid = r.json()["id"]
    await client.post(f"/api/workflows/{wid}/publish")
    r = await client.post(
        f"/api/workflows/{wid}/execute", json={"input": {}}, headers={"X-Request-ID": "req-abc-123"}
    )
    assert r.headers["x-request-id"] == "req-abc-123"
    eid = r.json()["executionId"]
    assert await wait_for_status(db_dsn, eid, {"failed"}) == "failed"
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "step_failed" in line]
    assert lines, out
    assert all("req-abc-123" in line and eid in line for line in lines)
    logs = (await client.get(f"/api/executions/{eid}/logs")).json()["items"]
    assert {line["correlationId"] for line in logs} == {"req-abc-123"}


async def test_a_result_the_database_refuses_fails_only_its_step(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    async def nul_for_a(ctx: StepContext, config: Any) -> Any:
        # PostgreSQL's jsonb cannot store U+0000: the batch holding it is refused.
        return {"text": "bad\x00"} if ctx.step_id == "a" else {"text": "good"}

    await workers.start(handlers=with_noop(nul_for_a))
    definition = {
        "name": "poison",
        "steps": [
            {"id": "a", "type": "noop"},
            {"id": "b", "type": "noop"},
            {"id": "c", "type": "noop"},
        ],
    }
    eid = await start_execution(client, definition)
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "failed"
    steps = await steps_of(client, eid)
    assert steps["a"]["status"] == "dead"
    assert steps["a"]["error"]["class"] == "internal"
    assert steps["b"]["status"] == "succeeded"
    assert steps["b"]["output"] == {"text": "good"}


async def test_execution_waits_when_only_an_approval_is_left(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    await workers.start()
    definition = {
        "name": "branches",
        "steps": [
            {"id": "ask", "type": "approval", "actionConfig": {"title": "ok?"}},
            {"id": "work", "type": "delay", "actionConfig": {"seconds": 0.3}},
            {"id": "after", "type": "noop", "needs": ["work"]},
        ],
    }
    eid = await start_execution(client, definition)
    # The approval waits while the other branch runs; once that branch is done the
    # execution as a whole is waiting for the person.
    async with asyncio.timeout(10):
        while (await steps_of(client, eid))["after"]["status"] != "succeeded":
            await wait_for_status(db_dsn, eid, {"waiting", "running"})
    assert (await client.get(f"/api/executions/{eid}")).json()["status"] == "waiting"
    task = (await client.get("/api/human-tasks", params={"executionId": eid})).json()["items"][0]
    r = await client.post(f"/api/human-tasks/{task['id']}/complete", json={"decision": "approve"})
    assert r.status_code == 200
    assert await wait_for_status(db_dsn, eid, {"succeeded", "failed"}) == "succeeded"


async def test_a_step_of_a_failed_execution_is_not_retried(
    client: httpx.AsyncClient, workers: WorkerHandle, db_dsn: str
) -> None:
    calls: list[str] = []
    b_running = asyncio.Event()
    release_b = asyncio.Event()

    async def handler(ctx: StepContext, config: Any) -> Any:
        calls.append(ctx.step_id)
        if ctx.step_id == "a":
            await b_running.wait()
            raise StepError(ErrorClass.AUTH, "credentials rejected")  # not retryable
        b_running.set()
        await release_b.wait()
        raise StepError(ErrorClass.NETWORK, "connection reset")  # retryable

    await workers.start(handlers=with_noop(handler))
    retry = {"maxAttempts": 5, "initialDelaySeconds": 0.01, "maxDelaySeconds": 0.01}
    definition = {
        "name": "fails",
        "steps": [
            {"id": "a", "type": "noop", "retry": retry},
            {"id": "b", "type": "noop", "retry": retry},
        ],
    }
    eid = await start_execution(client, definition)
    assert await wait_for_status(db_dsn, eid, {"failed"}) == "failed"
    release_b.set()
    async with asyncio.timeout(10):
        while (await steps_of(client, eid))["b"]["status"] == "running":
            await asyncio.sleep(0.05)
    steps = await steps_of(client, eid)
    assert steps["b"]["status"] == "cancelled"
    assert calls.count("b") == 1
