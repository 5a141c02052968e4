"""Checks and orderings for the step graph of a workflow (pure functions).

A graph is given as ``(step_id, needs)`` pairs in definition order; an edge
goes from a step to each step it needs.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

StepEdges = Sequence[tuple[str, Sequence[str]]]


@dataclass(frozen=True, slots=True)
class DagError:
    """One problem in the step graph, located at ``steps[step_index].field[index]``."""

    step_index: int
    step_id: str
    field: str
    index: int | None
    message: str

    @property
    def path(self) -> str:
        path = f"steps[{self.step_index}].{self.field}"
        return path if self.index is None else f"{path}[{self.index}]"


def dag_errors(steps: StepEdges) -> list[DagError]:
    """Every problem that stops ``steps`` from forming a DAG.

    Duplicate ids come first, then problems in needs, then one error per cycle.
    """
    errors: list[DagError] = []
    first_index: dict[str, int] = {}
    for i, (step_id, _) in enumerate(steps):
        if step_id in first_index:
            errors.append(
                DagError(
                    i,
                    step_id,
                    "id",
                    None,
                    f"Step id '{step_id}' is already used by steps[{first_index[step_id]}]; "
                    "give every step a unique id.",
                )
            )
        else:
            first_index[step_id] = i
    for i, (step_id, needs) in enumerate(steps):
        seen: dict[str, int] = {}
        for j, need in enumerate(needs):
            if need in seen:
                errors.append(
                    DagError(
                        i,
                        step_id,
                        "needs",
                        j,
                        f"'{need}' is listed twice in needs (also at needs[{seen[need]}]); "
                        "remove the duplicate.",
                    )
                )
                continue
            seen[need] = j
            if need == step_id:
                errors.append(
                    DagError(
                        i,
                        step_id,
                        "needs",
                        j,
                        f"Step '{step_id}' needs itself; remove '{need}' from its needs.",
                    )
                )
            elif need not in first_index:
                message = _unknown_need(step_id, need, first_index)
                errors.append(DagError(i, step_id, "needs", j, message))
    errors.extend(_cycle_errors(steps, first_index))
    return errors


def _unknown_need(step_id: str, need: str, known: dict[str, int]) -> str:
    close = difflib.get_close_matches(need, list(known), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "use the id of a step in this workflow."
    return f"Step '{step_id}' needs '{need}', but no step has that id; {hint}"


def _graph(steps: StepEdges) -> dict[str, list[str]]:
    """Adjacency (step → its needs) over known ids; self-loops, unknown ids and
    duplicate definitions are left out because dag_errors reports them separately."""
    graph: dict[str, list[str]] = {}
    for step_id, _ in steps:
        graph.setdefault(step_id, [])
    defined: set[str] = set()
    for step_id, needs in steps:
        if step_id in defined:
            continue
        defined.add(step_id)
        edges = graph[step_id]
        for need in needs:
            if need in graph and need != step_id and need not in edges:
                edges.append(need)
    return graph


def _cycle_errors(steps: StepEdges, first_index: dict[str, int]) -> list[DagError]:
    graph = _graph(steps)
    errors = []
    # One cycle per strongly connected component: listing every elementary
    # cycle can be exponential, and breaking one shows the next on resubmit.
    for component in _strong_components(graph):
        if len(component) < 2:
            continue
        start = min(component, key=first_index.__getitem__)
        cycle = _shortest_cycle(graph, start, component)
        needs = steps[first_index[start]][1]
        errors.append(
            DagError(
                first_index[start],
                start,
                "needs",
                list(needs).index(cycle[1]),
                f"Steps {' → '.join(cycle)} form a cycle (each needs the next); "
                "remove one of these needs.",
            )
        )
    errors.sort(key=lambda e: e.step_index)
    return errors


def _strong_components(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative so 500-step chains stay off the call stack."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = graph[node]
            if child < len(edges):
                work.append((node, child + 1))
                nxt = edges[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _shortest_cycle(graph: dict[str, list[str]], start: str, component: set[str]) -> list[str]:
    """Breadth-first search from ``start`` back to itself inside one component."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in graph[node]:
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if nxt in component and nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError("a strongly connected component always has a cycle")


def dependents(steps: StepEdges) -> dict[str, list[str]]:
    """For every step, the steps that need it, in definition order."""
    result: dict[str, list[str]] = {step_id: [] for step_id, _ in steps}
    for step_id, needs in _graph(steps).items():
        for need in needs:
            result[need].append(step_id)
    return result


def roots(steps: StepEdges) -> list[str]:
    """Steps that need nothing: they are ready when an execution starts."""
    return [step_id for step_id, needs in _graph(steps).items() if not needs]


def leaves(steps: StepEdges) -> list[str]:
    """Steps that no other step needs."""
    return [step_id for step_id, users in dependents(steps).items() if not users]


def topological_order(steps: StepEdges) -> list[str]:
    """Every step after all of its needs; among ready steps the earliest defined goes first.

    Raises ValueError if the graph has a cycle.
    """
    graph = _graph(steps)
    position = {step_id: i for i, step_id in enumerate(graph)}
    users = dependents(steps)
    waiting = {step_id: len(needs) for step_id, needs in graph.items()}
    ready = [position[step_id] for step_id, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ids = list(graph)
    order: list[str] = []
    while ready:
        step_id = ids[heapq.heappop(ready)]
        order.append(step_id)
        for user in users[step_id]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, position[user])
    if len(order) != len(graph):
        raise ValueError("the steps form a cycle; check them with dag_errors()")
    return order
