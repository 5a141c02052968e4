"""The ``email`` step's Postmark provider: ``POST {baseUrl}email``.

200 with ``ErrorCode`` 0 -> output with Postmark's ``MessageID``; 401 (or ``ErrorCode`` 10,
bad or missing token) -> ``auth``; 422 (bad input, e.g. 300 invalid email, 406 inactive
recipient) and other 4xx -> ``validation`` with Postmark's ``ErrorCode`` and ``Message``;
429 -> ``rate_limited`` (``Retry-After`` honoured); 5xx -> ``provider_error``; transport
failures -> ``network``; timeouts -> ``timeout``.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import httpx

from maestro.connectors.base import send_request
from maestro.connectors.http import parse_retry_after
from maestro.engine.retry import ErrorClass, StepError
from maestro.model.connections import PostmarkConfig
from maestro.model.email_step import OutgoingEmail

__all__ = ["check", "request_body", "send"]

IDEMPOTENCY_HEADER = "X-Maestro-Idempotency-Key"
TOKEN_HEADER = "X-Postmark-Server-Token"  # noqa: S105 (a header name)
_ERROR_CHARS = 300
_BAD_TOKEN = 10


def request_body(mail: OutgoingEmail, message_stream: str) -> dict[str, Any]:
    """The ``/email`` JSON body."""
    body: dict[str, Any] = {
        "From": mail.sender,
        "To": ", ".join(mail.to),
        "Subject": mail.subject,
        "MessageStream": message_stream,
        "Headers": [{"Name": IDEMPOTENCY_HEADER, "Value": mail.idempotency_key}],
        "Metadata": {"maestroIdempotencyKey": mail.idempotency_key},
    }
    if mail.cc:
        body["Cc"] = ", ".join(mail.cc)
    if mail.bcc:
        body["Bcc"] = ", ".join(mail.bcc)
    if mail.text is not None:
        body["TextBody"] = mail.text
    if mail.html is not None:
        body["HtmlBody"] = mail.html
    if mail.reply_to:
        body["ReplyTo"] = mail.reply_to
    if mail.attachments:
        body["Attachments"] = [
            {
                "Name": item.filename,
                "Content": base64.b64encode(item.content).decode("ascii"),
                "ContentType": item.content_type,
            }
            for item in mail.attachments
        ]
    return body


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _status_error(response: httpx.Response, where: str, now: datetime) -> StepError:
    status = response.status_code
    data = _json(response)
    code: Any = None
    if isinstance(data, dict) and "Message" in data:
        code = data.get("ErrorCode")
        detail = f"ErrorCode {code}: {data['Message']}"
    else:
        detail = response.text
    message = f"{where} answered {status}"
    if detail:
        message += f": {detail[:_ERROR_CHARS]}"
    if status in (401, 403) or code == _BAD_TOKEN:
        return StepError(ErrorClass.AUTH, message)
    if status == 429:
        return StepError(
            ErrorClass.RATE_LIMITED,
            message,
            retry_after=parse_retry_after(response.headers.get("Retry-After"), now),
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
    token: str,
    timeout_seconds: float,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    return await send_request(
        http,
        method,
        url,
        headers={TOKEN_HEADER: token, "Accept": "application/json"},
        timeout_seconds=timeout_seconds,
        where=f"Postmark {method} {url}",
        body=body,
    )


def _url(config: PostmarkConfig, path: str) -> str:
    return config.base_url.rstrip("/") + "/" + path


async def send(
    http: httpx.AsyncClient,
    config: PostmarkConfig,
    mail: OutgoingEmail,
    *,
    token: str,
    now: datetime,
    timeout_seconds: float,
) -> dict[str, Any]:
    url = _url(config, "email")
    where = f"Postmark POST {url}"
    response = await _call(
        http, "POST", url, token, timeout_seconds, request_body(mail, config.message_stream)
    )
    if response.status_code != 200:
        raise _status_error(response, where, now)
    data = _json(response)
    if not isinstance(data, dict) or data.get("ErrorCode", 0) != 0:
        raise (
            _status_error(response, where, now)
            if isinstance(data, dict)
            else StepError(ErrorClass.PROVIDER_ERROR, f"{where} answered 200 without a JSON object")
        )
    return {
        "provider": "postmark",
        "messageId": data.get("MessageID"),
        "accepted": mail.recipients,
    }


async def check(
    http: httpx.AsyncClient,
    config: PostmarkConfig,
    *,
    token: str,
    now: datetime,
    timeout_seconds: float,
) -> dict[str, Any]:
    """``GET server``: the server token works."""
    url = _url(config, "server")
    response = await _call(http, "GET", url, token, timeout_seconds)
    if response.status_code != 200:
        raise _status_error(response, f"Postmark GET {url}", now)
    data = _json(response)
    facts: dict[str, Any] = {"provider": "postmark", "messageStream": config.message_stream}
    if isinstance(data, dict):
        if isinstance(data.get("Name"), str):
            facts["server"] = data["Name"]
        if isinstance(data.get("ID"), int):
            facts["serverId"] = data["ID"]
    return facts
