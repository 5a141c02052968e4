"""Sandboxed Jinja2 templates in step configs: compiled once, rendered many times.

Templates see ``input``, ``trigger``, ``execution`` and ``steps`` (step id →
``{"output": ...}``) and nothing else, so rendering is deterministic.
"""

from __future__ import annotations

import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONTEXT_NAMES = frozenset({"input", "trigger", "execution", "steps"})

# Limits on what one operator may build: `{{ 9 ** (9 ** 9) }}` would otherwise hold
# a worker's CPU (and the GIL) for hours.
_MAX_POWER_BITS = 1 << 16
_MAX_REPEATED_LENGTH = 1 << 20

_SINGLE_EXPRESSION = re.compile(r"\A\s*\{\{[-+]?(?P<expr>.*?)[-+]?\}\}\s*\Z", re.DOTALL)
_RENDER_ERRORS = (
    TemplateError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    RecursionError,
)


class _Undefined(StrictUndefined):
    """StrictUndefined that also refuses repr(), so ``{{ [missing] }}`` cannot print "Undefined"."""

    __slots__ = ()
    __repr__ = StrictUndefined._fail_with_undefined_error


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Workflow data is JSON: `output.items` means the key "items", not dict.items.
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            _check_power(left, right)
            return operator.pow(left, right)
        _check_repeat(left, right)
        _check_repeat(right, left)
        return operator.mul(left, right)


def _check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and base.bit_length() * exponent > _MAX_POWER_BITS
    ):
        raise SecurityError(f"{base} ** {exponent} is too large to compute")


def _check_repeat(sequence: Any, count: Any) -> None:
    if (
        isinstance(sequence, str | list | tuple)
        and isinstance(count, int)
        and len(sequence) * count > _MAX_REPEATED_LENGTH
    ):
        raise SecurityError(f"repeating a value {count} times makes it too long")


def _environment() -> _Environment:
    # optimized=False turns off constant folding, which would run user code
    # (e.g. `{{ "a" | center(1000000000) }}`) while compiling in the API process.
    env = _Environment(
        undefined=_Undefined, autoescape=False, keep_trailing_newline=True, optimized=False
    )
    # lipsum, range and the random filter would make output vary between
    # renders or add names beyond the documented context.
    env.globals.clear()
    del env.filters["random"]
    return env


_ENV = _environment()


class TemplateProblem(Exception):
    """A template at ``path`` (e.g. ``actionConfig.text``) cannot be used."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class TemplateSyntaxProblem(TemplateProblem):
    """The template does not compile."""


class TemplateRenderError(TemplateProblem):
    """Rendering failed: a missing name, a forbidden attribute, a bad operation."""


class CompiledValue(ABC):
    """A config value with its templates compiled; render it with an execution's context."""

    __slots__ = ()

    @property
    @abstractmethod
    def variables(self) -> frozenset[str]:
        """Top-level context names the templates use (e.g. ``{"input", "steps"}``)."""

    @property
    def is_constant(self) -> bool:
        return False

    @abstractmethod
    def render(self, context: Mapping[str, Any]) -> Any:
        """The value with every template rendered; constant parts are returned as-is."""


class _Constant(CompiledValue):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    @property
    def variables(self) -> frozenset[str]:
        return frozenset()

    @property
    def is_constant(self) -> bool:
        return True

    def render(self, context: Mapping[str, Any]) -> Any:
        return self.value


class _Template(CompiledValue):
    __slots__ = ("_render", "_variables", "path")

    def __init__(
        self, path: str, render: Callable[[Mapping[str, Any]], Any], variables: frozenset[str]
    ) -> None:
        self.path = path
        self._render = render
        self._variables = variables

    @property
    def variables(self) -> frozenset[str]:
        return self._variables

    def render(self, context: Mapping[str, Any]) -> Any:
        try:
            result = self._render(context)
            _reject_undefined(result)
        except _RENDER_ERRORS as exc:
            raise TemplateRenderError(self.path, _describe(exc)) from None
        if callable(result):
            raise TemplateRenderError(
                self.path,
                "the expression names a function, not a value; call it, or use ['key'] "
                "to read a key of that name",
            )
        # Filters like tojson return Markup (a str subclass); hand over a plain str.
        return str(result) if isinstance(result, str) and type(result) is not str else result


class _Dict(CompiledValue):
    __slots__ = ("_items", "_variables")

    def __init__(self, items: list[tuple[Any, CompiledValue]]) -> None:
        self._items = items
        self._variables = frozenset().union(*(value.variables for _, value in items))

    @property
    def variables(self) -> frozenset[str]:
        return self._variables

    def render(self, context: Mapping[str, Any]) -> Any:
        return {key: value.render(context) for key, value in self._items}


class _List(CompiledValue):
    __slots__ = ("_items", "_variables")

    def __init__(self, items: list[CompiledValue]) -> None:
        self._items = items
        self._variables = frozenset().union(*(item.variables for item in items))

    @property
    def variables(self) -> frozenset[str]:
        return self._variables

    def render(self, context: Mapping[str, Any]) -> Any:
        return [item.render(context) for item in self._items]


def compile_value(value: Any, path: str = "") -> CompiledValue:
    """Compile every template string inside ``value`` (dicts and lists are walked).

    A string that is exactly one ``{{ expression }}`` renders to the expression's
    native value; other template strings render to text. Raises
    TemplateSyntaxProblem naming the path of the first string that does not compile.
    """
    if isinstance(value, str):
        return _compile_string(value, path) if "{{" in value or "{%" in value else _Constant(value)
    if isinstance(value, dict):
        items = [
            (key, compile_value(item, f"{path}.{key}" if path else str(key)))
            for key, item in value.items()
        ]
        if all(compiled.is_constant for _, compiled in items):
            return _Constant(value)
        return _Dict(items)
    if isinstance(value, list):
        elements = [compile_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if all(compiled.is_constant for compiled in elements):
            return _Constant(value)
        return _List(elements)
    return _Constant(value)


def _compile_string(source: str, path: str) -> CompiledValue:
    try:
        ast = _ENV.parse(source)
        variables = frozenset(meta.find_undeclared_variables(ast))
        unknown = sorted(variables - CONTEXT_NAMES)
        if unknown:
            # Caught here, at publish time, rather than failing every execution.
            names = ", ".join(sorted(CONTEXT_NAMES))
            raise TemplateSyntaxProblem(
                path, f"unknown name '{unknown[0]}'; templates can use {names}"
            )
        match = _SINGLE_EXPRESSION.match(source)
        if match and _is_single_expression(ast):
            expression = _ENV.compile_expression(match["expr"], undefined_to_none=False)
            return _Template(path, expression, variables)
        return _Template(path, _ENV.from_string(ast).render, variables)
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(path, f"line {exc.lineno}: {exc.message}") from None


def _is_single_expression(ast: nodes.Template) -> bool:
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return False
    parts = ast.body[0].nodes
    expressions = [part for part in parts if not isinstance(part, nodes.TemplateData)]
    whitespace_only = all(
        part.data.strip() == "" for part in parts if isinstance(part, nodes.TemplateData)
    )
    return len(expressions) == 1 and whitespace_only


def _reject_undefined(value: Any) -> None:
    """An expression can build a list or dict holding an undefined value
    (``{{ [missing] }}``); fail rather than hand the engine a placeholder."""
    if isinstance(value, Undefined):
        str(value)  # raises the UndefinedError or SecurityError that names the problem
        raise AssertionError("unreachable: templates use a strict Undefined")
    if isinstance(value, list | tuple):
        for item in value:
            _reject_undefined(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_undefined(key)
            _reject_undefined(item)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TemplateError) and exc.message:
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def is_truthy(value: Any) -> bool:
    """Whether a rendered ``if`` lets its step run.

    Python truthiness, except that the strings "", "false", "0", "no", "off",
    "none" and "null" (any case, surrounding spaces ignored) are false, because
    text templates always render to strings.
    """
    if isinstance(value, str):
        return value.strip().lower() not in _FALSY_STRINGS
    return bool(value)


_FALSY_STRINGS = frozenset({"", "false", "0", "no", "off", "none", "null"})
