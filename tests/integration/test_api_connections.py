"""Connections over HTTP: typed configs, secrets as references only, tenancy, roles, audit."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import auth

ENV = {"secretRef": "env://SLACK_BOT_TOKEN"}
VAULT = {"secretRef": "vault://secret/team/db#dsn"}
FILE = {"secretRef": "file:///run/secrets/key"}

VALID: dict[str, dict[str, Any]] = {
    "smtp": {
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "mailer",
        "password": ENV,
        "from": "ops@example.com",
        "allowedSenders": ["ops@example.com"],
        "dkim": {"domain": "example.com", "selector": "s1", "privateKey": FILE},
    },
    "sendgrid": {"apiKey": ENV, "from": "ops@example.com"},
    "postmark": {"serverToken": VAULT, "from": "ops@example.com", "messageStream": "alerts"},
    "slack": {"botToken": ENV},
    "jira": {
        "baseUrl": "https://acme.atlassian.net",
        "auth": {"type": "basic", "email": "bot@acme.io", "apiToken": VAULT},
        "allowedProjects": ["OPS"],
    },
    "http": {
        "baseUrl": "https://orders.internal",
        "auth": {"strategy": "hmac", "secret": FILE},
        "defaultHeaders": {"X-Team": "ops"},
        "circuitBreaker": {"failureThreshold": 3, "resetTimeoutSeconds": 10},
    },
    "postgres": {"dsn": VAULT, "readOnly": True, "statementTimeoutSeconds": 2, "maxRows": 50},
    "ml": {"baseUrl": "http://kserve.internal", "auth": {"strategy": "bearer", "token": ENV}},
}


@pytest.mark.parametrize("kind", sorted(VALID))
async def test_every_type_is_created_and_read_back(client: httpx.AsyncClient, kind: str) -> None:
    r = await client.post(
        "/api/connections", json={"name": f"my-{kind}", "type": kind, "config": VALID[kind]}
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/api/connections/my-{kind}"
    body = (await client.get(f"/api/connections/my-{kind}")).json()
    assert body["type"] == kind
    # What was sent comes back (defaults filled in), references and all.
    for key, value in VALID[kind].items():
        if isinstance(value, dict) and not set(value) - set(body["config"][key]):
            assert {k: body["config"][key][k] for k in value} == value
        else:
            assert body["config"][key] == value
    names = [c["name"] for c in (await client.get("/api/connections")).json()["items"]]
    assert names == [f"my-{kind}"]


async def test_defaults_are_filled_in(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/connections", json={"name": "s", "type": "slack", "config": {"botToken": ENV}}
    )
    assert r.json()["config"] == {"botToken": ENV, "baseUrl": "https://slack.com/api/"}
    r = await client.post(
        "/api/connections", json={"name": "db", "type": "postgres", "config": {"dsn": VAULT}}
    )
    assert r.json()["config"] == {
        "dsn": VAULT,
        "readOnly": True,
        "statementTimeoutSeconds": 5.0,
        "maxRows": 1000,
    }


@pytest.mark.parametrize(
    ("kind", "config", "path"),
    [
        ("slack", {"botToken": "xoxb-plain-secret-value"}, "config.botToken"),
        ("postgres", {"dsn": "postgresql://u:plain-secret-value@h/db"}, "config.dsn"),
        (
            "http",
            {
                "baseUrl": "https://x.io",
                "auth": {"strategy": "bearer", "token": "plain-secret-value"},
            },
            "config.auth.bearer.token",
        ),
        (
            "smtp",
            {"host": "h", "from": "a@b.c", "password": "plain-secret-value"},
            "config.password",
        ),
    ],
)
async def test_a_plain_secret_is_refused_and_never_echoed(
    client: httpx.AsyncClient, kind: str, config: dict[str, Any], path: str
) -> None:
    await _refused_without_echo(client, kind, config, path, "secret_must_be_reference")


async def test_a_secret_pasted_as_a_reference_is_not_echoed(client: httpx.AsyncClient) -> None:
    config = {"botToken": {"secretRef": "xoxb-plain-secret-value"}}
    await _refused_without_echo(
        client, "slack", config, "config.botToken.secretRef", "invalid_connection"
    )


async def _refused_without_echo(
    client: httpx.AsyncClient, kind: str, config: dict[str, Any], path: str, code: str
) -> None:
    r = await client.post("/api/connections", json={"name": "c", "type": kind, "config": config})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["code"] == code
    assert path in [e["path"] for e in problem["errors"]]
    assert "secretRef" in problem["detail"] or "env://" in problem["detail"]
    assert "plain-secret-value" not in r.text
    assert (await client.get("/api/connections/c")).status_code == 404


async def test_invalid_settings_name_the_field(client: httpx.AsyncClient) -> None:
    cases = [
        ({"name": "x", "type": "carrier-pigeon", "config": {}}, "type"),
        (
            {"name": "x", "type": "smtp", "config": {"host": "h", "from": "a@b.c", "port": 0}},
            "config.port",
        ),
        (
            {"name": "x", "type": "slack", "config": {"botToken": ENV, "color": "red"}},
            "config.color",
        ),
        (
            {"name": "x", "type": "slack", "config": {"botToken": {"secretRef": "ftp://nope"}}},
            "config.botToken.secretRef",
        ),
    ]
    for body, path in cases:
        r = await client.post("/api/connections", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["code"] == "invalid_connection", r.text
        assert path in [e["path"] for e in r.json()["errors"]], r.text
    r = await client.post(
        "/api/connections", json={"name": "bad name!", "type": "slack", "config": {}}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"


async def test_duplicate_replace_rotate_and_delete(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = {"name": "chat", "type": "slack", "config": {"botToken": ENV}}
    assert (await client.post("/api/connections", json=body)).status_code == 201
    r = await client.post("/api/connections", json=body)
    assert r.status_code == 409
    assert r.json()["code"] == "connection_exists"

    rotated = {"type": "slack", "config": {"botToken": VAULT}, "description": "rotated"}
    r = await client.put("/api/connections/chat", json=rotated)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["botToken"] == VAULT
    assert (await client.get("/api/connections/chat")).json()["description"] == "rotated"
    r = await client.put("/api/connections/chat", json={**rotated, "name": "other"})
    assert r.status_code == 422

    assert (await client.delete("/api/connections/chat")).status_code == 204
    assert (await client.get("/api/connections/chat")).status_code == 404
    assert (await client.delete("/api/connections/chat")).status_code == 404
    assert (await client.put("/api/connections/chat", json=rotated)).status_code == 404

    actions = [
        r["action"]
        for r in await pool.fetch(
            "SELECT action FROM audit_log WHERE resource_type = 'connection' ORDER BY id"
        )
    ]
    assert actions == ["connection.create", "connection.update", "connection.delete"]


async def test_tenants_and_roles(client: httpx.AsyncClient) -> None:
    body = {"name": "chat", "type": "slack", "config": {"botToken": ENV}}
    assert (await client.post("/api/connections", json=body)).status_code == 201
    other = auth("globex")
    assert (await client.get("/api/connections/chat", headers=other)).status_code == 404
    assert (await client.get("/api/connections", headers=other)).json()["items"] == []
    assert (await client.put("/api/connections/chat", json=body, headers=other)).status_code == 404
    assert (await client.delete("/api/connections/chat", headers=other)).status_code == 404
    # The same name is free in another tenant.
    assert (await client.post("/api/connections", json=body, headers=other)).status_code == 201

    for role in ("viewer", "operator"):
        headers = auth("acme", (role,))
        r = await client.post(
            "/api/connections", json={**body, "name": f"by-{role}"}, headers=headers
        )
        assert r.status_code == 403, role
        assert (await client.get("/api/connections/chat", headers=headers)).status_code == 200
    headers = auth("acme", ("editor",))
    r = await client.post("/api/connections", json={**body, "name": "by-editor"}, headers=headers)
    assert r.status_code == 201
