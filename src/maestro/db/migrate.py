"""Numbered SQL migrations applied under an advisory lock, recorded in ``schema_migrations``.

Many replicas may start at once: the first takes the lock and migrates, the others wait for
it and then find nothing left to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import structlog

from maestro.db.pool import Conn

log = structlog.get_logger(__name__)

# An arbitrary constant that names "maestro schema migration" among advisory locks.
MIGRATION_LOCK_ID = 0x6D61_6573_7472_6F01


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("maestro.db").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


_CREATE_RECORD = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def migrate(conn: Conn) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(_CREATE_RECORD)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for migration in available_migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning(
                        "migration_checksum_mismatch",
                        version=migration.version,
                        name=migration.name,
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, name=migration.name)
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now


async def pending_migrations(conn: Conn) -> list[int]:
    """Versions not yet applied (all of them when the record table does not exist)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[int] = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.version for m in available_migrations() if m.version not in done]
