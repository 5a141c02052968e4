"""POST /api/connections/{name}/test: a harmless call that proves settings and credentials."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import auth
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.flaky_http import FlakyHttp, Scripted

TOKEN = "tok-connection-test-0123456789"


async def test_http_connection_that_works_and_one_whose_auth_is_refused(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVC_TOKEN", TOKEN)
    app = FlakyHttp()
    app.script("/", [Scripted(404, {"detail": "no index here"})])
    async with serve_asgi(app) as url:
        config = {
            "baseUrl": url,
            "auth": {"strategy": "bearer", "token": {"secretRef": "env://SVC_TOKEN"}},
        }
        r = await client.post(
            "/api/connections", json={"name": "svc", "type": "http", "config": config}
        )
        assert r.status_code == 201, r.text
        r = await client.post("/api/connections/svc/test")
        assert r.status_code == 200, r.text
        assert r.json()["ok"] is True
        assert r.json()["details"] == {"status": 404}
        assert app.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"

        app.script("/", [Scripted(401, {"error": f"bad token {TOKEN}"})])
        r = await client.post("/api/connections/svc/test")
    body = r.json()
    assert body["ok"] is False
    assert body["error"]["class"] == "auth"
    assert TOKEN not in r.text


async def test_postgres_connection(
    client: httpx.AsyncClient, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARGET_DSN", db_dsn)
    monkeypatch.setenv("BAD_DSN", "postgresql://nobody:hunter2-secret@127.0.0.1:1/nowhere")
    for name, ref in (("good", "env://TARGET_DSN"), ("bad", "env://BAD_DSN")):
        r = await client.post(
            "/api/connections",
            json={"name": name, "type": "postgres", "config": {"dsn": {"secretRef": ref}}},
        )
        assert r.status_code == 201, r.text
    good = (await client.post("/api/connections/good/test")).json()
    assert good["ok"] is True, good
    assert good["details"]["database"] == urlsplit(db_dsn).path.lstrip("/")
    bad = await client.post("/api/connections/bad/test")
    assert bad.json()["ok"] is False
    assert bad.json()["error"]["class"] == "network"
    assert "hunter2-secret" not in bad.text


async def test_test_needs_operate_and_the_tenant_s_own_connection(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/api/connections",
        json={"name": "chat", "type": "slack", "config": {"botToken": {"secretRef": "env://X"}}},
    )
    assert r.status_code == 201
    assert (
        await client.post("/api/connections/chat/test", headers=auth("globex"))
    ).status_code == 404
    assert (
        await client.post("/api/connections/chat/test", headers=auth("acme", ("viewer",)))
    ).status_code == 403
    assert (await client.post("/api/connections/nope/test")).status_code == 404
