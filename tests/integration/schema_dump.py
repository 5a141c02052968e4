"""A canonical text description of a database schema, for comparing schemas.

Regenerate the expected schema after adding a migration:
    uv run python -m tests.integration.schema_dump > tests/integration/expected_schema.txt
(with MAESTRO_TEST_DATABASE_URL pointing at a server where a scratch database can be created).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
import structlog

from maestro.db.migrate import migrate
from tests.conftest import with_database

_QUERIES = {
    "column": """
        SELECT table_name || '.' || column_name || ' ' || data_type
               || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
               || coalesce(' default ' || column_default, '')
               || CASE WHEN is_identity = 'YES' THEN ' identity' ELSE '' END
          FROM information_schema.columns WHERE table_schema = 'public'
    """,
    "index": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "constraint": """
        SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND contype <> 'n'
    """,
    "function": """
        SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> '
               || pg_get_function_result(p.oid)
          FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
    """,
    "type": """
        SELECT t.typname || ' '
               || string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                             ORDER BY a.attnum)
          FROM pg_type t
          JOIN pg_class c ON c.oid = t.typrelid
          JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE t.typnamespace = 'public'::regnamespace AND c.relkind = 'c'
         GROUP BY t.typname
    """,
}


async def describe(conn: asyncpg.Connection) -> str:
    lines = []
    for kind, query in _QUERIES.items():
        lines += sorted(f"{kind} {row[0]}" for row in await conn.fetch(query))
    return "\n".join(lines) + "\n"


async def _main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    base = os.environ.get(
        "MAESTRO_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"schema_dump_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(with_database(base, name))
        try:
            await migrate(conn)
            sys.stdout.write(await describe(conn))
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(_main())
