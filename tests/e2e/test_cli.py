"""The `maestro` command's short-lived subcommands and its start-up errors."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import jwt
import pytest

from tests.conftest import JWT_SECRET, with_database
from tests.e2e.conftest import Spawner, api_client, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert lines, "no output"
    return lines[-1].strip()


async def test_token_is_accepted_by_the_api(spawn: Spawner, db_dsn: str) -> None:
    done = spawn.run(
        "token",
        "--tenant",
        "acme",
        "--roles",
        "viewer",
        "--sub",
        "ci",
        MAESTRO_JWT_SECRET=JWT_SECRET,
    )
    assert done.returncode == 0, done.stderr
    token = last_line(done.stdout)
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert (claims["tenant"], claims["roles"], claims["sub"]) == ("acme", ["viewer"], "ci")

    api = spawn.api(db_dsn)
    await api.wait_ready()
    async with api_client(api.url, {"Authorization": f"Bearer {token}"}) as client:
        r = await client.get("/api/workflows")
        assert r.status_code == 200, r.text
        # A viewer may read but not create.
        r = await client.post("/api/workflows", json={"name": "x", "steps": []})
        assert r.status_code == 403, r.text
    async with api_client(api.url, {"Authorization": f"Bearer {token}x"}) as client:
        r = await client.get("/api/workflows")
        assert r.status_code == 401, r.text
    assert await api.terminate() == 0, api.describe()


def test_token_uses_the_secret_kept_in_the_data_dir(spawn: Spawner, tmp_path: Path) -> None:
    secret = "s" * 64
    (tmp_path / "jwt-secret").write_text(secret + "\n")
    done = spawn.run("token", "--tenant", "t1", "--ttl", "60", MAESTRO_DATA_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(last_line(done.stdout), secret, algorithms=["HS256"])
    assert claims["tenant"] == "t1"
    assert claims["exp"] - claims["iat"] == 60


async def test_migrate_applies_once_then_is_a_no_op(spawn: Spawner, empty_db: str) -> None:
    first = spawn.run("migrate", DATABASE_URL=empty_db)
    assert first.returncode == 0, first.stderr
    assert "applied migrations: [1, 2" in first.stdout, first.stdout

    conn = await asyncpg.connect(empty_db)
    try:
        before = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        second = spawn.run("migrate", DATABASE_URL=empty_db)
        assert second.returncode == 0, second.stderr
        assert "none (up to date)" in second.stdout, second.stdout
        after = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY 1")
        assert after == before
    finally:
        await conn.close()

    api = spawn.api(empty_db)
    await api.wait_ready()  # /readyz is 200: reachable and nothing pending
    assert await api.terminate() == 0, api.describe()


UNREACHABLE = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"

BAD = [
    # (command, environment, what stderr must mention)
    (["api"], {"MAESTRO_PORT": "notanumber", "DATABASE_URL": UNREACHABLE}, "MAESTRO_PORT"),
    (["up"], {"MAESTRO_PORT": "notanumber"}, "MAESTRO_PORT"),
    (["api"], {"MAESTRO_JWT_SECRET": "short", "DATABASE_URL": UNREACHABLE}, "MAESTRO_JWT_SECRET"),
    (["worker"], {"MAESTRO_LEASE_SECONDS": "0", "DATABASE_URL": UNREACHABLE}, "LEASE_SECONDS"),
    (["worker"], {"MAESTRO_LOG_LEVEL": "loud", "DATABASE_URL": UNREACHABLE}, "LOG_LEVEL"),
    (["api"], {"MAESTRO_JWT_SECRET": JWT_SECRET}, "DATABASE_URL"),
    (["migrate"], {}, "DATABASE_URL"),
    (["token", "--tenant", "t"], {}, "MAESTRO_JWT_SECRET"),
    (["token", "--tenant", "t", "--roles", "root"], {"MAESTRO_JWT_SECRET": JWT_SECRET}, "root"),
    (["migrate"], {"DATABASE_URL": UNREACHABLE}, "cannot connect to the database"),
    (["worker"], {"DATABASE_URL": UNREACHABLE}, "cannot connect to the database"),
]


@pytest.mark.parametrize(
    ("args", "env", "mentions"),
    BAD,
    ids=[f"{a[0]}-{next(iter(e), 'none')}-{m}" for a, e, m in BAD],
)
def test_bad_settings_fail_with_a_clear_message(
    spawn: Spawner, tmp_path: Path, args: list[str], env: dict[str, str], mentions: str
) -> None:
    done = spawn.run(*args, MAESTRO_DATA_DIR=str(tmp_path / "data"), **env)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("maestro: "), done.stderr
    assert mentions in done.stderr, done.stderr
    # Nothing was started, so nothing was written.
    assert not (tmp_path / "data" / "pgdata").exists()


async def test_database_that_does_not_exist_fails_clearly(spawn: Spawner, server_dsn: str) -> None:
    missing = with_database(server_dsn, "maestro_e2e_does_not_exist")
    done = spawn.run("api", DATABASE_URL=missing, MAESTRO_JWT_SECRET=JWT_SECRET)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "maestro_e2e_does_not_exist" in done.stderr, done.stderr
