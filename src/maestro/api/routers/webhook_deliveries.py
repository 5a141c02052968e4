"""Inbound deliveries: `POST /api/webhooks/workflow/{workflowId}/{triggerPath}`.

Checks run cheapest first, and each rejection is problem+json with a stable code, counted and
audited, and creates no execution: endpoint known and enabled (404 unknown_endpoint), source
address allowed (403 ip_not_allowed), body size (413 payload_too_large), rate limit (429
rate_limited), signature headers present (401 missing_signature), timestamp in the window
(401 timestamp_out_of_window), signature (401 invalid_signature). A verified delivery claims
its webhook-id as a nonce in the transaction that creates its execution: 202 the first time,
200 ``duplicate`` for the same id and body again, 409 webhook_id_reused for another body.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from maestro.api.client_ip import IPAddress, allowed, client_address, parse_networks
from maestro.api.errors import problem
from maestro.db.queries import sql
from maestro.governance.audit import AuditEntry
from maestro.observability.metrics import WEBHOOK_REQUESTS, WEBHOOK_VERIFY
from maestro.qos import retry_after_header
from maestro.triggers.webhook_secrets import SecretBox, SecretBoxError
from maestro.triggers.webhook_signature import (
    CandidateKey,
    VerificationError,
    secret_key,
    verify,
)

log = structlog.get_logger("maestro.webhooks")

router = APIRouter(tags=["webhooks"])

# Headers copied into the execution's trigger; everything else (cookies, authorization,
# the signature itself) stays out of the database.
TRIGGER_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp")
# A nonce outlives the tolerance window a little, for clock differences between API replicas.
NONCE_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class _Rejection:
    status: int
    code: str
    detail: str
    headers: dict[str, str] | None = None


class _Rejected(Exception):
    def __init__(self, rejection: _Rejection) -> None:
        self.rejection = rejection


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Rejected(_too_large(limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Rejected(_too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> _Rejection:
    return _Rejection(
        413,
        "payload_too_large",
        f"the delivery body is larger than {limit} bytes (MAESTRO_WEBHOOK_MAX_BODY_BYTES)",
    )


def _unknown() -> _Rejection:
    # Unknown, disabled, archived or unpublished look the same to the sender.
    return _Rejection(
        404,
        "unknown_endpoint",
        "no enabled webhook exists at this URL; check the workflow id and trigger path",
    )


def _keys(row: asyncpg.Record, box: SecretBox, now: float) -> list[CandidateKey]:
    tenant, hid = row["tenant_id"], row["id"]
    keys = [
        CandidateKey(
            secret_key(box.open(row["secret_ciphertext"], tenant, hid, "current")), None, "current"
        )
    ]
    expires = row["previous_secret_expires_at"]
    if row["previous_secret_ciphertext"] is not None and expires.timestamp() > now:
        previous = box.open(row["previous_secret_ciphertext"], tenant, hid, "previous")
        keys.append(CandidateKey(secret_key(previous), expires.timestamp(), "previous"))
    return keys


def _trigger_body(body: bytes, content_type: str) -> Any:
    if "json" in content_type:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return body.decode("utf-8", errors="replace")


@router.post("/api/webhooks/workflow/{workflow_id}/{trigger_path}", include_in_schema=True)
async def deliver(workflow_id: str, trigger_path: str, request: Request) -> JSONResponse:
    """Start the workflow from a signed delivery (Standard Webhooks); see docs/WEBHOOKS.md."""
    state = request.app.state
    settings = state.settings
    source = client_address(
        request.client.host if request.client else None,
        request.headers.get("x-forwarded-for"),
        state.trusted_proxies,
    )
    row: asyncpg.Record | None = None
    try:
        try:
            wid = uuid.UUID(workflow_id)
        except ValueError:
            raise _Rejected(_unknown()) from None
        async with state.pool.acquire() as conn:
            row = await conn.fetchrow(sql("route_webhook"), wid, trigger_path)
        if (
            row is None
            or not row["enabled"]
            or row["workflow_status"] != "active"
            or row["latest_version"] is None
        ):
            raise _Rejected(_unknown())
        if not allowed(source, parse_networks(tuple(row["ip_allowlist"]))):
            raise _Rejected(
                _Rejection(
                    403,
                    "ip_not_allowed",
                    f"deliveries from {source or 'an unknown address'} are not allowed for "
                    "this webhook; add the sender's address to its ipAllowlist",
                )
            )
        body = await _read_capped(request, settings.webhook_max_body_bytes)
        if row["rate_per_second"] is not None:
            wait = state.webhook_buckets.take(row["id"], row["rate_per_second"], row["rate_burst"])
            if wait > 0:
                raise _Rejected(
                    _Rejection(
                        429,
                        "rate_limited",
                        f"this webhook accepts {row['rate_per_second']:g} deliveries per second "
                        f"(burst {row['rate_burst']}); retry after the Retry-After seconds",
                        {"Retry-After": retry_after_header(wait)},
                    )
                )
        box: SecretBox | None = state.secret_box
        if box is None:
            raise _Rejected(
                _Rejection(
                    503, "webhooks_not_configured", "this server cannot verify webhooks right now"
                )
            )
        now = state.clock()
        started = time.perf_counter()
        try:
            verified = verify(
                request.headers,
                body,
                _keys(row, box, now.timestamp()),
                now=now.timestamp(),
                tolerance_seconds=row["tolerance_seconds"],
            )
        except VerificationError as exc:
            raise _Rejected(_Rejection(401, exc.code.value, exc.detail)) from None
        finally:
            WEBHOOK_VERIFY.observe(time.perf_counter() - started)
        return await _accept(
            request,
            row,
            body,
            verified.webhook_id,
            verified.timestamp,
            verified.matched,
            source,
            now,
        )
    except _Rejected as rejected:
        return _reject(request, rejected.rejection, row, source, workflow_id, trigger_path)
    except SecretBoxError as exc:
        log.error("webhook_secret_unreadable", error=str(exc))
        return _reject(
            request,
            _Rejection(
                503, "webhooks_not_configured", "this server cannot verify webhooks right now"
            ),
            row,
            source,
            workflow_id,
            trigger_path,
        )


def _reject(
    request: Request,
    rejection: _Rejection,
    row: asyncpg.Record | None,
    source: IPAddress | None,
    workflow_id: str,
    trigger_path: str,
) -> JSONResponse:
    WEBHOOK_REQUESTS.labels(result=rejection.code).inc()
    request_id = request.state.request_id
    details = {
        "reason": rejection.code,
        "sourceIp": str(source) if source else None,
        "deliveryId": request.headers.get("webhook-id", "")[:255] or None,
    }
    if row is not None:
        request.app.state.audit_buffer.add(
            AuditEntry(
                tenant=row["tenant_id"],
                actor="webhook",
                action="webhook.delivery_rejected",
                resource_type="webhook",
                resource_id=str(row["id"]),
                details=details,
                request_id=request_id,
            )
        )
    # No tenant to audit under for an unknown endpoint: the log line is the record.
    log.info(
        "webhook_rejected",
        workflow_id=workflow_id[:64],
        trigger_path=trigger_path[:128],
        **details,
    )
    return problem(
        rejection.status,
        rejection.code,
        rejection.detail,
        instance=request.url.path,
        headers=rejection.headers,
    )


async def _accept(
    request: Request,
    row: asyncpg.Record,
    body: bytes,
    delivery_id: str,
    timestamp: int,
    matched: str,
    source: IPAddress | None,
    now: datetime,
) -> JSONResponse:
    state = request.app.state
    tenant = row["tenant_id"]
    body_hash = hashlib.sha256(body).hexdigest()
    content_type = request.headers.get("content-type", "")
    parsed = _trigger_body(body, content_type)
    received_at = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    trigger = {
        "type": "webhook",
        "webhookId": str(row["id"]),
        "deliveryId": delivery_id,
        "receivedAt": received_at,
        "headers": {h: request.headers[h] for h in TRIGGER_HEADERS if h in request.headers},
        "body": parsed,
    }
    window_end = datetime.fromtimestamp(timestamp, UTC) + timedelta(
        seconds=row["tolerance_seconds"]
    )
    expires_at = max(window_end, now + timedelta(seconds=row["tolerance_seconds"])) + NONCE_MARGIN
    execution_id = uuid.uuid4()
    async with state.pool.acquire() as conn:
        template = await state.step_templates.get(
            conn, tenant, row["workflow_id"], row["latest_version"]
        )
        found = await conn.fetchrow(
            sql("accept_webhook"),
            tenant,
            row["id"],
            delivery_id,
            body_hash,
            expires_at,
            execution_id,
            row["workflow_id"],
            row["latest_version"],
            trigger,
            parsed if isinstance(parsed, dict) else {},
            request.state.request_id,
            template,
            {
                "deliveryId": delivery_id,
                "sourceIp": str(source) if source else None,
                "secret": matched,
            },
        )
    assert found is not None
    if found["created"]:
        WEBHOOK_REQUESTS.labels(result="accepted").inc()
        return JSONResponse(
            {"executionId": str(found["execution_id"])},
            status_code=202,
            headers={"Location": f"/api/executions/{found['execution_id']}"},
        )
    if found["same_body"]:
        WEBHOOK_REQUESTS.labels(result="duplicate").inc()
        return JSONResponse(
            {"executionId": str(found["execution_id"]), "duplicate": True}, status_code=200
        )
    return _reject(
        request,
        _Rejection(
            409,
            "webhook_id_reused",
            "this webhook-id was delivered before with a different body; give every new "
            "message its own webhook-id (retries of one message keep theirs)",
        ),
        row,
        source,
        str(row["workflow_id"]),
        "",
    )
