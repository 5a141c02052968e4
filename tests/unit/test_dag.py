"""The step graph: every invalid shape is reported at its place, valid graphs are ordered."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maestro.engine.dag import (
    DagError,
    dag_errors,
    dependents,
    leaves,
    roots,
    topological_order,
)

DIAMOND = [("fetch", []), ("left", ["fetch"]), ("right", ["fetch"]), ("join", ["left", "right"])]


def test_a_valid_graph_has_no_errors() -> None:
    assert dag_errors(DIAMOND) == []
    assert dag_errors([("only", [])]) == []


def test_duplicate_id_is_reported_at_the_second_definition() -> None:
    errors = dag_errors([("a", []), ("b", []), ("a", [])])
    assert errors == [
        DagError(
            2,
            "a",
            "id",
            None,
            "Step id 'a' is already used by steps[0]; give every step a unique id.",
        )
    ]
    assert errors[0].path == "steps[2].id"


def test_unknown_need_suggests_the_closest_id() -> None:
    [error] = dag_errors([("fetch", []), ("notify", ["fetc"])])
    assert (error.step_index, error.step_id, error.field, error.index) == (1, "notify", "needs", 0)
    assert error.path == "steps[1].needs[0]"
    assert error.message == (
        "Step 'notify' needs 'fetc', but no step has that id; did you mean 'fetch'?"
    )


def test_unknown_need_without_a_close_match_says_what_to_use() -> None:
    [error] = dag_errors([("fetch", []), ("notify", ["fetch", "zzzzzz"])])
    assert error.path == "steps[1].needs[1]"
    assert "no step has that id; use the id of a step in this workflow." in error.message


def test_a_step_needing_itself_is_reported_and_not_also_as_a_cycle() -> None:
    errors = dag_errors([("a", ["a"])])
    assert [(e.path, e.message) for e in errors] == [
        ("steps[0].needs[0]", "Step 'a' needs itself; remove 'a' from its needs.")
    ]


def test_a_need_listed_twice_is_reported_at_the_repeat() -> None:
    [error] = dag_errors([("a", []), ("b", ["a", "a"])])
    assert error.path == "steps[1].needs[1]"
    assert error.message == "'a' is listed twice in needs (also at needs[0]); remove the duplicate."


def test_a_cycle_is_reported_once_naming_its_members_in_order() -> None:
    errors = dag_errors([("a", ["b"]), ("b", ["c"]), ("c", ["a"]), ("d", ["a"])])
    assert [(e.path, e.step_id, e.message) for e in errors] == [
        (
            "steps[0].needs[0]",
            "a",
            "Steps a → b → c → a form a cycle (each needs the next); remove one of these needs.",
        )
    ]


def test_cycle_starts_at_the_earliest_defined_member_and_points_at_its_need() -> None:
    [error] = dag_errors([("x", []), ("b", ["a"]), ("a", ["x", "b"])])
    assert error.step_id == "b"
    assert error.path == "steps[1].needs[0]"
    assert "Steps b → a → b form a cycle" in error.message


def test_separate_cycles_are_each_reported() -> None:
    errors = dag_errors([("a", ["b"]), ("b", ["a"]), ("c", ["d"]), ("d", ["c"])])
    assert [e.message.split(" form")[0] for e in errors] == ["Steps a → b → a", "Steps c → d → c"]


def test_entangled_cycles_are_reported_as_one_problem() -> None:
    # a → b → a and a → c → a share a; fixing one edge at a time reveals the next.
    errors = dag_errors([("a", ["b", "c"]), ("b", ["a"]), ("c", ["a"])])
    assert len(errors) == 1
    assert "Steps a → b → a" in errors[0].message


def test_every_problem_is_reported_together() -> None:
    errors = dag_errors([("a", ["a", "nope"]), ("a", []), ("b", ["c"]), ("c", ["b", "b"])])
    assert [e.path for e in errors] == [
        "steps[1].id",
        "steps[0].needs[0]",
        "steps[0].needs[1]",
        "steps[3].needs[1]",
        "steps[2].needs[0]",
    ]


def test_long_chains_and_long_cycles_do_not_exhaust_the_stack() -> None:
    chain = [(f"s{i}", [f"s{i - 1}"] if i else []) for i in range(5000)]
    assert dag_errors(chain) == []
    assert topological_order(chain) == [f"s{i}" for i in range(5000)]
    cycle = [("s0", ["s4999"]), *chain[1:]]
    [error] = dag_errors(cycle)
    assert error.message.startswith("Steps s0 → s4999 → s4998")


def test_dependents_are_the_reverse_edges_in_definition_order() -> None:
    assert dependents(DIAMOND) == {
        "fetch": ["left", "right"],
        "left": ["join"],
        "right": ["join"],
        "join": [],
    }


def test_roots_and_leaves() -> None:
    assert roots(DIAMOND) == ["fetch"]
    assert leaves(DIAMOND) == ["join"]
    steps = [("a", []), ("b", []), ("c", ["a"])]
    assert roots(steps) == ["a", "b"]
    assert leaves(steps) == ["b", "c"]


def test_topological_order_breaks_ties_by_definition_order() -> None:
    steps = [("late", ["first"]), ("z", []), ("first", []), ("a", [])]
    assert topological_order(steps) == ["z", "first", "late", "a"]
    assert topological_order(DIAMOND) == ["fetch", "left", "right", "join"]


def test_topological_order_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order([("a", ["b"]), ("b", ["a"])])


@st.composite
def acyclic_graphs(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    """Random DAGs: step i only needs steps created before it; then shown in any order."""
    count = draw(st.integers(min_value=1, max_value=25))
    ids = [f"s{i}" for i in range(count)]
    created = [
        (ids[i], draw(st.lists(st.sampled_from(ids[:i]), unique=True)) if i else [])
        for i in range(count)
    ]
    return draw(st.permutations(created))


@given(acyclic_graphs())
def test_acyclic_graphs_validate_and_order_every_step_after_its_needs(
    steps: list[tuple[str, list[str]]],
) -> None:
    assert dag_errors(steps) == []
    order = topological_order(steps)
    assert sorted(order) == sorted(step_id for step_id, _ in steps)
    position = {step_id: i for i, step_id in enumerate(order)}
    for step_id, needs in steps:
        assert all(position[need] < position[step_id] for need in needs)
    assert set(roots(steps)) == {step_id for step_id, needs in steps if not needs}
    needed = {need for _, needs in steps for need in needs}
    assert set(leaves(steps)) == {step_id for step_id, _ in steps} - needed
    reverse = dependents(steps)
    for step_id, needs in steps:
        for need in needs:
            assert step_id in reverse[need]
    assert sum(map(len, reverse.values())) == sum(len(needs) for _, needs in steps)


@given(acyclic_graphs(), st.data())
def test_a_back_edge_creates_a_cycle_that_is_reported(
    steps: list[tuple[str, list[str]]], data: st.DataObject
) -> None:
    graph = dict(steps)
    with_needs = [step_id for step_id, needs in steps if needs]
    if not with_needs:
        return
    late = data.draw(st.sampled_from(with_needs))
    early = data.draw(st.sampled_from(sorted(_ancestors(graph, late))))
    changed = [(s, [*needs, late] if s == early else needs) for s, needs in steps]

    errors = dag_errors(changed)

    assert len(errors) == 1
    [error] = errors
    assert error.field == "needs"
    members = error.message.removeprefix("Steps ").split(" form a cycle")[0].split(" → ")
    assert members[0] == members[-1] == error.step_id
    assert {early, late} <= set(members)
    for step_id, need in itertools.pairwise(members):
        assert need in dict(changed)[step_id]
    with pytest.raises(ValueError, match="cycle"):
        topological_order(changed)


def _ancestors(graph: dict[str, list[str]], step_id: str) -> set[str]:
    found: set[str] = set()
    pending = list(graph[step_id])
    while pending:
        need = pending.pop()
        if need not in found:
            found.add(need)
            pending.extend(graph[need])
    return found
