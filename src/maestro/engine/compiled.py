"""A workflow version compiled once for execution: DAG facts and compiled templates per step."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from maestro.engine import dag
from maestro.engine.templating import CompiledValue, compile_value
from maestro.model.workflow import WorkflowDefinition, parse_workflow


@dataclass(frozen=True, slots=True)
class CompiledStep:
    id: str
    type: str
    needs: tuple[str, ...]
    dependents: tuple[str, ...]
    is_leaf: bool
    condition: CompiledValue | None
    config: CompiledValue
    timeout_seconds: float
    max_attempts: int
    initial_delay_seconds: float
    max_delay_seconds: float
    # Whether rendering needs the outputs of earlier steps (loaded only then).
    uses_step_outputs: bool


@dataclass(frozen=True, slots=True)
class CompiledWorkflow:
    definition: WorkflowDefinition
    steps: Mapping[str, CompiledStep]
    order: tuple[str, ...]


def _config_as_data(config: Any) -> Any:
    if isinstance(config, BaseModel):
        # Without defaults: handlers validate the rendered config again, which applies them.
        return config.model_dump(by_alias=True, exclude_defaults=True)
    return config


def compile_workflow(definition: WorkflowDefinition) -> CompiledWorkflow:
    edges = [(s.id, list(s.needs)) for s in definition.steps]
    reverse = dag.dependents(edges)
    leaf_ids = set(dag.leaves(edges))
    steps: dict[str, CompiledStep] = {}
    for s in definition.steps:
        condition = compile_value(s.if_, "if") if s.if_ is not None else None
        config = compile_value(_config_as_data(s.action_config), "actionConfig")
        variables = set(config.variables) | (set(condition.variables) if condition else set())
        steps[s.id] = CompiledStep(
            id=s.id,
            type=s.type,
            needs=tuple(s.needs),
            dependents=tuple(reverse.get(s.id, ())),
            is_leaf=s.id in leaf_ids,
            condition=condition,
            config=config,
            timeout_seconds=s.timeout_seconds,
            max_attempts=s.retry.max_attempts,
            initial_delay_seconds=s.retry.initial_delay_seconds,
            max_delay_seconds=s.retry.max_delay_seconds,
            uses_step_outputs="steps" in variables,
        )
    return CompiledWorkflow(definition, steps, tuple(dag.topological_order(edges)))


def compile_definition_data(data: Mapping[str, Any]) -> CompiledWorkflow:
    return compile_workflow(parse_workflow(data))


Loader = Callable[[str, Any, int], Awaitable[Mapping[str, Any]]]


class WorkflowCache:
    """Compiled workflow versions by (tenant, workflow id, version); versions are immutable,
    so entries never go stale. Bounded LRU."""

    def __init__(self, loader: Loader, max_entries: int = 1024) -> None:
        self._loader = loader
        self._entries: OrderedDict[tuple[str, Any, int], CompiledWorkflow] = OrderedDict()
        self._max = max_entries

    async def get(self, tenant: str, workflow_id: Any, version: int) -> CompiledWorkflow:
        key = (tenant, workflow_id, version)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        compiled = compile_definition_data(await self._loader(tenant, workflow_id, version))
        self._entries[key] = compiled
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return compiled
