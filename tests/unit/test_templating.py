"""Templates in step configs: native values, strict failures, a sandbox, cheap constants."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maestro.engine.templating import (
    CONTEXT_NAMES,
    TemplateRenderError,
    TemplateSyntaxProblem,
    compile_value,
    is_truthy,
)

CONTEXT: dict[str, Any] = {
    "input": {"count": 5, "flag": True, "tags": ["a", "b"], "order": {"id": "o-1", "total": 1200}},
    "trigger": {"type": "api"},
    "execution": {"id": "e-1", "workflowId": "w-1"},
    "steps": {"fetch": {"output": {"body": {"id": 7, "total": 99.5}}}},
}


def render(source: Any, context: dict[str, Any] = CONTEXT) -> Any:
    return compile_value(source, "actionConfig.text").render(context)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ input.count }}", 5),
        ("{{ input.count * 2.5 }}", 12.5),
        ("{{ input.flag }}", True),
        ("{{ input.count > 10 }}", False),
        ("{{ input.tags }}", ["a", "b"]),
        ("{{ input.order }}", {"id": "o-1", "total": 1200}),
        ("{{ none }}", None),
        ("{{ steps.fetch.output.body.total > 50 }}", True),
        ("{{ input.order.id }}", "o-1"),
        ("{{ [input.count, execution.id] }}", [5, "e-1"]),
        ("{{ -input.count }}", -5),
    ],
)
def test_a_single_expression_renders_its_native_value(source: str, expected: Any) -> None:
    result = render(source)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "source",
    ["  {{ input.count }}  ", "{{ input.count }}\n", "{{-input.count-}}", "{{\n input.count\n}}"],
)
def test_whitespace_around_a_single_expression_keeps_it_native(source: str) -> None:
    assert render(source) == 5


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Order {{ input.order.id }} is large", "Order o-1 is large"),
        ("{{ input.count }}{{ input.count }}", "55"),
        ("{{ input.count }} and {{ trigger.type }}", "5 and api"),
        ("{% if input.flag %}yes{% else %}no{% endif %}", "yes"),
        ("{% for t in input.tags %}{{ t }},{% endfor %}", "a,b,"),
        ("{{ '}}' ~ input.count }}", "}}5"),
        ("line\n{{ input.count }}\n", "line\n5\n"),
        ("{{ input.order | tojson }}", '{"id": "o-1", "total": 1200}'),
    ],
)
def test_other_templates_render_text(source: str, expected: str) -> None:
    result = render(source)
    assert result == expected
    assert type(result) is str


def test_text_is_not_html_escaped() -> None:
    context = {**CONTEXT, "input": {"html": "<b>&</b>"}}
    assert render("x {{ input.html }}", context) == "x <b>&</b>"


def test_rendering_walks_dicts_and_lists() -> None:
    config = {
        "channel": "#ops",
        "text": "Order {{ steps.fetch.output.body.id }}",
        "fields": [{"total": "{{ steps.fetch.output.body.total }}"}, 3, None],
    }
    assert compile_value(config).render(CONTEXT) == {
        "channel": "#ops",
        "text": "Order 7",
        "fields": [{"total": 99.5}, 3, None],
    }


def test_constants_are_returned_untouched() -> None:
    config = {"channel": "#ops", "nested": {"list": [1, 2, {"x": "plain {not a template}"}]}}
    compiled = compile_value(config)
    assert compiled.is_constant
    assert compiled.variables == frozenset()
    assert compiled.render(CONTEXT) is config


def test_constant_subtrees_are_shared_not_copied() -> None:
    static = {"deep": [1, 2, 3]}
    compiled = compile_value({"static": static, "text": "{{ input.count }}"})
    assert not compiled.is_constant
    rendered = compiled.render(CONTEXT)
    assert rendered["static"] is static
    assert rendered["text"] == 5


def test_rendering_does_not_change_the_compiled_value() -> None:
    compiled = compile_value({"a": ["{{ input.count }}"]})
    first = compiled.render(CONTEXT)
    first["a"].append("mutated")
    assert compiled.render(CONTEXT) == {"a": [5]}


def test_a_constant_string_costs_nearly_nothing_to_render() -> None:
    compiled = compile_value("just text, no markers")
    start = time.perf_counter()
    for _ in range(100_000):
        compiled.render(CONTEXT)
    # A generous bound: a jinja render is ~100x slower than returning the value.
    assert time.perf_counter() - start < 0.5


def test_variables_lists_the_top_level_names_used() -> None:
    compiled = compile_value(
        {
            "a": "{{ input.count }}",
            "b": ["{% for x in steps.fetch.output.body %}{{ x }}{{ loop.index }}{% endfor %}"],
            "c": "{% set local = 1 %}{{ local }}",
            "d": "static",
        }
    )
    assert compiled.variables == {"input", "steps"}
    assert compile_value("{{ execution.id }} {{ trigger.type }}").variables == {
        "execution",
        "trigger",
    }


def test_missing_attribute_fails_with_the_path_and_the_name() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render("Order {{ input.orderId }}", {**CONTEXT, "input": {}})
    assert str(caught.value) == "actionConfig.text: 'dict object' has no attribute 'orderId'"
    assert caught.value.path == "actionConfig.text"
    assert caught.value.message == "'dict object' has no attribute 'orderId'"


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("{{ input.nope }}", "'dict object' has no attribute 'nope'"),
        ("text {{ input.nope }}", "'dict object' has no attribute 'nope'"),
        ("{{ input['nope'] }}", "'dict object' has no attribute 'nope'"),
        ("text {{ input['nope'] }}", "'dict object' has no attribute 'nope'"),
        ("{{ input.nope.deeper }}", "'dict object' has no attribute 'nope'"),
        ("{{ trigger.type }}", "'trigger' is undefined"),
        ("text {{ trigger.type }}", "'trigger' is undefined"),
        ("{{ trigger }}", "'trigger' is undefined"),
        ("text {{ trigger }}", "'trigger' is undefined"),
        ("{{ [input.nope] }}", "'dict object' has no attribute 'nope'"),
        ("text {{ [input.nope] }}", "'dict object' has no attribute 'nope'"),
        ("{{ {'k': input.nope} }}", "'dict object' has no attribute 'nope'"),
        ("{% if input.nope %}x{% endif %}", "'dict object' has no attribute 'nope'"),
        ("{% for x in input.nope %}{% endfor %}", "'dict object' has no attribute 'nope'"),
        ("{{ steps.other.output }}", "'dict object' has no attribute 'other'"),
    ],
)
def test_a_missing_value_never_renders_as_empty(source: str, missing: str) -> None:
    context = {key: value for key, value in CONTEXT.items() if key != "trigger"}
    with pytest.raises(TemplateRenderError) as caught:
        render(source, context)
    assert caught.value.message == missing


def test_missing_values_can_be_handled_explicitly() -> None:
    assert render("{{ input.nope | default('none given') }}") == "none given"
    assert render("{{ input.nope is defined }}") is False


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "x {{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ input.__class__ }}",
        "{{ input.order.__init__.__globals__ }}",
        "{{ input.tags.append('x') }}",
        "{{ input.order.update({'id': 'hacked'}) }}",
        "{{ '{0.__class__}'.format(input) }}",
    ],
)
def test_the_sandbox_blocks_unsafe_access_and_mutation(source: str) -> None:
    context = {**CONTEXT, "input": {"tags": ["a"], "order": {"id": "o-1"}}}
    with pytest.raises(TemplateRenderError):
        render(source, context)
    assert context["input"] == {"tags": ["a"], "order": {"id": "o-1"}}


@pytest.mark.parametrize(
    "source",
    [
        "{{ 9 ** (9 ** 9) }}",
        "x {{ 2 ** 1000000 }}",
        "{{ 'a' * 1000000000 }}",
        "{{ [0] * 10 ** 8 }}",
    ],
)
def test_runaway_arithmetic_fails_fast(source: str) -> None:
    start = time.perf_counter()
    compiled = compile_value(source, "p")
    with pytest.raises(TemplateRenderError, match="too"):
        compiled.render(CONTEXT)
    assert time.perf_counter() - start < 1.0


def test_ordinary_arithmetic_still_works() -> None:
    assert render("{{ 2 ** 10 }}") == 1024
    assert render("{{ 'ab' * 3 }}") == "ababab"
    assert render("{{ 3 * input.count }}") == 15


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
        ("{{ input.tags + 1 }}", "TypeError"),
        ("x {{ input.count | int + 'a' }}", "TypeError"),
    ],
)
def test_runtime_errors_become_render_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateRenderError, match=message):
        render(source)


@pytest.mark.parametrize("source", ["{{ lipsum() }}", "{{ range(3) | list }}", "{{ now() }}"])
def test_no_globals_beyond_the_context(source: str) -> None:
    with pytest.raises(TemplateSyntaxProblem, match="unknown name"):
        compile_value(source)


def test_unknown_names_are_caught_at_compile_time() -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        compile_value({"text": "{{ inptu.x }}"}, "actionConfig")
    assert caught.value.path == "actionConfig.text"
    names = ", ".join(sorted(CONTEXT_NAMES))
    assert caught.value.message == f"unknown name 'inptu'; templates can use {names}"


def test_random_filter_is_not_available() -> None:
    with pytest.raises(TemplateSyntaxProblem, match="No filter named 'random'"):
        compile_value("{{ input.tags | random }}")


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("{{ input.count", 1),
        ("ok\n\n{% if input.flag %}unclosed", 3),
        ("{{ input.count + }}", 1),
        ("{{ input.count }} {% endfor %}", 1),
    ],
)
def test_syntax_errors_name_the_path_and_line(source: str, line: int) -> None:
    with pytest.raises(TemplateSyntaxProblem) as caught:
        compile_value({"items": ["fine", {"text": source}]}, "actionConfig")
    assert caught.value.path == "actionConfig.items[1].text"
    assert caught.value.message.startswith(f"line {line}: ")


def test_only_markers_make_a_string_a_template() -> None:
    for text in ["a { b } c", "{ {", "%}", "}}"]:
        assert compile_value(text).is_constant
    assert not compile_value("{% if input.flag %}x{% endif %}").is_constant


@pytest.mark.parametrize(
    "value",
    ["", "false", "FALSE", " False ", "0", "no", "No", "off", "none", "None", "null", " NULL\n"],
)
def test_falsy_strings(value: str) -> None:
    assert is_truthy(value) is False


@pytest.mark.parametrize("value", ["true", "yes", "1", "x", "nope", "0.0", "[]"])
def test_truthy_strings(value: str) -> None:
    assert is_truthy(value) is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (None, False), (0, False), (2, True), (0.0, False),
     ([], False), ([0], True), ({}, False), ({"a": 1}, True)],
)  # fmt: skip
def test_non_strings_use_python_truthiness(value: Any, expected: bool) -> None:
    assert is_truthy(value) is expected


def test_an_if_condition_renders_to_something_is_truthy_understands() -> None:
    assert is_truthy(render("{{ steps.fetch.output.body.total > 50 }}")) is True
    assert is_truthy(render("{% if input.count > 10 %}yes{% endif %}")) is False
    assert is_truthy(render("{{ input.count > 10 }} ")) is False


FALSY = {"", "false", "0", "no", "off", "none", "null"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=5,
)


@given(json_values)
def test_is_truthy_matches_python_except_for_falsy_words(value: Any) -> None:
    if isinstance(value, str):
        assert is_truthy(value) is (value.strip().lower() not in FALSY)
    else:
        assert is_truthy(value) is bool(value)


@given(st.sampled_from(sorted(FALSY)), st.text(" \t\n", max_size=3), st.text(" \t\n", max_size=3))
def test_is_truthy_ignores_case_and_surrounding_space(word: str, before: str, after: str) -> None:
    assert is_truthy(before + word.upper() + after) is False
    assert is_truthy(before + word.title() + after) is False


@given(json_values)
def test_values_without_markers_compile_to_themselves(value: Any) -> None:
    if "{{" in repr(value) or "{%" in repr(value):
        return
    compiled = compile_value(value)
    assert compiled.is_constant
    assert compiled.render({}) is value


@given(st.integers() | st.booleans() | st.none() | st.text(alphabet="abc xyz", max_size=20))
def test_an_expression_returns_exactly_the_value_it_names(value: Any) -> None:
    assert render("{{ input.value }}", {"input": {"value": value}}) == value


def test_dot_access_prefers_json_keys_over_dict_methods() -> None:
    compiled = compile_value("{{ steps.a.output.items[1] }}")
    context = {"steps": {"a": {"output": {"items": [10, 20], "keys": "k"}}}}
    assert compiled.render(context) == 20
    assert compile_value("{{ steps.a.output.keys }}").render(context) == "k"


def test_expression_naming_a_method_is_an_error_not_a_value() -> None:
    with pytest.raises(TemplateRenderError, match="function"):
        compile_value("{{ input.keys }}").render({"input": {"a": 1}})
