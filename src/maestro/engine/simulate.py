"""Dry run: validate, render every step with the given input, report the plan. No side effects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from maestro.engine.compiled import CompiledWorkflow
from maestro.engine.templating import TemplateRenderError, is_truthy

Describer = Callable[[Mapping[str, Any]], dict[str, Any]]


def simulate(
    workflow: CompiledWorkflow,
    input: dict[str, Any],
    *,
    workflow_id: str,
    version: int | None,
    describers: Mapping[str, Describer] | None = None,
) -> dict[str, Any]:
    """Render steps in order. A noop's output is its rendered config, so later steps can use it;
    other outputs are unknown until run, and templates that need them are reported deferred."""
    known: dict[str, Any] = {}
    unknown: set[str] = set()
    plan: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    for step_id in workflow.order:
        step = workflow.steps[step_id]
        entry: dict[str, Any] = {"stepId": step_id, "type": step.type, "needs": list(step.needs)}
        context = {
            "input": input,
            "trigger": {"type": "simulate"},
            "execution": {
                "id": "simulated",
                "workflowId": workflow_id,
                "workflowVersion": version,
                "attempt": 1,
                "idempotencyKey": f"simulated:{step_id}",
                "stepId": step_id,
            },
            "steps": {k: {"output": v} for k, v in known.items()},
        }
        blocked = [n for n in step.needs if n in unknown]
        try:
            if step.condition is not None:
                entry["condition"] = bool(is_truthy(step.condition.render(context)))
            entry["actionConfig"] = step.config.render(context)
            entry["wouldRun"] = entry.get("condition", True)
            describe = (describers or {}).get(step.type)
            if describe is not None:
                try:
                    entry["call"] = describe(entry["actionConfig"])
                except (ValueError, TypeError, KeyError) as exc:
                    entry["error"] = {"class": "validation", "message": str(exc)}
                    problems.append({"stepId": step_id, "message": str(exc)})
            if step.type == "noop" and entry["wouldRun"]:
                known[step_id] = entry["actionConfig"]
            else:
                unknown.add(step_id)
        except TemplateRenderError as exc:
            unknown.add(step_id)
            if step.uses_step_outputs and (blocked or any(n not in known for n in step.needs)):
                entry["deferred"] = "renders only at run time: it uses outputs of " + ", ".join(
                    step.needs
                )
            else:
                entry["error"] = {"class": "validation", "message": str(exc)}
                problems.append({"stepId": step_id, "message": str(exc)})
        plan.append(entry)
    return {"valid": not problems, "errors": problems, "steps": plan}
