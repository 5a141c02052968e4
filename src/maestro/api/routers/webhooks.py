"""Webhook endpoints of a workflow: create (the secret is shown once), read, change, rotate,
delete. Deliveries arrive at webhook_deliveries.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from fastapi import APIRouter, Request, Response

from maestro.api.auth import Action, authorize
from maestro.api.common import CurrentPrincipal, audit, iso, parse_uuid, pool
from maestro.api.errors import ApiError, not_found
from maestro.db.queries import sql
from maestro.model.webhooks import RotateIn, WebhookIn, WebhookSettings
from maestro.triggers.webhook_secrets import SecretBox
from maestro.triggers.webhook_signature import new_secret

router = APIRouter(tags=["webhooks"])


def _box(request: Request) -> SecretBox:
    box: SecretBox | None = request.app.state.secret_box
    if box is None:
        raise ApiError(
            503,
            "webhooks_not_configured",
            "webhook secrets need an encryption key: set MAESTRO_WEBHOOK_ENCRYPTION_KEY (or "
            "_FILE) on every API process (see docs/WEBHOOKS.md)",
        )
    return box


def delivery_url(request: Request, workflow_id: object, trigger_path: str) -> str:
    base = request.app.state.settings.public_url or str(request.base_url).rstrip("/")
    return f"{base}/api/webhooks/workflow/{workflow_id}/{trigger_path}"


def webhook_json(request: Request, r: asyncpg.Record) -> dict[str, Any]:
    rate = None
    if r["rate_per_second"] is not None:
        rate = {"perSecond": r["rate_per_second"], "burst": r["rate_burst"]}
    return {
        "id": str(r["id"]),
        "workflowId": str(r["workflow_id"]),
        "triggerPath": r["trigger_path"],
        "url": delivery_url(request, r["workflow_id"], r["trigger_path"]),
        "description": r["description"],
        "enabled": r["enabled"],
        "ipAllowlist": [str(n) for n in r["ip_allowlist"]],
        "rateLimit": rate,
        "toleranceSeconds": r["tolerance_seconds"],
        "rotatedAt": iso(r["rotated_at"]),
        "previousSecretExpiresAt": iso(r["previous_secret_expires_at"]),
        "createdBy": r["created_by"],
        "createdAt": iso(r["created_at"]),
        "updatedAt": iso(r["updated_at"]),
    }


@router.post("/api/workflows/{workflow_id}/webhooks", status_code=201)
async def create_webhook(
    workflow_id: str,
    body: WebhookIn,
    request: Request,
    principal: CurrentPrincipal,
    response: Response,
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    box = _box(request)
    wid = parse_uuid(workflow_id, "workflow")
    webhook_id = uuid.uuid4()
    secret = new_secret()
    async with pool(request).acquire() as conn, conn.transaction():
        workflow = await conn.fetchrow(sql("workflow_status"), principal.tenant, wid)
        if workflow is None:
            raise not_found("workflow", workflow_id)
        if workflow["status"] == "archived":
            raise ApiError(409, "workflow_archived", "the workflow is archived")
        row = await conn.fetchrow(
            sql("insert_webhook"),
            principal.tenant,
            webhook_id,
            wid,
            body.trigger_path,
            body.description,
            body.enabled,
            body.ip_allowlist,
            body.rate_limit.per_second if body.rate_limit else None,
            body.rate_limit.burst if body.rate_limit else None,
            body.tolerance_seconds,
            box.seal(secret, principal.tenant, webhook_id, "current"),
            principal.subject,
        )
        if row is None:
            raise ApiError(
                409,
                "webhook_path_taken",
                f"this workflow already has a webhook at {body.trigger_path!r}; pick another "
                "triggerPath or change that webhook",
            )
        await audit(
            conn,
            request,
            principal,
            "webhook.create",
            "webhook",
            webhook_id,
            {"workflowId": workflow_id, "triggerPath": body.trigger_path},
        )
    response.headers["Location"] = f"/api/webhooks/{webhook_id}"
    # The only time the secret is shown; it is stored encrypted and never returned again.
    return {**webhook_json(request, row), "secret": secret}


@router.get("/api/workflows/{workflow_id}/webhooks")
async def list_webhooks(
    workflow_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    wid = parse_uuid(workflow_id, "workflow")
    async with pool(request).acquire() as conn:
        if await conn.fetchrow(sql("workflow_status"), principal.tenant, wid) is None:
            raise not_found("workflow", workflow_id)
        rows = await conn.fetch(sql("list_webhooks"), principal.tenant, wid)
    return {"items": [webhook_json(request, r) for r in rows]}


@router.get("/api/webhooks/{webhook_id}")
async def get_webhook(
    webhook_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    hid = parse_uuid(webhook_id, "webhook")
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(sql("get_webhook"), principal.tenant, hid)
    if row is None:
        raise not_found("webhook", webhook_id)
    return webhook_json(request, row)


@router.patch("/api/webhooks/{webhook_id}")
async def update_webhook(
    webhook_id: str, body: WebhookSettings, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    hid = parse_uuid(webhook_id, "webhook")
    if body.clear_rate_limit and body.rate_limit is not None:
        raise ApiError(422, "invalid_request", "send either rateLimit or clearRateLimit, not both")
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("lock_webhook"), principal.tenant, hid)
        if row is None:
            raise not_found("webhook", webhook_id)
        rate = (row["rate_per_second"], row["rate_burst"])
        if body.rate_limit is not None:
            rate = (body.rate_limit.per_second, body.rate_limit.burst)
        elif body.clear_rate_limit:
            rate = (None, None)
        updated = await conn.fetchrow(
            sql("update_webhook"),
            principal.tenant,
            hid,
            row["description"] if body.description is None else body.description,
            row["enabled"] if body.enabled is None else body.enabled,
            [str(n) for n in row["ip_allowlist"]]
            if body.ip_allowlist is None
            else body.ip_allowlist,
            rate[0],
            rate[1],
            row["tolerance_seconds"] if body.tolerance_seconds is None else body.tolerance_seconds,
        )
        assert updated is not None
        changed = sorted(body.model_dump(exclude_defaults=True, by_alias=True))
        await audit(
            conn, request, principal, "webhook.update", "webhook", hid, {"changed": changed}
        )
    return webhook_json(request, updated)


@router.post("/api/webhooks/{webhook_id}/rotate")
async def rotate_webhook(
    webhook_id: str, request: Request, principal: CurrentPrincipal, body: RotateIn | None = None
) -> dict[str, Any]:
    """A new secret; the previous one keeps verifying for ``gracePeriodSeconds``."""
    authorize(principal, Action.EDIT)
    box = _box(request)
    hid = parse_uuid(webhook_id, "webhook")
    grace = (body or RotateIn()).grace_period_seconds
    now = request.app.state.clock()
    secret = new_secret()
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(sql("lock_webhook"), principal.tenant, hid)
        if row is None:
            raise not_found("webhook", webhook_id)
        current = box.open(row["secret_ciphertext"], principal.tenant, hid, "current")
        expires = now + timedelta(seconds=grace)
        updated = await conn.fetchrow(
            sql("rotate_webhook"),
            principal.tenant,
            hid,
            box.seal(secret, principal.tenant, hid, "current"),
            box.seal(current, principal.tenant, hid, "previous"),
            expires,
            now,
        )
        assert updated is not None
        await audit(
            conn,
            request,
            principal,
            "webhook.rotate",
            "webhook",
            hid,
            {"gracePeriodSeconds": grace, "previousSecretExpiresAt": iso(expires)},
        )
    return {
        **webhook_json(request, updated),
        "secret": secret,
        "previousSecretExpiresAt": iso(expires),
    }


@router.delete("/api/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, request: Request, principal: CurrentPrincipal) -> None:
    authorize(principal, Action.EDIT)
    hid = parse_uuid(webhook_id, "webhook")
    async with pool(request).acquire() as conn, conn.transaction():
        if await conn.fetchrow(sql("delete_webhook"), principal.tenant, hid) is None:
            raise not_found("webhook", webhook_id)
        await audit(conn, request, principal, "webhook.delete", "webhook", hid)
