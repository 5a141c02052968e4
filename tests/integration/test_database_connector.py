"""The database step against a real PostgreSQL: the per-test database is also the target."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.connectors.database import DatabaseHandler, make_handler, query_sha256
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver


@dataclass
class Env:
    handler: DatabaseHandler
    pool: asyncpg.Pool
    ctx: StepContext

    async def run(self, **config: Any) -> Any:
        return await self.handler(self.ctx, config)

    async def fails(self, **config: Any) -> StepError:
        with pytest.raises(StepError) as caught:
            await self.handler(self.ctx, config)
        return caught.value


async def add_connection(pool: asyncpg.Pool, name: str, config: dict[str, Any]) -> None:
    await pool.execute(
        "INSERT INTO connections (tenant_id, name, type, description, config) "
        "VALUES ('acme', $1, 'postgres', '', $2)",
        name,
        config,
    )


DSN_REF = {"secretRef": "env://TARGET_DSN"}


@pytest.fixture
async def env(
    pool: asyncpg.Pool, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Env]:
    monkeypatch.setenv("TARGET_DSN", db_dsn)
    await pool.execute("INSERT INTO tenants (id) VALUES ('acme')")
    await add_connection(pool, "rw", {"dsn": DSN_REF, "readOnly": False, "maxRows": 100})
    await add_connection(pool, "ro", {"dsn": DSN_REF})
    await add_connection(pool, "capped", {"dsn": DSN_REF, "readOnly": False, "maxRows": 5})
    await add_connection(pool, "slow", {"dsn": DSN_REF, "statementTimeoutSeconds": 0.2})
    await pool.execute(
        "CREATE TABLE scratch (id int PRIMARY KEY, name text UNIQUE NOT NULL, amount numeric)"
    )
    await pool.execute(
        "INSERT INTO scratch SELECT g, 'item-' || g, g * 1.5 FROM generate_series(1, 50) g"
    )
    http = httpx.AsyncClient()
    resources = ConnectorResources(pool=pool, secrets=SecretResolver(), http=http)
    handler = make_handler(resources)
    ctx = StepContext(
        tenant="acme",
        execution_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        step_id="query",
        step_type="database",
        attempt=1,
        correlation_id=None,
        state=None,
    )
    try:
        yield Env(handler, pool, ctx)
    finally:
        await handler.aclose()
        await http.aclose()


async def test_read_with_params(env: Env) -> None:
    out = await env.run(
        connection="ro",
        query="SELECT id, name FROM scratch WHERE id BETWEEN $1 AND $2 ORDER BY id",
        params=[3, "5"],  # rendered templates are often text: coerced to the parameter type
    )
    assert out == {
        "rows": [
            {"id": 3, "name": "item-3"},
            {"id": 4, "name": "item-4"},
            {"id": 5, "name": "item-5"},
        ],
        "rowCount": 3,
        "truncated": False,
    }


async def test_max_rows_truncates(env: Env) -> None:
    out = await env.run(connection="ro", query="SELECT id FROM scratch ORDER BY id", maxRows=10)
    assert [r["id"] for r in out["rows"]] == list(range(1, 11))
    assert out["rowCount"] == 10
    assert out["truncated"] is True
    exact = await env.run(connection="ro", query="SELECT id FROM scratch", maxRows=50)
    assert (len(exact["rows"]), exact["truncated"]) == (50, False)


async def test_connection_max_rows_caps_the_step(env: Env) -> None:
    out = await env.run(connection="capped", query="SELECT id FROM scratch", maxRows=40)
    assert len(out["rows"]) == 5
    assert out["truncated"] is True
    # Without a step maxRows the connection's applies.
    out = await env.run(connection="capped", query="SELECT id FROM scratch")
    assert len(out["rows"]) == 5


@pytest.mark.parametrize(
    "query",
    [
        "WITH x AS (DELETE FROM scratch WHERE id = 1 RETURNING *) SELECT * FROM x",
        "DELETE FROM scratch WHERE id = 1",
        "INSERT INTO scratch VALUES (1000, 'sneaky', 0)",
    ],
)
async def test_read_mode_refuses_disguised_writes(env: Env, query: str) -> None:
    err = await env.fails(connection="rw", query=query)
    assert err.error_class is ErrorClass.POLICY_DENIED
    assert "read-only transaction" in err.message
    assert await env.pool.fetchval("SELECT count(*) FROM scratch WHERE id = 1") == 1
    assert await env.pool.fetchval("SELECT count(*) FROM scratch") == 50


async def test_write_refused_on_read_only_connection(env: Env) -> None:
    err = await env.fails(connection="ro", mode="write", query="DELETE FROM scratch")
    assert err.error_class is ErrorClass.POLICY_DENIED
    assert "read-only" in err.message
    assert await env.pool.fetchval("SELECT count(*) FROM scratch") == 50
    assert await env.pool.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_write_returns_row_count_rows_and_audits(env: Env) -> None:
    query = "UPDATE scratch SET amount = amount + $1 WHERE id <= $2 RETURNING id, amount"
    out = await env.run(connection="rw", mode="write", query=query, params=["0.25", 3], maxRows=2)
    assert out["rowCount"] == 3
    assert out["truncated"] is True
    assert sorted(r["id"] for r in out["rows"])[0] in (1, 2, 3)
    assert len(out["rows"]) == 2
    assert all(isinstance(r["amount"], str) for r in out["rows"])
    assert await env.pool.fetchval("SELECT amount FROM scratch WHERE id = 1") == pytest.approx(1.75)
    insert = await env.run(
        connection="rw",
        mode="write",
        query="INSERT INTO scratch (id, name) VALUES ($1, $2), ($3, $4)",
        params=[100, "secret-name-a", 101, "secret-name-b"],
    )
    assert insert == {"rows": [], "rowCount": 2, "truncated": False}
    audits = await env.pool.fetch(
        "SELECT tenant_id, actor, action, resource_type, resource_id, details::text AS d "
        "FROM audit_log ORDER BY id"
    )
    assert len(audits) == 2
    first = audits[0]
    assert first["tenant_id"] == "acme"
    assert first["actor"] == f"execution:{env.ctx.execution_id}"
    assert (first["action"], first["resource_type"], first["resource_id"]) == (
        "database.write",
        "connection",
        "rw",
    )
    details = await env.pool.fetchval("SELECT details FROM audit_log ORDER BY id LIMIT 1")
    assert details == {
        "executionId": str(env.ctx.execution_id),
        "stepId": "query",
        "rowCount": 3,
        "querySha256": query_sha256(query),
    }
    assert "secret-name" not in audits[1]["d"]
    assert "0.25" not in first["d"]


async def test_two_statements_refused(env: Env) -> None:
    err = await env.fails(connection="rw", mode="write", query="DELETE FROM scratch; SELECT 1")
    assert err.error_class is ErrorClass.VALIDATION
    assert "one statement per step" in err.message
    assert await env.pool.fetchval("SELECT count(*) FROM scratch") == 50
    # A semicolon in a string is not a second statement.
    out = await env.run(connection="ro", query="SELECT 'a;b' AS s;")
    assert out["rows"] == [{"s": "a;b"}]


async def test_statement_timeout(env: Env) -> None:
    started = time.monotonic()
    err = await env.fails(connection="slow", query="SELECT pg_sleep(5)")
    assert err.error_class is ErrorClass.TIMEOUT
    assert err.retryable
    assert time.monotonic() - started < 2.5


async def test_unique_violation_is_validation(env: Env) -> None:
    err = await env.fails(
        connection="rw",
        mode="write",
        query="INSERT INTO scratch (id, name) VALUES ($1, $2)",
        params=[500, "item-1"],
    )
    assert err.error_class is ErrorClass.VALIDATION
    assert not err.retryable
    assert "unique" in err.message
    assert "23505" in err.message


async def test_syntax_and_undefined_table_are_validation(env: Env) -> None:
    err = await env.fails(connection="ro", query="SELEC 1")
    assert err.error_class is ErrorClass.VALIDATION
    assert "syntax error" in err.message
    err = await env.fails(connection="ro", query="SELECT * FROM no_such_table")
    assert err.error_class is ErrorClass.VALIDATION
    assert "no_such_table" in err.message


async def test_params_mismatch_and_bad_values_are_validation(env: Env) -> None:
    err = await env.fails(connection="ro", query="SELECT $1::int + $2::int", params=[1])
    assert err.error_class is ErrorClass.VALIDATION
    assert "placeholder" in err.message
    err = await env.fails(connection="ro", query="SELECT $1::int", params=["not-a-number"])
    assert err.error_class is ErrorClass.VALIDATION
    assert "not-a-number" not in err.message


async def test_templated_sql_and_bad_config_are_validation(env: Env) -> None:
    err = await env.fails(connection="ro", query="SELECT {{ input.x }}")
    assert err.error_class is ErrorClass.VALIDATION
    err = await env.fails(connection="ro", query="SELECT 1", mode="delete")
    assert err.error_class is ErrorClass.VALIDATION
    err = await env.fails(connection="nope", query="SELECT 1")
    assert err.error_class is ErrorClass.NOT_FOUND


async def test_json_safe_output_types(env: Env) -> None:
    out = await env.run(
        connection="ro",
        query=(
            "SELECT 12.340::numeric AS n, '2024-05-01T12:30:00Z'::timestamptz AS ts, "
            "'2024-05-01'::date AS d, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, "
            "'\\x00ff'::bytea AS b, '{\"k\": [1, 2.5, null]}'::jsonb AS j, "
            "ARRAY[1.5, 2]::numeric[] AS arr, NULL::text AS nothing, true AS flag"
        ),
    )
    row = out["rows"][0]
    assert row["n"] == "12.340"
    assert row["ts"].startswith("2024-05-01T12:30:00")
    assert row["d"] == "2024-05-01"
    assert row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert base64.b64decode(row["b"]) == b"\x00\xff"
    assert row["j"] == {"k": [1, 2.5, None]}
    assert row["arr"] == ["1.5", "2"]
    assert row["nothing"] is None
    assert row["flag"] is True


async def test_unreachable_dsn_is_network_and_hides_the_dsn(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://bob:topsecretpw@127.0.0.1:{port}/app"
    monkeypatch.setenv("GONE_DSN", dsn)
    await add_connection(env.pool, "gone", {"dsn": {"secretRef": "env://GONE_DSN"}})
    err = await env.fails(connection="gone", query="SELECT 1")
    assert err.error_class is ErrorClass.NETWORK
    assert err.retryable
    assert "topsecretpw" not in err.message
    assert dsn not in err.message


async def _fake_postgres_refusing_password(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Enough of the protocol to ask for a password and refuse it (the test server trusts)."""
    try:
        while True:
            length = struct.unpack("!I", await reader.readexactly(4))[0]
            body = await reader.readexactly(length - 4)
            if struct.unpack("!I", body[:4])[0] == 80877103:  # SSLRequest
                writer.write(b"N")
                await writer.drain()
                continue
            break
        writer.write(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        await writer.drain()
        await reader.readexactly(1)  # 'p'
        length = struct.unpack("!I", await reader.readexactly(4))[0]
        await reader.readexactly(length - 4)
        fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "bob"\0\0'
        writer.write(b"E" + struct.pack("!I", len(fields) + 4) + fields)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_wrong_password_is_auth_and_hides_the_password(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await asyncio.start_server(_fake_postgres_refusing_password, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dsn = f"postgresql://bob:wrong-password-9@127.0.0.1:{port}/app?sslmode=disable"
        monkeypatch.setenv("BAD_DSN", dsn)
        await add_connection(env.pool, "badpw", {"dsn": {"secretRef": "env://BAD_DSN"}})
        err = await env.fails(connection="badpw", query="SELECT 1")
        assert err.error_class is ErrorClass.AUTH
        assert not err.retryable
        assert "password authentication failed" in err.message
        assert "wrong-password-9" not in err.message
        assert dsn not in err.message
    finally:
        server.close()
        await server.wait_closed()


async def test_missing_dsn_secret_is_validation(env: Env) -> None:
    await add_connection(env.pool, "unset", {"dsn": {"secretRef": "env://NOT_SET_ANYWHERE_X"}})
    err = await env.fails(connection="unset", query="SELECT 1")
    assert err.error_class is ErrorClass.VALIDATION


async def test_pool_is_reused_and_closed(env: Env) -> None:
    await env.run(connection="ro", query="SELECT 1")
    await env.run(connection="ro", query="SELECT 2")
    await env.run(connection="rw", query="SELECT 3")
    assert len(env.handler._pools) == 2
    await env.handler.aclose()
    assert env.handler._pools == {}
    # Still usable: a new pool opens.
    out = await env.run(connection="ro", query="SELECT 4 AS x")
    assert out["rows"] == [{"x": 4}]
