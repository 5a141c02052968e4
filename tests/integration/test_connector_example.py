"""examples/connectors/large-order.yaml — all six connector types — runs to `succeeded`
against the provider emulators, a real SMTP server (aiosmtpd) and the real PostgreSQL."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller

from maestro.connectors.base import ConnectorResources
from maestro.connectors.registry import step_handlers
from maestro.secrets import SecretResolver
from tests.conftest import WorkerHandle, wait_for_status
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.flaky_http import FlakyHttp, Scripted
from tests.fakes.jira_api import FakeJira
from tests.fakes.kserve import KServeFake
from tests.fakes.slack_api import SlackApi

EXAMPLE = Path(__file__).parents[2] / "examples" / "connectors" / "large-order.yaml"
SLACK_TOKEN = "xoxb-example-token-000111"
ORDERS_TOKEN = "orders-token-222333"
JIRA_TOKEN = "jira-api-token"  # the emulator's default


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 2.0.0 queued"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorResources]:
    monkeypatch.setenv("ORDERS_TOKEN", ORDERS_TOKEN)
    monkeypatch.setenv("SLACK_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("JIRA_TOKEN", JIRA_TOKEN)
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


async def connect(client: httpx.AsyncClient, name: str, kind: str, config: dict[str, Any]) -> None:
    r = await client.post("/api/connections", json={"name": name, "type": kind, "config": config})
    assert r.status_code == 201, r.text
    test = (await client.post(f"/api/connections/{name}/test")).json()
    assert test["ok"], test


async def test_the_six_connector_example_succeeds(
    client: httpx.AsyncClient,
    workers: WorkerHandle,
    resources: ConnectorResources,
    pool: asyncpg.Pool,
    db_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_DSN", db_dsn)
    await pool.execute("CREATE TABLE orders (id int, customer text)")
    await pool.execute("INSERT INTO orders VALUES (1, 'grace'), (2, 'grace'), (3, 'alan')")

    orders = FlakyHttp()
    order = {"id": 42, "total": 2500, "items": 3, "customer": "grace"}
    orders.script("/orders/42", [503, Scripted(200, order)])  # one retry on the way
    orders.script("/", [Scripted(200, {"service": "orders"})])
    slack = SlackApi(SLACK_TOKEN)
    slack.add_channel("C0OPS", "ops")
    jira = FakeJira()
    models = KServeFake()
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        async with (
            serve_asgi(orders) as orders_url,
            serve_asgi(slack) as slack_url,
            serve_asgi(jira) as jira_url,
            serve_asgi(models) as models_url,
        ):
            bearer = {"strategy": "bearer", "token": {"secretRef": "env://ORDERS_TOKEN"}}
            await connect(client, "orders-api", "http", {"baseUrl": orders_url, "auth": bearer})
            await connect(client, "fraud-model", "ml", {"baseUrl": models_url})
            await connect(client, "shop-db", "postgres", {"dsn": {"secretRef": "env://SHOP_DSN"}})
            await connect(
                client,
                "acme-jira",
                "jira",
                {
                    "baseUrl": jira_url,
                    "auth": {
                        "type": "basic",
                        "email": jira.email,
                        "apiToken": {"secretRef": "env://JIRA_TOKEN"},
                    },
                    "allowedProjects": ["OPS"],
                },
            )
            await connect(
                client,
                "ops-slack",
                "slack",
                {"botToken": {"secretRef": "env://SLACK_TOKEN"}, "baseUrl": slack_url + "/api/"},
            )
            await connect(
                client,
                "ops-mail",
                "smtp",
                {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "from": "maestro@example.com",
                },
            )

            r = await client.post(
                "/api/workflows",
                content=EXAMPLE.read_bytes(),
                headers={"Content-Type": "application/yaml"},
            )
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            assert (await client.post(f"/api/workflows/{wid}/publish")).status_code == 200
            await workers.start(
                handlers=step_handlers(resources), secret_values=resources.secrets.known_values
            )
            payload = json.loads(EXAMPLE.with_name("large-order.input.json").read_text())
            r = await client.post(f"/api/workflows/{wid}/execute", json={"input": payload})
            eid = r.json()["executionId"]
            status = await wait_for_status(db_dsn, eid, {"succeeded", "failed"}, timeout=60)
            execution = (await client.get(f"/api/executions/{eid}")).json()
            assert status == "succeeded", execution
    finally:
        smtp.stop()

    steps = {s["stepId"]: s for s in execution["steps"]}
    assert all(s["status"] == "succeeded" for s in steps.values()), steps
    assert steps["fetch"]["attempts"] == 2  # the 503 was retried
    assert steps["history"]["output"]["rows"] == [{"previous_orders": 2}]
    key = steps["ticket"]["output"]["key"]
    assert key.startswith("OPS-")
    assert "Fraud confidence" in json.dumps(jira.issues[key].fields["description"])
    assert [m["text"] for m in slack.messages("C0OPS")] == [
        f"Order 42 needs review: {steps['ticket']['output']['url']}"
    ]
    assert len(inbox.messages) == 1
    assert inbox.messages[0].rcpt_tos == ["finance@example.com"]
    assert steps["mail"]["output"]["provider"] == "smtp"
    assert 0 <= steps["score"]["output"]["confidence"] <= 1
    assert all(s["inputSha256"] and s["outputSha256"] for s in steps.values())
    everything = json.dumps(execution)
    for secret in (SLACK_TOKEN, ORDERS_TOKEN, db_dsn):
        assert secret not in everything
    # Nothing stored anywhere holds a resolved secret: every row of every table, as text.
    tables = [
        r["tablename"]
        for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    assert {"step_runs", "workflow_logs", "audit_log", "connections"} <= set(tables)
    for table in tables:
        dump = await pool.fetchval(
            f"SELECT coalesce(string_agg(t::text, chr(10)), '') FROM \"{table}\" t"
        )
        for secret in (SLACK_TOKEN, ORDERS_TOKEN, JIRA_TOKEN):
            assert secret not in dump, table
