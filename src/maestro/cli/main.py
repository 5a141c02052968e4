"""The `maestro` command: up, api, worker, scheduler, migrate, token."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from maestro.api.auth import ROLES, issue_token
from maestro.settings import Settings, SettingsError, load_settings

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maestro", description="Maestro Composer server")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="everything in one process, embedded PostgreSQL by default")
    api = sub.add_parser("api", help="the HTTP API")
    for p in (up, api):
        p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    worker = sub.add_parser("worker", help="a worker that runs steps")
    scheduler = sub.add_parser(
        "scheduler", help="a schedule runner that starts workflows on their cron schedules"
    )
    for p in (api, worker, scheduler):
        p.add_argument(
            "--health-port",
            type=int,
            default=None,
            help="serve /healthz and /readyz on this port (off by default)",
        )
    sub.add_parser("migrate", help="apply database migrations and exit")
    token = sub.add_parser("token", help="print a JWT for development and tests")
    token.add_argument("--tenant", required=True)
    token.add_argument("--roles", default="admin", help=f"comma-separated: {', '.join(ROLES)}")
    token.add_argument("--sub", default="cli", help="subject (who the token is for)")
    token.add_argument(
        "--ttl", type=int, default=86_400, help="lifetime in seconds (default 1 day)"
    )
    return parser


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard]): a faster event loop
    for the API, workers and runners alike."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a slimmer install
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _fail(message: str) -> int:
    print(f"maestro: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        return _dispatch(args, settings)
    except SettingsError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, not at the top: `maestro --help` stays fast.
    from maestro.db.embedded import EmbeddedPostgresError
    from maestro.runtime import StartupError

    try:
        return _run_command(args, settings)
    except (StartupError, EmbeddedPostgresError) as exc:
        return _fail(str(exc))


def _run_command(args: argparse.Namespace, settings: Settings) -> int:
    from maestro import runtime
    from maestro.observability.logging import configure_logging

    if args.command == "token":
        roles = [r for r in args.roles.split(",") if r]
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            return _fail(f"unknown role {unknown[0]!r}; use {', '.join(ROLES)}")
        secret = runtime.resolve_jwt_secret(settings, generate=False)
        print(issue_token(secret, subject=args.sub, tenant=args.tenant, roles=roles, ttl=args.ttl))
        return 0

    configure_logging(settings.log_level)
    if args.command == "migrate":
        if not settings.database_url:
            return _fail("set DATABASE_URL (or MAESTRO_DATABASE_URL) to the database to migrate")
        applied = _run(runtime.run_migrations(settings.database_url))
        print(f"applied migrations: {applied or 'none (up to date)'}")
        return 0

    if args.command == "up":
        host = args.host or settings.host
        port = args.port or settings.port
        secret = runtime.resolve_jwt_secret(settings, generate=True)
        webhook_key = runtime.resolve_webhook_key(settings, generate=True)
        settings = settings.model_copy(
            update={"jwt_secret": secret, "webhook_encryption_key": webhook_key}
        )
        early_stop = runtime.EarlyStop()
        early_stop.install()
        with runtime.database(settings) as dsn:
            token = issue_token(
                secret, subject="admin", tenant="default", roles=["admin"], ttl=30 * 86_400
            )
            token_path = settings.data_dir / runtime.ADMIN_TOKEN_FILE
            token_path.write_text(token + "\n", encoding="utf-8")
            token_path.chmod(0o600)
            print(f"Maestro Composer is starting on http://{host}:{port}", flush=True)
            print(f"Admin token (tenant 'default', also in {token_path}):\n{token}", flush=True)
            what = runtime.Processes(api=True, worker=True, scheduler=True, host=host, port=port)
            try:
                _run(runtime.serve(settings, dsn, what, early_stop))
            finally:
                early_stop.install()  # the runner put the default handlers back
        return 0

    server_dsn = settings.database_url
    if not server_dsn:
        return _fail(
            "set DATABASE_URL to the PostgreSQL server shared by the api, worker and "
            "scheduler processes"
        )
    if args.command == "api":
        secret = runtime.resolve_jwt_secret(settings, generate=False)
        webhook_key = runtime.resolve_webhook_key(settings, generate=False)
        settings = settings.model_copy(
            update={"jwt_secret": secret, "webhook_encryption_key": webhook_key}
        )
        what = runtime.Processes(
            api=True,
            worker=False,
            host=args.host or settings.host,
            port=args.port or settings.port,
            health_port=args.health_port,
        )
    elif args.command == "scheduler":
        what = runtime.Processes(
            api=False,
            worker=False,
            scheduler=True,
            host=settings.host,
            health_port=args.health_port,
        )
    else:
        what = runtime.Processes(
            api=False, worker=True, host=settings.host, health_port=args.health_port
        )
    _run(runtime.serve(settings, server_dsn, what))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
