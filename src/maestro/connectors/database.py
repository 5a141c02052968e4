"""The ``database`` step: one SQL statement against a tenant's ``postgres`` connection.

The SQL text is never templated; values travel separately as ``params`` ($1, $2, ...). A step
runs exactly one statement, always inside a transaction with ``SET LOCAL statement_timeout``:

* ``read`` steps run in a ``READ ONLY`` transaction (PostgreSQL itself refuses any write, even
  one hidden in a CTE or a function) and fetch at most ``maxRows + 1`` rows through a cursor, so
  a huge result is never pulled into the worker;
* ``write`` steps need a connection with ``readOnly: false``, report ``rowCount`` from the
  command status and the ``RETURNING`` rows (capped like reads; PostgreSQL materialises a
  ``RETURNING`` result before sending it, so the cap bounds the output, not the statement), and
  each is recorded in the audit trail with a hash of the SQL, never the params.

Output: ``{"rows": [{column: value}], "rowCount": int, "truncated": bool}`` with JSON-safe
values: numeric as a string (exact), timestamps and dates as ISO 8601, UUIDs as strings, bytea
as base64, intervals as seconds, jsonb as the JSON value.

The handler keeps one small asyncpg pool (at most 4 connections, none kept when idle for a
minute) per (tenant, connection, DSN) for the life of the worker; ``await handler.aclose()``
closes them all. A connection whose DSN changes gets a new pool and the old one is closed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import hashlib
import ipaddress
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import asyncpg.exceptions as pgexc
import structlog
from asyncpg.exceptions import _base as pgbase

from maestro.connectors.base import ConnectorResources, typed_connection, typed_step
from maestro.db.pool import init_connection
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.model.connections import PostgresConfig
from maestro.model.connector_steps import DatabaseStepConfig
from maestro.secrets import scrub

log = structlog.get_logger("maestro.connectors.database")

POOL_MAX_SIZE = 4
# Seconds to open a connection (or wait for a free one in the pool) before giving up.
CONNECT_TIMEOUT_SECONDS = 10.0
IDLE_CONNECTION_SECONDS = 60.0

# SQLSTATE classes that may succeed when retried (everything else is the step's own fault).
_RETRYABLE_SQLSTATE_CLASSES = frozenset({"40", "53", "55", "58", "XX"})
_NETWORK_SQLSTATE_CLASSES = frozenset({"08", "57"})


# --- pure helpers --------------------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$" or ord(ch) >= 0x80


def count_statements(sql: str) -> int:
    """How many top-level statements ``sql`` holds.

    Semicolons inside '...' (and E'...' with backslash escapes), "..." identifiers,
    $tag$...$tag$ dollar quotes, -- line comments and (nested) /* */ comments do not count, and
    neither do empty statements: ``"SELECT 1;"`` is one statement, ``"-- x"`` and ``""`` none.
    An unterminated quote or comment runs to the end of the text.
    """
    count = 0
    has_content = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == ";":
            if has_content:
                count += 1
            has_content = False
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif ch == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif ch == "'":
            backslashes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _is_ident_char(sql[i - 2]))
            i = _skip_quoted(sql, i, "'", backslashes)
            has_content = True
        elif ch == '"':
            i = _skip_quoted(sql, i, '"', False)
            has_content = True
        elif ch == "$" and (i == 0 or not _is_ident_char(sql[i - 1])):
            match = _DOLLAR_TAG.match(sql, i)
            if match is None:  # $1 and the like
                i += 1
            else:
                tag = match.group()
                end = sql.find(tag, match.end())
                i = n if end == -1 else end + len(tag)
            has_content = True
        else:
            has_content = True
            i += 1
    return count + (1 if has_content else 0)


def _skip_block_comment(sql: str, start: int) -> int:
    depth, i, n = 1, start + 2, len(sql)
    while i < n and depth:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _skip_quoted(sql: str, start: int, quote: str, backslashes: bool) -> int:
    i, n = start + 1, len(sql)
    while i < n:
        ch = sql[i]
        if backslashes and ch == "\\":
            i += 2
        elif ch == quote:
            if i + 1 < n and sql[i + 1] == quote:  # '' or "" inside the quotes
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a database step will do, from its actionConfig (no I/O, no validation, no params)."""
    params = config.get("params")
    max_rows = config.get("maxRows", config.get("max_rows"))
    query = config.get("query")
    return {
        "connection": config.get("connection"),
        "mode": config.get("mode", "read"),
        "query": query,
        "statements": count_statements(query) if isinstance(query, str) else 0,
        "paramCount": len(params) if isinstance(params, list | tuple) else 0,
        "maxRows": max_rows,
    }


def row_count(status: str | None) -> int:
    """The row count of a command status: ``"UPDATE 3"`` → 3, ``"INSERT 0 2"`` → 2."""
    if not status:
        return 0
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def json_safe(value: Any) -> Any:
    """``value`` as something JSON can carry without losing exactness."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, asyncpg.Record):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, asyncpg.Range):
        return {
            "lower": json_safe(value.lower),
            "upper": json_safe(value.upper),
            "lowerInclusive": value.lower_inc,
            "upperInclusive": value.upper_inc,
            "empty": value.isempty,
        }
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return str(value)


def query_sha256(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&]+))")


def _dsn_secrets(dsn: str) -> list[str]:
    """The DSN and its password: what error messages must never show."""
    secrets = [dsn]
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        secrets += [password, unquote(password)]
    for quoted, bare in _KEYWORD_PASSWORD.findall(dsn):  # key=value form: password=...
        secrets.append(quoted or bare)
    return secrets


# --- params --------------------------------------------------------------------------------

_INT_TYPES = frozenset({"int2", "int4", "int8", "oid"})
_FLOAT_TYPES = frozenset({"float4", "float8"})
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "citext"})
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def _coerce(value: Any, type_name: str) -> Any:
    """A rendered param (often text) as the Python type asyncpg expects for ``type_name``."""
    if value is None:
        return None
    if type_name in _TEXT_TYPES:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, int | float | decimal.Decimal) else value
    if not isinstance(value, str):
        if type_name == "numeric" and isinstance(value, float):
            return decimal.Decimal(str(value))
        return value
    text = value.strip()
    if type_name in _INT_TYPES:
        return int(text)
    if type_name in _FLOAT_TYPES:
        return float(text)
    if type_name == "numeric":
        return decimal.Decimal(text)
    if type_name == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("not a boolean")
    if type_name == "uuid":
        return uuid.UUID(text)
    if type_name == "date":
        return dt.date.fromisoformat(text)
    if type_name in ("timestamp", "timestamptz"):
        return dt.datetime.fromisoformat(text)
    if type_name in ("time", "timetz"):
        return dt.time.fromisoformat(text)
    if type_name == "bytea":
        return base64.b64decode(text, validate=True)
    return value


def _coerce_params(params: list[Any], types: tuple[Any, ...]) -> list[Any]:
    if len(params) != len(types):
        raise StepError(
            ErrorClass.VALIDATION,
            f"the query has {len(types)} placeholder(s) ($1, $2, ...) but params has "
            f"{len(params)} value(s)",
        )
    coerced = []
    for index, (value, pg_type) in enumerate(zip(params, types, strict=True)):
        name = getattr(pg_type, "name", "")
        try:
            coerced.append(_coerce(value, name))
        except (ValueError, ArithmeticError, TypeError):
            # The value itself is not shown: params may be sensitive.
            raise StepError(
                ErrorClass.VALIDATION,
                f"params[{index}] (${index + 1}) cannot be read as {name}: give a {name} value",
            ) from None
    return coerced


# --- errors --------------------------------------------------------------------------------

_ARGUMENT_ERROR = re.compile(
    r"^(invalid input for query argument \$\d+)(?::.*?)?(\s*\(.*\))?$", re.S
)


def _classify(exc: BaseException, secrets: list[str]) -> StepError:
    def error(kind: ErrorClass, text: str) -> StepError:
        return StepError(kind, scrub(text, secrets))

    if isinstance(exc, StepError):
        return error(exc.error_class, exc.message)
    if isinstance(exc, pgexc.QueryCanceledError):
        return error(ErrorClass.TIMEOUT, f"the statement was cancelled: {exc}")
    if isinstance(exc, pgexc.ReadOnlySQLTransactionError):
        return error(
            ErrorClass.POLICY_DENIED,
            f"{exc}: read steps run in a read-only transaction; use mode 'write' on a "
            "connection with readOnly false",
        )
    if isinstance(exc, pgexc.InvalidAuthorizationSpecificationError):
        return error(ErrorClass.AUTH, f"the database refused the login: {exc}")
    if isinstance(exc, pgexc.InsufficientPrivilegeError):
        return error(ErrorClass.POLICY_DENIED, str(exc))
    if isinstance(exc, pgexc.TooManyConnectionsError | pgexc.CannotConnectNowError):
        return error(ErrorClass.NETWORK, f"the database cannot take a connection now: {exc}")
    if isinstance(exc, pgexc.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = str(exc)
        hint = getattr(exc, "hint", None)
        text = f"{message} (SQLSTATE {state})" + (f"; hint: {hint}" if hint else "")
        if state[:2] in _NETWORK_SQLSTATE_CLASSES or isinstance(exc, pgexc.PostgresConnectionError):
            return error(ErrorClass.NETWORK, text)
        if state[:2] in _RETRYABLE_SQLSTATE_CLASSES:
            return error(ErrorClass.PROVIDER_ERROR, text)
        return error(ErrorClass.VALIDATION, text)
    if isinstance(exc, pgexc.ClientConfigurationError):
        return error(ErrorClass.VALIDATION, f"the connection's dsn is not usable: {exc}")
    if isinstance(exc, pgexc.InterfaceError):
        if isinstance(exc, pgbase.DataError):  # client side, not SQLSTATE class 22
            # asyncpg quotes the offending value: keep only which argument and why.
            match = _ARGUMENT_ERROR.match(str(exc))
            text = (match.group(1) + (match.group(2) or "")) if match else "invalid query argument"
            return error(ErrorClass.VALIDATION, text)
        if "connection" in str(exc).lower():
            return error(ErrorClass.NETWORK, f"database connection problem: {exc}")
        return error(ErrorClass.VALIDATION, str(exc))
    if isinstance(exc, TimeoutError):
        return error(
            ErrorClass.NETWORK,
            f"no database connection within {CONNECT_TIMEOUT_SECONDS:g}s (unreachable or busy)",
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return error(ErrorClass.NETWORK, f"cannot reach the database: {reason}")
    if isinstance(exc, ValueError):  # a DSN asyncpg cannot parse
        return error(ErrorClass.VALIDATION, f"the connection's dsn is not usable: {exc}")
    return error(ErrorClass.PROVIDER_ERROR, f"database error: {type(exc).__name__}: {exc}")


# --- the handler ---------------------------------------------------------------------------


def _validated(config: Any) -> DatabaseStepConfig:
    return typed_step(DatabaseStepConfig, config)


def _connection_config(name: str, raw: Mapping[str, Any]) -> PostgresConfig:
    return typed_connection(PostgresConfig, name, "postgres", raw)


class DatabaseHandler:
    """The ``database`` step handler (``await handler(ctx, config)``) and its pools."""

    def __init__(self, resources: ConnectorResources) -> None:
        self._resources = resources
        self._pools: dict[tuple[str, str], tuple[str, asyncpg.Pool]] = {}
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def __call__(self, ctx: StepContext, config: Any) -> dict[str, Any]:
        step = _validated(config)
        statements = count_statements(step.query)
        if statements != 1:
            raise StepError(
                ErrorClass.VALIDATION,
                "one statement per step: the query holds "
                + ("no statement" if statements == 0 else f"{statements} statements")
                + "; split it into several database steps",
            )
        raw = await self._resources.connection(ctx.tenant, step.connection, ("postgres",))
        conn_config = _connection_config(step.connection, raw)
        if step.mode == "write" and conn_config.read_only:
            raise StepError(
                ErrorClass.POLICY_DENIED,
                f"connection {step.connection!r} is read-only; set readOnly false on the "
                "connection to allow write steps",
            )
        dsn = await self._resources.resolve(raw["dsn"])
        if not isinstance(dsn, str) or not dsn:
            raise StepError(
                ErrorClass.VALIDATION, f"connection {step.connection!r}: dsn resolved to no text"
            )
        secrets = _dsn_secrets(dsn)
        max_rows = min(step.max_rows or conn_config.max_rows, conn_config.max_rows)
        timeout_ms = max(1, round(conn_config.statement_timeout_seconds * 1000))
        try:
            pool = await self._pool(ctx.tenant, step.connection, dsn)
            async with pool.acquire(timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                if step.mode == "read":
                    output = await _read(conn, step, timeout_ms, max_rows)
                else:
                    output = await _write(conn, step, timeout_ms, max_rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _classify(exc, secrets) from None
        if step.mode == "write":
            await self._audit(ctx, step, output["rowCount"])
        return output

    async def _audit(self, ctx: StepContext, step: DatabaseStepConfig, count: int) -> None:
        details = {
            "executionId": str(ctx.execution_id),
            "stepId": ctx.step_id,
            "rowCount": count,
            "querySha256": query_sha256(step.query),
        }
        try:
            await self._resources.audit(
                ctx.tenant,
                f"execution:{ctx.execution_id}",
                "database.write",
                "connection",
                step.connection,
                details,
            )
        except Exception as exc:
            # The write is committed: failing the step now would retry (repeat) it.
            log.error(
                "database_write_audit_failed",
                tenant=ctx.tenant,
                connection=step.connection,
                error=type(exc).__name__,
                **details,
            )

    async def _pool(self, tenant: str, name: str, dsn: str) -> asyncpg.Pool:
        key = (tenant, name)
        digest = hashlib.sha256(dsn.encode()).hexdigest()
        current = self._pools.get(key)
        if current is not None and current[0] == digest:
            return current[1]
        async with self._lock:
            current = self._pools.get(key)
            if current is not None and current[0] == digest:
                return current[1]
            pool = await asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=POOL_MAX_SIZE,
                max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
                timeout=CONNECT_TIMEOUT_SECONDS,
                # User databases change schema under us: no cached plans to go stale.
                statement_cache_size=0,
                init=init_connection,
                server_settings={"application_name": "maestro-database-step"},
            )
            assert pool is not None
            self._pools[key] = (digest, pool)
            if current is not None:  # the DSN changed: retire the old pool
                task = asyncio.ensure_future(current[1].close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return pool

    async def aclose(self) -> None:
        """Close every pool (the handler may be used again afterwards: pools reopen)."""
        async with self._lock:
            pools = [pool for _, pool in self._pools.values()]
            self._pools.clear()
        closing = list(self._closing)
        await asyncio.gather(*(pool.close() for pool in pools), *closing, return_exceptions=True)


async def _prepare(conn: Any, step: DatabaseStepConfig) -> tuple[Any, list[Any]]:
    stmt = await conn.prepare(step.query)
    return stmt, _coerce_params(step.params, tuple(stmt.get_parameters()))


async def _read(
    conn: Any, step: DatabaseStepConfig, timeout_ms: int, max_rows: int
) -> dict[str, Any]:
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        stmt, params = await _prepare(conn, step)
        cursor = await stmt.cursor(*params)
        records = await cursor.fetch(max_rows + 1)
    rows = [json_safe(record) for record in records[:max_rows]]
    return {"rows": rows, "rowCount": len(rows), "truncated": len(records) > max_rows}


async def _write(
    conn: Any, step: DatabaseStepConfig, timeout_ms: int, max_rows: int
) -> dict[str, Any]:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        stmt, params = await _prepare(conn, step)
        records = await stmt.fetch(*params)
        status = stmt.get_statusmsg()
    rows = [json_safe(record) for record in records[:max_rows]]
    return {"rows": rows, "rowCount": row_count(status), "truncated": len(records) > max_rows}


def make_handler(resources: ConnectorResources) -> DatabaseHandler:
    """The ``database`` step handler; ``await handler.aclose()`` closes its pools."""
    return DatabaseHandler(resources)
