"""Migrations build the expected schema, are idempotent, and are safe to run concurrently."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from maestro.db.migrate import available_migrations, migrate, pending_migrations
from tests.conftest import with_database
from tests.integration.schema_dump import describe

EXPECTED = Path(__file__).with_name("expected_schema.txt")


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    name = f"maestro_empty_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(server_dsn, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_fresh_database_matches_expected_schema(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        applied = await migrate(conn)
        assert applied == [m.version for m in available_migrations()]
        actual = await describe(conn)
    finally:
        await conn.close()
    assert actual == EXPECTED.read_text(), (
        "the migrated schema differs from tests/integration/expected_schema.txt; if the change "
        "is intended, regenerate it: uv run python -m tests.integration.schema_dump "
        "> tests/integration/expected_schema.txt"
    )


async def test_migrate_twice_changes_nothing(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await pending_migrations(conn) == [m.version for m in available_migrations()]
        await migrate(conn)
        before = await describe(conn)
        assert await migrate(conn) == []
        assert await pending_migrations(conn) == []
        assert await describe(conn) == before
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_version_once(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(5)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in available_migrations()]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == applied
    finally:
        for c in conns:
            await c.close()
