"""Webhook intake benchmark: accepted signed deliveries per second and their latency at a
fixed offered load, end to end through a real `maestro api` process and PostgreSQL.

Each delivery is a distinct signed message (Standard Webhooks, a 1 KiB JSON body) that starts
an execution. The load is open-loop: request i is due at start + i/rate whether or not earlier
answers came back, and its latency counts from that due time, so a server that falls behind
is charged for the queueing (no coordinated omission). The client is a lean asyncio HTTP/1.1
client over keep-alive connections, in this process. No worker runs: the executions stay
queued, and only the intake is measured. Signature verification alone is in
bench/webhook_verify.py.

Usage: `make bench` or `python bench/webhooks.py [--quick] [--rate N] [--seconds S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))

from engine import SECRET, _env, _pct, fresh_database, processes
from maestro.api.auth import issue_token
from maestro.triggers.webhook_secrets import new_encryption_key
from maestro.triggers.webhook_signature import sign


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(300):
            try:
                if (await c.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("the API did not become ready")


async def setup(url: str) -> tuple[str, str]:
    """A published one-step workflow with a webhook; returns its delivery path and secret."""
    token = issue_token(SECRET, subject="bench", tenant="bench", roles=["admin"], ttl=3600)
    headers = {"Authorization": f"Bearer {token}"}
    wf = {"name": "hook", "steps": [{"id": "only", "type": "noop", "actionConfig": {"n": 1}}]}
    async with httpx.AsyncClient(base_url=url, headers=headers) as c:
        wid = (await c.post("/api/workflows", json=wf)).json()["id"]
        await c.post(f"/api/workflows/{wid}/publish")
        hook = (await c.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "b"})).json()
    return f"/api/webhooks/workflow/{wid}/b", hook["secret"]


def requests(path: str, secret: str, n: int, port: int, run: str) -> list[bytes]:
    now = int(time.time())
    body = orjson.dumps({"event": "order.created", "data": {"pad": "x" * 980}})
    out = []
    for i in range(n):
        msg_id = f"msg_{run}_{i:08d}"
        signature = sign(secret, msg_id, now, body)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"webhook-id: {msg_id}\r\nwebhook-timestamp: {now}\r\n"
            f"webhook-signature: {signature}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def open_loop(
    port: int, payloads: list[bytes], rate: float, connections: int
) -> tuple[list[float], dict[int, int], float]:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                due, payload = await queue.get()
                if not payload:
                    return
                writer.write(payload)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - due)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter() + 0.05
    for i, payload in enumerate(payloads):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, payload))
    for _ in workers:
        queue.put_nowait((0.0, b""))
    await asyncio.gather(*workers)
    return latencies, statuses, time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 s instead of 20 s")
    parser.add_argument("--rate", type=float, default=800.0, help="offered deliveries/s")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    base = os.environ.get("MAESTRO_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    dsn = await fresh_database(base)
    port = free_port()
    env = _env(dsn, MAESTRO_WEBHOOK_ENCRYPTION_KEY=new_encryption_key())
    with processes((["api", "--port", str(port)], env)):
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        path, secret = await setup(url)
        # Warm-up: caches, prepared statements, the JIT of nothing (CPython).
        await open_loop(port, requests(path, secret, 300, port, "warm"), 300, args.connections)
        n = int(args.rate * seconds)
        payloads = requests(path, secret, n, port, "run")
        # The measuring client's own collector pauses would show up as server latency.
        gc.collect()
        gc.freeze()
        latencies, statuses, elapsed = await open_loop(port, payloads, args.rate, args.connections)
    ms = [v * 1000 for v in latencies]
    accepted = statuses.get(202, 0)
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; 1 `maestro api` process, {args.connections} "
        f"keep-alive connections, 1 KiB JSON bodies\n"
    )
    print("| offered/s | accepted/s | statuses | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.rate:.0f} | {accepted / elapsed:.0f} | {statuses} | {_pct(ms, 50):.1f} "
        f"| {_pct(ms, 95):.1f} | {_pct(ms, 99):.1f} | {max(ms):.1f} |"
    )


if __name__ == "__main__":
    asyncio.run(main())
