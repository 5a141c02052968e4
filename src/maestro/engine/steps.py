"""The step-handler contract and the built-in step types: noop, delay and approval.

A handler receives the step's rendered ``actionConfig`` and a :class:`StepContext`, and returns
either the step's output or a :class:`Suspend` (the step waits without holding a worker).
Handlers raise :class:`~maestro.engine.retry.StepError` with an error class for failures.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from maestro.engine.retry import ErrorClass, StepError
from maestro.model.workflow import ApprovalConfig, DelayConfig


@dataclass(frozen=True, slots=True)
class StepContext:
    tenant: str
    execution_id: uuid.UUID
    workflow_id: uuid.UUID
    step_id: str
    step_type: str
    attempt: int
    correlation_id: str | None
    # What the step saved when it last suspended (None on a first run).
    state: Mapping[str, Any] | None
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts: pass it to providers that deduplicate."""
        return f"{self.execution_id}:{self.step_id}"


@dataclass(frozen=True, slots=True)
class Suspend:
    """Park the step until ``until`` (None: until something wakes it, e.g. a decision).

    A ``humanTask`` entry in ``state`` ({title, description, assignees}) opens a human task
    with id ``state["humanTaskId"]`` in the same transaction that parks the step."""

    state: dict[str, Any]
    until: datetime | None = None


Handler = Callable[[StepContext, Any], Awaitable[Any]]


def _typed(model: type[Any], config: Any) -> Any:
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "actionConfig"
        raise StepError(
            ErrorClass.VALIDATION, f"actionConfig.{where}: {first['msg']} after rendering"
        ) from None


async def run_noop(ctx: StepContext, config: Any) -> Any:
    return config


async def run_delay(ctx: StepContext, config: Any) -> Any:
    seconds = float(_typed(DelayConfig, config).seconds)
    if ctx.state is None:
        if seconds <= 0:
            return {"waitedSeconds": 0.0}
        until = ctx.now() + timedelta(seconds=seconds)
        return Suspend(state={"until": until.isoformat(), "seconds": seconds}, until=until)
    until = datetime.fromisoformat(ctx.state["until"])
    if ctx.now() < until:  # woken early (e.g. a restart): keep waiting
        return Suspend(state=dict(ctx.state), until=until)
    return {"waitedSeconds": ctx.state["seconds"]}


async def run_approval(ctx: StepContext, config: Any) -> Any:
    typed = _typed(ApprovalConfig, config)
    state = ctx.state
    if state is None:
        task = {
            "title": typed.title,
            "description": typed.description,
            "assignees": typed.assignees,
        }
        return Suspend(state={"humanTaskId": str(uuid.uuid4()), "humanTask": task})
    decision = state.get("decision")
    if decision is None:
        return Suspend(state=dict(state))
    result = {
        "decision": decision,
        "comment": state.get("comment"),
        "decidedBy": state.get("decidedBy"),
        "humanTaskId": state.get("humanTaskId"),
    }
    if decision == "approve":
        return result
    comment = f": {state['comment']}" if state.get("comment") else ""
    raise StepError(ErrorClass.REJECTED, f"rejected by {state.get('decidedBy')}{comment}")


BUILTIN_HANDLERS: dict[str, Handler] = {
    "noop": run_noop,
    "delay": run_delay,
    "approval": run_approval,
}
