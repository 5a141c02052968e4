"""The database connector's pure parts: statement counting, describe, output and params."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import asyncpg.exceptions as pgexc
import pytest
from asyncpg.exceptions import _base as pgbase

from maestro.connectors.database import (
    _classify,
    _coerce,
    _dsn_secrets,
    count_statements,
    describe,
    json_safe,
    row_count,
)
from maestro.engine.retry import ErrorClass


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        (";", 0),
        (";;  ;", 0),
        ("-- only a comment", 0),
        ("/* only a comment; */", 0),
        ("SELECT 1", 1),
        ("SELECT 1;", 1),
        ("SELECT 1;  \n", 1),
        ("SELECT 1;;", 1),
        ("SELECT 1; -- trailing comment", 1),
        ("SELECT 1; /* trailing; comment */", 1),
        ("; SELECT 1", 1),
        ("SELECT 1; SELECT 2", 2),
        ("SELECT 1; SELECT 2;", 2),
        ("SELECT 1;SELECT 2;SELECT 3", 3),
        ("SELECT ';'", 1),
        ("SELECT 'a;b'; SELECT 2", 2),
        ("SELECT 'it''s; fine'", 1),
        ("SELECT 'x'';'';'", 1),
        ("SELECT E'back\\'slash; still quoted'", 1),
        ("SELECT e'\\\\'; SELECT 2", 2),
        ("SELECT 'a\\'; SELECT 2", 2),  # standard strings: backslash is an ordinary character
        ('SELECT 1 AS "semi;colon"', 1),
        ('SELECT 1 AS "quo""te;"', 1),
        ("SELECT $$a;b$$", 1),
        ("SELECT $$a;b$$; SELECT 2", 2),
        ("SELECT $fn$ a; $$ b; $fn$", 1),
        ("SELECT $a$ $b$ ; $b$ ; $a$; SELECT 1", 2),
        ("SELECT $_x1$;$_x1$", 1),
        ("SELECT $1; SELECT $2", 2),
        ("SELECT $1::int, $2", 1),
        ("SELECT a$b$c FROM t; SELECT 2", 2),  # $ inside an identifier is no dollar quote
        ("SELECT 1 -- a; b\n", 1),
        ("SELECT 1 -- a; b\n; SELECT 2", 2),
        ("SELECT 1 /* a; /* nested; */ still; */", 1),
        ("SELECT 1 /* a; /* nested; */ still; */; SELECT 2", 2),
        ("SELECT 1 - -1; SELECT 2", 2),
        ("SELECT 2/1; SELECT 3", 2),
        ("SELECT 'unterminated; SELECT 2", 1),
        ("SELECT $$unterminated; SELECT 2", 1),
        ("SELECT 1 /* unterminated; SELECT 2", 1),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"
            "BEGIN\n  PERFORM 1;\n  RETURN 2;\nEND;\n$body$;",
            1,
        ),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", 1),
    ],
)
def test_count_statements(sql: str, expected: int) -> None:
    assert count_statements(sql) == expected


def test_describe_reports_the_step_without_params() -> None:
    config = {
        "connection": "warehouse",
        "mode": "write",
        "query": "UPDATE t SET a = $1 WHERE id = $2",
        "params": ["secret-value", 7],
        "maxRows": 20,
    }
    assert describe(config) == {
        "connection": "warehouse",
        "mode": "write",
        "query": "UPDATE t SET a = $1 WHERE id = $2",
        "statements": 1,
        "paramCount": 2,
        "maxRows": 20,
    }
    assert "secret-value" not in repr(describe(config))


def test_describe_defaults_and_tolerates_partial_configs() -> None:
    assert describe({"connection": "c", "query": "SELECT 1; SELECT 2"}) == {
        "connection": "c",
        "mode": "read",
        "query": "SELECT 1; SELECT 2",
        "statements": 2,
        "paramCount": 0,
        "maxRows": None,
    }
    assert describe({})["statements"] == 0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("UPDATE 3", 3),
        ("INSERT 0 2", 2),
        ("DELETE 0", 0),
        ("SELECT 5", 5),
        ("CREATE TABLE", 0),
        ("", 0),
        (None, 0),
    ],
)
def test_row_count(status: str | None, expected: int) -> None:
    assert row_count(status) == expected


def test_json_safe_values() -> None:
    moment = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    value: Any = {
        "n": decimal.Decimal("12.340"),
        "t": moment,
        "d": dt.date(2024, 5, 1),
        "u": ident,
        "b": b"\x00\xffhi",
        "i": dt.timedelta(minutes=1, seconds=30),
        "nan": float("nan"),
        "list": [decimal.Decimal("1"), None, True],
    }
    assert json_safe(value) == {
        "n": "12.340",
        "t": "2024-05-01T12:30:00+00:00",
        "d": "2024-05-01",
        "u": str(ident),
        "b": "AP9oaQ==",
        "i": 90.0,
        "nan": "nan",
        "list": ["1", None, True],
    }


@pytest.mark.parametrize(
    ("value", "type_name", "expected"),
    [
        ("42", "int4", 42),
        (" 7 ", "int8", 7),
        ("1.5", "float8", 1.5),
        ("1.10", "numeric", decimal.Decimal("1.10")),
        (0.1, "numeric", decimal.Decimal("0.1")),
        ("true", "bool", True),
        ("off", "bool", False),
        (5, "text", "5"),
        (True, "varchar", "true"),
        ("2024-05-01", "date", dt.date(2024, 5, 1)),
        ("2024-05-01T10:00:00Z", "timestamptz", dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)),
        (None, "int4", None),
        ({"a": 1}, "jsonb", {"a": 1}),
        ("as is", "text", "as is"),
    ],
)
def test_param_coercion(value: Any, type_name: str, expected: Any) -> None:
    assert _coerce(value, type_name) == expected


@pytest.mark.parametrize(("value", "type_name"), [("abc", "int4"), ("maybe", "bool")])
def test_param_coercion_refuses_nonsense(value: str, type_name: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError subclass
        _coerce(value, type_name)


def test_dsn_secrets_cover_url_and_keyword_passwords() -> None:
    url = "postgresql://bob:s%40cret-pw@db.internal:5432/app?sslmode=require"
    assert {"s%40cret-pw", "s@cret-pw", url} <= set(_dsn_secrets(url))
    keyword = "host=db user=bob password='quoted pw' dbname=app"
    assert "quoted pw" in _dsn_secrets(keyword)
    bare = "host=db password=barepw1 dbname=app"
    assert "barepw1" in _dsn_secrets(bare)


def test_classified_errors_are_scrubbed() -> None:
    dsn = "postgresql://bob:hunter22@db:5432/app"
    err = _classify(OSError(111, f"refused {dsn}"), _dsn_secrets(dsn))
    assert err.error_class is ErrorClass.NETWORK
    err = _classify(ValueError(f"bad dsn {dsn} with hunter22"), _dsn_secrets(dsn))
    assert err.error_class is ErrorClass.VALIDATION
    assert "hunter22" not in err.message
    assert dsn not in err.message


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (pgexc.QueryCanceledError("canceling statement due to statement timeout"), "timeout"),
        (pgexc.ReadOnlySQLTransactionError("read-only"), "policy_denied"),
        (pgexc.InsufficientPrivilegeError("permission denied"), "policy_denied"),
        (pgexc.InvalidPasswordError("password authentication failed"), "auth"),
        (pgexc.InvalidAuthorizationSpecificationError("no such role"), "auth"),
        (pgexc.SerializationError("could not serialize"), "provider_error"),
        (pgexc.DeadlockDetectedError("deadlock detected"), "provider_error"),
        (pgexc.TooManyConnectionsError("too many clients"), "network"),
        (pgexc.CannotConnectNowError("starting up"), "network"),
        (pgexc.ConnectionDoesNotExistError("connection was closed"), "network"),
        (pgexc.AdminShutdownError("terminating connection"), "network"),
        (pgexc.UniqueViolationError("duplicate key"), "validation"),
        (pgexc.PostgresSyntaxError("syntax error"), "validation"),
        (pgexc.UndefinedColumnError("column x does not exist"), "validation"),
        (pgexc.DivisionByZeroError("division by zero"), "validation"),
        (pgexc.RaiseError("custom"), "validation"),
        (pgexc.ClientConfigurationError("bad dsn"), "validation"),
        (ConnectionRefusedError(111, "Connection refused"), "network"),
        (TimeoutError(), "network"),
    ],
)
def test_error_classes(exc: BaseException, expected: str) -> None:
    assert _classify(exc, []).error_class == ErrorClass(expected)


def test_argument_errors_do_not_echo_the_value() -> None:
    exc = pgbase.DataError(
        "invalid input for query argument $1: 'very-private' (expected str, got int)"
    )
    err = _classify(exc, [])
    assert err.error_class is ErrorClass.VALIDATION
    assert "very-private" not in err.message
    assert "$1" in err.message
