"""The ``email`` step's SendGrid provider: ``POST {baseUrl}v3/mail/send`` (Web API v3).

202 -> output with the ``X-Message-Id`` response header; 401/403 -> ``auth``; 400 (and other
4xx) -> ``validation`` with SendGrid's ``errors[].message``; 429 -> ``rate_limited`` honouring
``Retry-After`` or ``X-RateLimit-Reset``; 5xx -> ``provider_error``; transport failures ->
``network``; timeouts -> ``timeout``. The idempotency key travels as a header and a custom arg
(SendGrid does not deduplicate by it, but the receiver and event webhooks see it).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import httpx

from maestro.connectors.base import send_request
from maestro.connectors.http import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from maestro.engine.retry import ErrorClass, StepError
from maestro.model.connections import SendgridConfig
from maestro.model.email_step import OutgoingEmail, bare_address, display_name

__all__ = ["check", "request_body", "retry_after", "send"]

IDEMPOTENCY_HEADER = "X-Maestro-Idempotency-Key"
_ERROR_CHARS = 300


def _mailbox(value: str) -> dict[str, str]:
    box = {"email": bare_address(value)}
    name = display_name(value)
    if name:
        box["name"] = name
    return box


def request_body(mail: OutgoingEmail) -> dict[str, Any]:
    """The v3 ``mail/send`` JSON body."""
    personalization: dict[str, Any] = {"to": [_mailbox(a) for a in mail.to]}
    if mail.cc:
        personalization["cc"] = [_mailbox(a) for a in mail.cc]
    if mail.bcc:
        personalization["bcc"] = [_mailbox(a) for a in mail.bcc]
    content = []
    if mail.text is not None:  # SendGrid wants text/plain first
        content.append({"type": "text/plain", "value": mail.text})
    if mail.html is not None:
        content.append({"type": "text/html", "value": mail.html})
    body: dict[str, Any] = {
        "personalizations": [personalization],
        "from": _mailbox(mail.sender),
        "subject": mail.subject,
        "content": content,
        "headers": {IDEMPOTENCY_HEADER: mail.idempotency_key},
        "custom_args": {"maestro_idempotency_key": mail.idempotency_key},
    }
    if mail.reply_to:
        body["reply_to"] = _mailbox(mail.reply_to)
    if mail.attachments:
        body["attachments"] = [
            {
                "content": _b64(item.content),
                "filename": item.filename,
                "type": item.content_type,
                "disposition": "attachment",
            }
            for item in mail.attachments
        ]
    return body


def _b64(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")


def retry_after(headers: httpx.Headers, now: datetime) -> float | None:
    """``Retry-After``, else ``X-RateLimit-Reset`` (a unix time) minus now; capped at a day."""
    seconds = parse_retry_after(headers.get("Retry-After"), now)
    if seconds is not None:
        return seconds
    reset = headers.get("X-RateLimit-Reset")
    if reset is None:
        return None
    try:
        at = float(reset.strip())
    except ValueError:
        return None
    if at != at or at in (float("inf"), float("-inf")):
        return None
    return min(max(0.0, at - now.timestamp()), MAX_RETRY_AFTER_SECONDS)


def _errors(response: httpx.Response) -> str:
    """SendGrid's ``errors[].message`` (with the field), else the start of the body."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        parts = []
        for item in data["errors"]:
            if isinstance(item, dict) and item.get("message"):
                field = item.get("field")
                parts.append(f"{field}: {item['message']}" if field else str(item["message"]))
        if parts:
            return "; ".join(parts)[:_ERROR_CHARS]
    return response.text[:_ERROR_CHARS]


def _status_error(response: httpx.Response, where: str, now: datetime) -> StepError:
    status = response.status_code
    message = f"{where} answered {status}"
    detail = _errors(response)
    if detail:
        message += f": {detail}"
    if status in (401, 403):
        return StepError(ErrorClass.AUTH, message)
    if status == 429:
        return StepError(
            ErrorClass.RATE_LIMITED, message, retry_after=retry_after(response.headers, now)
        )
    if status >= 500:
        return StepError(
            ErrorClass.PROVIDER_ERROR,
            message,
            retry_after=parse_retry_after(response.headers.get("Retry-After"), now),
        )
    if status == 408:
        return StepError(ErrorClass.TIMEOUT, message)
    return StepError(ErrorClass.VALIDATION, message)


async def _call(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    api_key: str,
    timeout_seconds: float,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    return await send_request(
        http,
        method,
        url,
        headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        timeout_seconds=timeout_seconds,
        where=f"SendGrid {method} {url}",
        body=body,
    )


def _url(config: SendgridConfig, path: str) -> str:
    return config.base_url.rstrip("/") + "/" + path


async def send(
    http: httpx.AsyncClient,
    config: SendgridConfig,
    mail: OutgoingEmail,
    *,
    api_key: str,
    now: datetime,
    timeout_seconds: float,
) -> dict[str, Any]:
    url = _url(config, "v3/mail/send")
    response = await _call(http, "POST", url, api_key, timeout_seconds, request_body(mail))
    if response.status_code not in (200, 202):
        raise _status_error(response, f"SendGrid POST {url}", now)
    return {
        "provider": "sendgrid",
        "messageId": response.headers.get("X-Message-Id"),
        "accepted": mail.recipients,
    }


async def check(
    http: httpx.AsyncClient,
    config: SendgridConfig,
    *,
    api_key: str,
    now: datetime,
    timeout_seconds: float,
) -> dict[str, Any]:
    """``GET v3/scopes``: the key works; it must hold the ``mail.send`` scope."""
    url = _url(config, "v3/scopes")
    response = await _call(http, "GET", url, api_key, timeout_seconds)
    if response.status_code != 200:
        raise _status_error(response, f"SendGrid GET {url}", now)
    try:
        scopes = response.json().get("scopes")
    except (ValueError, AttributeError):
        scopes = None
    if not isinstance(scopes, list):
        raise StepError(ErrorClass.PROVIDER_ERROR, f"SendGrid GET {url} answered without scopes")
    if "mail.send" not in scopes:
        raise StepError(ErrorClass.AUTH, "the SendGrid API key works but lacks the mail.send scope")
    return {"provider": "sendgrid", "scopeCount": len(scopes), "mailSend": True}
