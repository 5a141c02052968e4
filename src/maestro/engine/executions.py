"""Creating executions: the execution row, its step runs and NOTIFY, in one transaction."""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from maestro.db.pool import Conn
from maestro.db.queries import sql
from maestro.engine.compiled import CompiledWorkflow, compile_definition_data

_SEP = "\x1f"


class IdempotencyKeyReused(Exception):
    """The key was used before with a different request."""

    def __init__(self, execution_id: uuid.UUID) -> None:
        super().__init__(str(execution_id))
        self.execution_id = execution_id


@dataclass(frozen=True, slots=True)
class Enqueued:
    execution_id: uuid.UUID
    status: str
    created: bool


def step_template(workflow: CompiledWorkflow) -> list[dict[str, Any]]:
    """The step runs of a new execution of ``workflow``, as the SQL functions
    maestro_create_execution and maestro_enqueue_executions take them."""
    return [
        {
            "id": s.id,
            "type": s.type,
            "dependents": list(s.dependents),
            "needs": len(s.needs),
            "leaf": s.is_leaf,
            "maxAttempts": s.max_attempts,
        }
        for s in (workflow.steps[sid] for sid in workflow.order)
    ]


def request_hash(workflow_id: uuid.UUID, body: Any) -> str:
    canonical = orjson.dumps(
        {"workflowId": str(workflow_id), "body": body}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


async def create_execution(
    conn: Conn,
    *,
    tenant: str,
    workflow_id: uuid.UUID,
    version: int,
    workflow: CompiledWorkflow,
    input: Any,
    trigger: dict[str, Any],
    correlation_id: str | None,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> Enqueued:
    """Create an execution with its step runs; the caller must not be in a transaction."""
    execution_id = uuid.uuid4()
    if idempotency_key is None:
        # The common case in one round trip (key, execution, step runs, log line, NOTIFY).
        await conn.fetchrow(
            sql("create_execution"),
            tenant,
            execution_id,
            workflow_id,
            version,
            trigger,
            input,
            None,
            None,
            correlation_id,
            step_template(workflow),
        )
        return Enqueued(execution_id, "queued", created=True)
    async with conn.transaction():
        if idempotency_key is not None:
            assert body_hash is not None
            won = await conn.fetchval(
                sql("claim_idempotency_key"), tenant, idempotency_key, body_hash, execution_id
            )
            if won is None:
                found = await conn.fetchrow(sql("find_idempotency_key"), tenant, idempotency_key)
                assert found is not None
                if found["request_hash"] != body_hash:
                    raise IdempotencyKeyReused(found["execution_id"])
                return Enqueued(found["execution_id"], found["status"], created=False)
        await conn.execute(
            sql("insert_execution"),
            tenant,
            execution_id,
            workflow_id,
            version,
            trigger,
            input,
            correlation_id,
            len(workflow.steps),
        )
        steps = [workflow.steps[sid] for sid in workflow.order]
        await conn.execute(
            sql("insert_step_runs"),
            tenant,
            execution_id,
            [s.id for s in steps],
            [s.type for s in steps],
            [_SEP.join(s.dependents) for s in steps],
            [len(s.needs) for s in steps],
            [s.is_leaf for s in steps],
            [s.max_attempts for s in steps],
        )
        await conn.execute(
            sql("log_execution_event"),
            tenant,
            execution_id,
            "info",
            "execution_created",
            f"execution created by {trigger.get('type', 'api')} trigger "
            f"(workflow version {version}, {len(steps)} steps)",
            {"trigger": trigger.get("type")},
            correlation_id,
        )
        await conn.execute(sql("notify_steps"))
    return Enqueued(execution_id, "queued", created=True)


class TemplateCache:
    """The step template (:func:`step_template`) of each workflow version, for the bulk and
    single-row creation functions. Versions are immutable, so entries never go stale. Loaded on
    the caller's connection, so that a caller inside a transaction never waits on the pool."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: OrderedDict[tuple[str, uuid.UUID, int], list[dict[str, Any]]] = OrderedDict()
        self._max = max_entries

    async def get(
        self, conn: Conn, tenant: str, workflow_id: uuid.UUID, version: int
    ) -> list[dict[str, Any]]:
        key = (tenant, workflow_id, version)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        definition = await conn.fetchval(sql("load_version"), tenant, workflow_id, version)
        template = step_template(compile_definition_data(definition))
        self._entries[key] = template
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return template
