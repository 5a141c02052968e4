"""asyncpg connection pool with JSON codecs (orjson) installed on every connection."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL): one round trip per release, for state our pooled connections never have.
    Session-level LISTEN, advisory locks and SET live on dedicated connections (workers,
    runners, migrations); pooled code uses SET LOCAL only. asyncpg still rolls back a
    transaction left open and drops listeners before calling this."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_keep_session,
        server_settings={"application_name": "maestro"},
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "maestro"})
    await init_connection(conn)
    return conn


# What a function that runs queries accepts: a plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy
