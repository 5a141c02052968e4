"""The webhook management API: create (secret shown once), list, get, change, rotate, delete;
validation, roles, tenants and audit."""

from __future__ import annotations

import asyncpg

from maestro.settings import Settings
from tests.conftest import auth
from tests.integration.schedule_support import FakeClock, utc
from tests.integration.test_api_support import (
    assert_problem,
    create_workflow,
    noop_workflow,
    published_workflow,
)
from tests.integration.test_webhook_deliveries import api

NOW = utc("2026-06-01T12:00:00Z")


async def _audit(pool: asyncpg.Pool) -> list[tuple[str, object]]:
    rows = await pool.fetch(
        "SELECT action, details FROM audit_log WHERE resource_type = 'webhook' ORDER BY id"
    )
    return [(r["action"], r["details"]) for r in rows]


async def test_create_shows_the_secret_once_and_applies_defaults(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        r = await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "github"})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert r.headers["location"] == f"/api/webhooks/{hook['id']}"
        assert hook["secret"].startswith("whsec_")
        assert hook["url"] == f"http://test/api/webhooks/workflow/{wid}/github"
        assert hook["enabled"] is True
        assert hook["ipAllowlist"] == []
        assert hook["rateLimit"] is None
        assert hook["toleranceSeconds"] == 300
        assert hook["previousSecretExpiresAt"] is None
        got = (await client.get(f"/api/webhooks/{hook['id']}")).json()
        assert got == {k: v for k, v in hook.items() if k != "secret"}
        listed = (await client.get(f"/api/workflows/{wid}/webhooks")).json()["items"]
        assert listed == [got]
        assert await _audit(pool) == [
            ("webhook.create", {"workflowId": wid, "triggerPath": "github"})
        ]


async def test_public_url_setting_names_the_delivery_url(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    public = settings.model_copy(update={"public_url": "https://hooks.example.com"})
    async with api(public, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        r = await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "x"})
        assert r.json()["url"] == f"https://hooks.example.com/api/webhooks/workflow/{wid}/x"


async def test_bad_settings_are_rejected_with_the_field_named(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        url = f"/api/workflows/{wid}/webhooks"
        for body, field in (
            ({"triggerPath": "a/b"}, "triggerPath"),
            ({"triggerPath": ""}, "triggerPath"),
            ({"triggerPath": "ok", "ipAllowlist": ["300.1.1.1/8"]}, "ipAllowlist"),
            ({"triggerPath": "ok", "rateLimit": {"perSecond": 0, "burst": 1}}, "rateLimit"),
            ({"triggerPath": "ok", "toleranceSeconds": 0}, "toleranceSeconds"),
            ({"triggerPath": "ok", "secret": "whsec_mine"}, "secret"),
        ):
            problem = assert_problem(await client.post(url, json=body), 422, "invalid_request")
            assert field in problem["detail"], (body, problem)
        assert (await client.post(url, json={"triggerPath": "dup"})).status_code == 201
        assert_problem(
            await client.post(url, json={"triggerPath": "dup"}), 409, "webhook_path_taken"
        )
        assert_problem(
            await client.post(
                "/api/workflows/00000000-0000-0000-0000-000000000000/webhooks",
                json={"triggerPath": "x"},
            ),
            404,
            "workflow_not_found",
        )
        draft = await create_workflow(client, noop_workflow("draft"))
        # A draft may get its webhook before publishing; deliveries wait for a version.
        assert (
            await client.post(f"/api/workflows/{draft}/webhooks", json={"triggerPath": "x"})
        ).status_code == 201
        await client.post(f"/api/workflows/{wid}/archive")
        assert_problem(
            await client.post(url, json={"triggerPath": "late"}), 409, "workflow_archived"
        )


async def test_patch_changes_only_what_is_sent(settings: Settings, pool: asyncpg.Pool) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        hook = (
            await client.post(
                f"/api/workflows/{wid}/webhooks",
                json={"triggerPath": "p", "rateLimit": {"perSecond": 5, "burst": 10}},
            )
        ).json()
        r = await client.patch(
            f"/api/webhooks/{hook['id']}",
            json={"ipAllowlist": ["192.0.2.1", "2001:db8::/48"], "toleranceSeconds": 120},
        )
        assert r.status_code == 200, r.text
        changed = r.json()
        assert changed["ipAllowlist"] == ["192.0.2.1/32", "2001:db8::/48"]
        assert changed["toleranceSeconds"] == 120
        assert changed["rateLimit"] == {"perSecond": 5.0, "burst": 10}
        r = await client.patch(f"/api/webhooks/{hook['id']}", json={"clearRateLimit": True})
        assert r.json()["rateLimit"] is None
        r = await client.patch(
            f"/api/webhooks/{hook['id']}",
            json={"clearRateLimit": True, "rateLimit": {"perSecond": 1, "burst": 1}},
        )
        assert_problem(r, 422, "invalid_request")
        updates = [d for a, d in await _audit(pool) if a == "webhook.update"]
        assert updates == [
            {"changed": ["ipAllowlist", "toleranceSeconds"]},
            {"changed": ["clearRateLimit"]},
        ]


async def test_delete_stops_deliveries_and_is_audited(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        hook = (
            await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "d"})
        ).json()
        assert (await client.delete(f"/api/webhooks/{hook['id']}")).status_code == 204
        assert_problem(await client.get(f"/api/webhooks/{hook['id']}"), 404, "webhook_not_found")
        assert_problem(await client.delete(f"/api/webhooks/{hook['id']}"), 404, "webhook_not_found")
        r = await client.post(f"/api/webhooks/workflow/{wid}/d", content=b"{}")
        assert_problem(r, 404, "unknown_endpoint")
        assert [a for a, _ in await _audit(pool)] == ["webhook.create", "webhook.delete"]


async def test_roles_and_tenants(settings: Settings, pool: asyncpg.Pool) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        url = f"/api/workflows/{wid}/webhooks"
        viewer, editor, other = auth(roles=("viewer",)), auth(roles=("editor",)), auth("globex")
        assert_problem(await client.post(url, json={"triggerPath": "v"}, headers=viewer), 403)
        r = await client.post(url, json={"triggerPath": "e"}, headers=editor)
        assert r.status_code == 201, r.text
        hook = r.json()
        assert (await client.get(f"/api/webhooks/{hook['id']}", headers=viewer)).status_code == 200
        assert_problem(await client.post(f"/api/webhooks/{hook['id']}/rotate", headers=viewer), 403)
        for method, path in (
            ("GET", f"/api/webhooks/{hook['id']}"),
            ("PATCH", f"/api/webhooks/{hook['id']}"),
            ("POST", f"/api/webhooks/{hook['id']}/rotate"),
            ("DELETE", f"/api/webhooks/{hook['id']}"),
            ("GET", url),
        ):
            kwargs = {"json": {}} if method == "PATCH" else {}
            r = await client.request(method, path, headers=other, **kwargs)
            assert r.status_code == 404, (method, path, r.text)


async def test_without_an_encryption_key_webhooks_say_how_to_configure_it(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    unkeyed = settings.model_copy(update={"webhook_encryption_key": None})
    async with api(unkeyed, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        r = await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "x"})
        problem = assert_problem(r, 503, "webhooks_not_configured")
        assert "MAESTRO_WEBHOOK_ENCRYPTION_KEY" in problem["detail"]


async def test_rotate_defaults_to_a_day_of_grace(settings: Settings, pool: asyncpg.Pool) -> None:
    async with api(settings, pool, FakeClock(NOW)) as client:
        wid = await published_workflow(client, noop_workflow())
        hook = (
            await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "r"})
        ).json()
        r = await client.post(f"/api/webhooks/{hook['id']}/rotate")
        assert r.status_code == 200, r.text
        assert r.json()["previousSecretExpiresAt"] == "2026-06-02T12:00:00Z"
        assert r.json()["rotatedAt"] == "2026-06-01T12:00:00Z"
        r = await client.post(f"/api/webhooks/{hook['id']}/rotate", json={"gracePeriodSeconds": -1})
        assert_problem(r, 422, "invalid_request")
