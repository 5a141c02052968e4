"""Inbound webhook deliveries over HTTP against PostgreSQL: every rejection code, replays,
source allowlists and trusted proxies, rate limits, and secret rotation with its retire job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson

from maestro.api.app import create_app
from maestro.settings import Settings
from maestro.triggers.webhook_maintenance import purge_expired_deliveries, retire_expired_secrets
from maestro.triggers.webhook_signature import sign
from tests.conftest import auth
from tests.integration.schedule_support import FakeClock, utc
from tests.integration.test_api_support import (
    assert_problem,
    noop_workflow,
    poll,
    published_workflow,
)

NOW = utc("2026-06-01T12:00:00Z")


@asynccontextmanager
async def api(
    settings: Settings,
    pool: asyncpg.Pool,
    clock: FakeClock,
    peer: str = "203.0.113.7",
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, pool, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=auth()
        ) as c:
            yield c


async def endpoint(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    wid = await published_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "orders", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def signed(
    hook: dict[str, Any],
    body: bytes,
    *,
    secret: str | None = None,
    delivery: str | None = None,
    at: int | None = None,
) -> dict[str, str]:
    delivery = delivery or f"msg_{uuid.uuid4().hex}"
    ts = int(NOW.timestamp()) if at is None else at
    return {
        "webhook-id": delivery,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret or hook["secret"], delivery, ts, body),
        "content-type": "application/json",
    }


def path(hook: dict[str, Any]) -> str:
    return f"/api/webhooks/workflow/{hook['workflowId']}/{hook['triggerPath']}"


async def deliver(
    client: httpx.AsyncClient, hook: dict[str, Any], body: bytes, headers: dict[str, str]
) -> httpx.Response:
    # Deliveries carry no Authorization: the signature is the credential.
    return await client.post(path(hook), content=body, headers={"authorization": "", **headers})


async def executions(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM workflow_executions ORDER BY created_at"))


async def rejections(pool: asyncpg.Pool, client: httpx.AsyncClient) -> list[dict[str, Any]]:
    await client._transport.app.state.audit_buffer.flush()  # type: ignore[attr-defined]
    rows = await pool.fetch(
        "SELECT details FROM audit_log WHERE action = 'webhook.delivery_rejected' ORDER BY id"
    )
    return [r["details"] for r in rows]


async def test_a_signed_delivery_starts_the_workflow_with_its_trigger(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client)
        assert hook["secret"].startswith("whsec_")
        assert hook["url"] == f"http://test{path(hook)}"
        body = orjson.dumps({"orderId": "A-1", "total": 12})
        headers = signed(hook, body, delivery="msg_1")
        r = await deliver(client, hook, body, {**headers, "cookie": "x=1", "user-agent": "ua/1"})
        assert r.status_code == 202, r.text
        eid = r.json()["executionId"]
        [row] = await executions(pool)
        assert str(row["id"]) == eid
        assert row["input"] == {"orderId": "A-1", "total": 12}
        assert row["trigger"] == {
            "type": "webhook",
            "webhookId": hook["id"],
            "deliveryId": "msg_1",
            "receivedAt": "2026-06-01T12:00:00Z",
            "headers": {
                "content-type": "application/json",
                "user-agent": "ua/1",
                "webhook-id": "msg_1",
                "webhook-timestamp": str(int(NOW.timestamp())),
            },
            "body": {"orderId": "A-1", "total": 12},
        }
        audit = await pool.fetchrow(
            "SELECT actor, details FROM audit_log WHERE action = 'webhook.delivery_accepted'"
        )
        assert audit["actor"] == "webhook"
        assert audit["details"] == {
            "deliveryId": "msg_1",
            "sourceIp": "203.0.113.7",
            "secret": "current",
            "executionId": eid,
        }


async def test_a_text_body_reaches_the_trigger_as_text(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client)
        body = b"plain words"
        headers = {**signed(hook, body), "content-type": "text/plain"}
        assert (await deliver(client, hook, body, headers)).status_code == 202
        [row] = await executions(pool)
        assert row["trigger"]["body"] == "plain words"
        assert row["input"] == {}


async def test_every_rejection_has_its_code_is_audited_and_starts_nothing(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    clock = FakeClock(NOW)
    async with api(settings, pool, clock) as client:
        hook = await endpoint(client)
        body = b'{"a": 1}'
        good = signed(hook, body)
        cases: list[tuple[str, dict[str, str], bytes, int, str]] = [
            (path(hook).replace("orders", "nope"), good, body, 404, "unknown_endpoint"),
            (f"/api/webhooks/workflow/{uuid.uuid4()}/orders", good, body, 404, "unknown_endpoint"),
            ("/api/webhooks/workflow/not-a-uuid/orders", good, body, 404, "unknown_endpoint"),
        ]
        for url, headers, content, status, code in cases:
            r = await client.post(url, content=content, headers=headers)
            assert_problem(r, status, code)
        for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            headers = {k: v for k, v in good.items() if k != missing}
            body_problem = assert_problem(
                await deliver(client, hook, body, headers), 401, "missing_signature"
            )
            assert missing in body_problem["detail"]
        old = signed(hook, body, at=int(NOW.timestamp()) - 301)
        assert_problem(await deliver(client, hook, body, old), 401, "timestamp_out_of_window")
        future = signed(hook, body, at=int(NOW.timestamp()) + 301)
        assert_problem(await deliver(client, hook, body, future), 401, "timestamp_out_of_window")
        edge = signed(hook, body, at=int(NOW.timestamp()) - 300)
        assert (await deliver(client, hook, body, edge)).status_code == 202
        tampered = await deliver(client, hook, b'{"a": 2}', signed(hook, body))
        assert_problem(tampered, 401, "invalid_signature")
        assert hook["secret"] not in tampered.text
        wrong = signed(hook, body, secret="whsec_" + "A" * 43 + "=")
        assert_problem(await deliver(client, hook, body, wrong), 401, "invalid_signature")
        assert len(await executions(pool)) == 1  # only the edge-of-window delivery
        audited = await rejections(pool, client)
        assert [d["reason"] for d in audited] == [
            "missing_signature",
            "missing_signature",
            "missing_signature",
            "timestamp_out_of_window",
            "timestamp_out_of_window",
            "invalid_signature",
            "invalid_signature",
        ]
        assert {d["sourceIp"] for d in audited} == {"203.0.113.7"}
        metrics = (await client.get("/metrics")).text
        assert 'maestro_webhook_requests_total{result="invalid_signature"}' in metrics
        assert "maestro_webhook_verify_seconds_count" in metrics


async def test_a_disabled_endpoint_or_archived_workflow_is_unknown(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client)
        body = b"{}"
        r = await client.patch(f"/api/webhooks/{hook['id']}", json={"enabled": False})
        assert r.status_code == 200, r.text
        assert_problem(
            await deliver(client, hook, body, signed(hook, body)), 404, "unknown_endpoint"
        )
        await client.patch(f"/api/webhooks/{hook['id']}", json={"enabled": True})
        assert (await deliver(client, hook, body, signed(hook, body))).status_code == 202
        await client.post(f"/api/workflows/{hook['workflowId']}/archive")
        assert_problem(
            await deliver(client, hook, body, signed(hook, body)), 404, "unknown_endpoint"
        )


async def test_the_same_delivery_twice_is_acknowledged_and_starts_nothing_more(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    clock = FakeClock(NOW)
    async with api(settings, pool, clock) as client:
        hook = await endpoint(client)
        body = b'{"n": 1}'
        first = await deliver(client, hook, body, signed(hook, body, delivery="msg_dup"))
        assert first.status_code == 202
        # A sender's retry: same id and body, signed again a minute later.
        clock.advance(seconds=60)
        again = signed(hook, body, delivery="msg_dup", at=int(NOW.timestamp()) + 60)
        r = await deliver(client, hook, body, again)
        assert (r.status_code, r.json()) == (
            200,
            {"executionId": first.json()["executionId"], "duplicate": True},
        )
        other = await deliver(
            client, hook, b'{"n": 2}', signed(hook, b'{"n": 2}', delivery="msg_dup")
        )
        assert_problem(other, 409, "webhook_id_reused")
        assert len(await executions(pool)) == 1
        # After the nonce is purged, the execution's idempotency key still remembers the id.
        clock.advance(seconds=3600)
        assert await purge_expired_deliveries(pool, clock()) == 1
        late = signed(hook, body, delivery="msg_dup", at=int(clock().timestamp()))
        r = await deliver(client, hook, body, late)
        assert r.status_code == 200, r.text
        assert r.json()["executionId"] == first.json()["executionId"]
        assert len(await executions(pool)) == 1


async def test_a_thousand_concurrent_deliveries_of_one_id_start_one_execution(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client)
        body = b'{"burst": true}'
        headers = signed(hook, body, delivery="msg_burst")
        answers = await asyncio.gather(*(deliver(client, hook, body, headers) for _ in range(1000)))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(202) == 1, codes[:5]
        assert codes.count(200) == 999
        assert len({r.json()["executionId"] for r in answers}) == 1
        assert len(await executions(pool)) == 1


async def test_ip_allowlists_for_ipv4_and_ipv6(settings: Settings, pool: asyncpg.Pool) -> None:
    clock = FakeClock(NOW)
    for peer, allowed in (
        ("203.0.113.7", True),
        ("203.0.114.1", False),
        ("2001:db8::42", True),
        ("2001:db9::1", False),
        ("::ffff:203.0.113.9", True),  # an IPv4 client seen through an IPv6 socket
    ):
        async with api(settings, pool, clock, peer=peer) as client:
            hook = await endpoint(
                client,
                triggerPath=f"p{abs(hash(peer))}",
                ipAllowlist=["203.0.113.0/24", "2001:db8::/32"],
            )
            body = b"{}"
            r = await deliver(client, hook, body, signed(hook, body))
            if allowed:
                assert r.status_code == 202, (peer, r.text)
            else:
                problem = assert_problem(r, 403, "ip_not_allowed")
                assert peer in problem["detail"]


async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    behind_proxy = settings.model_copy(update={"trusted_proxies": ("10.0.0.0/8",)})
    body = b"{}"
    async with api(behind_proxy, pool, FakeClock(NOW), peer="10.1.2.3") as client:
        hook = await endpoint(client, ipAllowlist=["198.51.100.0/24"])
        # The proxy says the client is 198.51.100.4: believed.
        ok = {**signed(hook, body), "x-forwarded-for": "198.51.100.4"}
        assert (await deliver(client, hook, body, ok)).status_code == 202
        # A client that forges its own X-Forwarded-For: the proxy appends the real address.
        forged = {**signed(hook, body), "x-forwarded-for": "198.51.100.4, 192.0.2.66"}
        assert_problem(await deliver(client, hook, body, forged), 403, "ip_not_allowed")
    async with api(settings, pool, FakeClock(NOW), peer="192.0.2.66") as client:
        # Not from a trusted proxy: the header is ignored entirely.
        r = await client.get(f"/api/webhooks/{hook['id']}")
        spoof = {**signed(hook, body), "x-forwarded-for": "198.51.100.4"}
        assert_problem(await deliver(client, hook, body, spoof), 403, "ip_not_allowed")
        assert r.status_code == 200


async def test_rate_limit_answers_429_with_retry_after(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client, rateLimit={"perSecond": 0.5, "burst": 2})
        body = b"{}"
        results = [await deliver(client, hook, body, signed(hook, body)) for _ in range(3)]
        assert [r.status_code for r in results] == [202, 202, 429]
        problem = assert_problem(results[2], 429, "rate_limited")
        assert results[2].headers["retry-after"] == "2"
        assert "0.5" in problem["detail"]
        # Unsigned floods are limited too: the limit comes before the signature check.
        flood = await deliver(client, hook, body, {})
        assert_problem(flood, 429, "rate_limited")
        assert len(await executions(pool)) == 2


async def test_body_size_is_limited_per_delivery(settings: Settings, pool: asyncpg.Pool) -> None:
    small = settings.model_copy(update={"webhook_max_body_bytes": 2048})
    async with api(small, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client)
        body = b'{"pad": "' + b"x" * 3000 + b'"}'
        assert_problem(
            await deliver(client, hook, body, signed(hook, body)), 413, "payload_too_large"
        )
        # Before the size check, an unknown endpoint is still 404.
        r = await client.post(path(hook).replace("orders", "zzz"), content=body)
        assert_problem(r, 404, "unknown_endpoint")
        assert await executions(pool) == []


async def test_rotation_keeps_the_previous_secret_for_the_grace_period(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    clock = FakeClock(NOW)
    async with api(settings, pool, clock) as client:
        hook = await endpoint(client)
        old_secret = hook["secret"]
        r = await client.post(
            f"/api/webhooks/{hook['id']}/rotate", json={"gracePeriodSeconds": 600}
        )
        assert r.status_code == 200, r.text
        rotated = r.json()
        assert rotated["secret"] != old_secret
        assert rotated["previousSecretExpiresAt"] == "2026-06-01T12:10:00Z"
        body = b"{}"
        # Both verify during the grace period.
        for secret in (old_secret, rotated["secret"]):
            r = await deliver(client, hook, body, signed(hook, body, secret=secret))
            assert r.status_code == 202, r.text
        accepted = await pool.fetch(
            "SELECT details->>'secret' AS s FROM audit_log"
            " WHERE action = 'webhook.delivery_accepted' ORDER BY id"
        )
        assert [a["s"] for a in accepted] == ["previous", "current"]
        # After it, the old one fails at once, even before the retire job ran...
        clock.set(utc("2026-06-01T12:10:00Z"))
        late_ts = int(clock().timestamp())
        r = await deliver(client, hook, body, signed(hook, body, secret=old_secret, at=late_ts))
        assert_problem(r, 401, "invalid_signature")
        # ...and the job then removes it, with an audit entry.
        assert await retire_expired_secrets(pool, clock()) == 1
        assert await retire_expired_secrets(pool, clock()) == 0
        after = (await client.get(f"/api/webhooks/{hook['id']}")).json()
        assert after["previousSecretExpiresAt"] is None
        actions = await pool.fetch(
            "SELECT action FROM audit_log WHERE resource_type = 'webhook'"
            " AND action NOT LIKE 'webhook.delivery%' ORDER BY id"
        )
        assert [a["action"] for a in actions] == [
            "webhook.create",
            "webhook.rotate",
            "webhook.retire",
        ]
        r = await deliver(
            client, hook, body, signed(hook, body, secret=rotated["secret"], at=late_ts)
        )
        assert r.status_code == 202


async def test_secrets_are_stored_encrypted_and_never_shown_again(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        hook = await endpoint(client)
        secret = hook["secret"]
        raw = secret.encode()
        key_b64 = secret.removeprefix("whsec_").encode()
        for table in ("workflow_webhooks", "audit_log", "workflow_executions", "workflow_logs"):
            dump = await pool.fetchval(
                f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t"
            )
            assert secret not in dump, table
            assert key_b64.decode() not in dump, table
        blob = await pool.fetchval("SELECT secret_ciphertext FROM workflow_webhooks")
        assert raw not in blob
        assert key_b64 not in blob
        one = (await client.get(f"/api/webhooks/{hook['id']}")).json()
        listed = (await client.get(f"/api/workflows/{hook['workflowId']}/webhooks")).json()
        for shown in (one, *listed["items"]):
            assert "secret" not in shown
            assert secret not in orjson.dumps(shown).decode()
        # A ciphertext moved to another row does not decrypt: it is bound to its webhook.
        other = await client.post(
            f"/api/workflows/{hook['workflowId']}/webhooks", json={"triggerPath": "other"}
        )
        await pool.execute(
            "UPDATE workflow_webhooks SET secret_ciphertext = $1 WHERE id = $2",
            blob,
            uuid.UUID(other.json()["id"]),
        )
        moved = {**other.json(), "secret": secret}
        r = await deliver(client, moved, b"{}", signed(moved, b"{}"))
        assert_problem(r, 503, "webhooks_not_configured")


async def test_nonces_expire_after_the_tolerance_window(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    clock = FakeClock(NOW)
    async with api(settings, pool, clock) as client:
        hook = await endpoint(client, toleranceSeconds=60)
        body = b"{}"
        assert (await deliver(client, hook, body, signed(hook, body))).status_code == 202
        clock.advance(seconds=60 + 59)
        assert await purge_expired_deliveries(pool, clock()) == 0
        clock.advance(seconds=62)
        assert await purge_expired_deliveries(pool, clock()) == 1
        assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


async def test_the_background_upkeep_retires_secrets_on_its_own(
    settings: Settings, pool: asyncpg.Pool, db_dsn: str
) -> None:
    clock = FakeClock(NOW)
    quick = settings.model_copy(update={"webhook_maintenance_seconds": 0.05})
    async with api(quick, pool, clock) as client:
        hook = await endpoint(client)
        r = await client.post(f"/api/webhooks/{hook['id']}/rotate", json={"gracePeriodSeconds": 5})
        assert r.status_code == 200, r.text
        listener = await asyncpg.connect(db_dsn)
        try:
            clock.advance(seconds=5)

            async def retired() -> bool:
                return bool(
                    await listener.fetchval(
                        "SELECT count(*) FROM audit_log WHERE action = 'webhook.retire'"
                    )
                )

            await poll(retired, bool, timeout=10)
        finally:
            await listener.close()
        after = (await client.get(f"/api/webhooks/{hook['id']}")).json()
        assert after["previousSecretExpiresAt"] is None
