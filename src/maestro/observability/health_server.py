"""A tiny HTTP server for probes and metrics of processes without the API (`maestro worker`,
`maestro scheduler`): /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio

import asyncpg

from maestro.db.migrate import pending_migrations
from maestro.observability.metrics import render


async def _ready(pool: asyncpg.Pool) -> tuple[int, bytes]:
    try:
        async with pool.acquire(timeout=2) as conn:
            pending = await pending_migrations(conn)
    except Exception:
        return 503, b'{"status":"unavailable","code":"database_unavailable"}'
    if pending:
        return 503, b'{"status":"unavailable","code":"migrations_pending"}'
    return 200, b'{"status":"ready"}'


async def serve_health(pool: asyncpg.Pool, host: str, port: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            content_type = "application/json"
            if path == "/healthz":
                status, body = 200, b'{"status":"ok"}'
            elif path == "/metrics":
                body, content_type = render()
                status = 200
            elif path == "/readyz":
                status, body = await _ready(pool)
            else:
                status, body = 404, b'{"code":"not_found"}'
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
