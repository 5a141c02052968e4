"""The ``email`` step's SMTP provider (aiosmtplib), with optional DKIM signing (dkimpy).

The message is an :class:`email.message.EmailMessage` (SMTP policy, CRLF line ends) whose
``Message-ID`` is derived from the step's idempotency key, so every attempt of one step sends
the same ``Message-ID`` (receivers and mail stores can spot a redelivery). Bcc recipients are
envelope recipients only, never a header.

Errors: a refused login -> ``auth``; a 4xx reply (temporary) -> ``provider_error`` (retried);
every recipient refused permanently (5xx) or another 5xx reply -> ``validation``; connection
failures -> ``network``; timeouts -> ``timeout``.
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import ssl
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib
import dkim  # type: ignore[import-untyped]

from maestro.engine.retry import ErrorClass, StepError
from maestro.model.connections import DkimConfig, SmtpConfig
from maestro.model.email_step import OutgoingEmail, bare_address

__all__ = [
    "DKIM_HEADERS",
    "IDEMPOTENCY_HEADER",
    "build_message",
    "check",
    "classify",
    "dkim_sign",
    "message_id",
    "render",
    "send",
]

IDEMPOTENCY_HEADER = "X-Maestro-Idempotency-Key"
# Signed when present (From, To, Subject, Date, Message-ID, MIME-Version, Content-Type always
# are); Cc and Reply-To too, so that nobody can add recipients or redirect replies unnoticed.
DKIM_HEADERS = (
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
)
# SMTP reply codes that mean "authenticate (differently)".
_AUTH_CODES = frozenset({530, 534, 535, 538})
_REPLY_CHARS = 200


def message_id(idempotency_key: str, sender: str) -> str:
    """``<{sha256(key)[:32]}@{sender's domain}>``: the same for every attempt of a step."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    domain = bare_address(sender).rpartition("@")[2] or "localhost"
    return f"<{digest}@{domain}>"


def build_message(mail: OutgoingEmail, *, date: datetime) -> EmailMessage:
    """The MIME message (no Bcc header): text and/or html, then attachments."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = mail.sender
    msg["To"] = ", ".join(mail.to)
    if mail.cc:
        msg["Cc"] = ", ".join(mail.cc)
    if mail.reply_to:
        msg["Reply-To"] = mail.reply_to
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id(mail.idempotency_key, mail.sender)
    msg[IDEMPOTENCY_HEADER] = mail.idempotency_key
    if mail.text is not None:
        msg.set_content(mail.text)
        if mail.html is not None:
            msg.add_alternative(mail.html, subtype="html")
    elif mail.html is not None:
        msg.set_content(mail.html, subtype="html")
    for item in mail.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        msg.add_attachment(
            item.content,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=item.filename,
        )
    return msg


def dkim_sign(raw: bytes, config: DkimConfig, private_key: str) -> bytes:
    """``raw`` with a ``DKIM-Signature`` header prepended (relaxed/relaxed, rsa-sha256)."""
    present = {line.split(b":", 1)[0].strip().lower() for line in _header_lines(raw)}
    include = [h.lower().encode() for h in DKIM_HEADERS if h.lower().encode() in present]
    pem = private_key.replace("\r\n", "\n").strip().encode() + b"\n"
    try:
        signature = dkim.sign(
            raw,
            config.selector.encode(),
            config.domain.encode(),
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
    except dkim.DKIMException as exc:
        # The exception text never holds the key itself.
        raise StepError(
            ErrorClass.VALIDATION,
            f"cannot DKIM-sign with the connection's dkim.privateKey ({type(exc).__name__}); "
            "give a PEM RSA private key",
        ) from None
    if not isinstance(signature, bytes) or not signature:
        raise StepError(ErrorClass.VALIDATION, "DKIM signing produced no signature")
    return signature + raw


def _header_lines(raw: bytes) -> list[bytes]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [line for line in head.split(b"\r\n") if line and line[:1] not in (b" ", b"\t")]


def render(
    mail: OutgoingEmail,
    *,
    date: datetime,
    dkim_config: DkimConfig | None = None,
    dkim_key: str | None = None,
) -> bytes:
    """The bytes sent over SMTP (CRLF line ends), DKIM-signed when configured."""
    raw = build_message(mail, date=date).as_bytes()
    if dkim_config is not None and dkim_key is not None:
        raw = dkim_sign(raw, dkim_config, dkim_key)
    return raw


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()[:_REPLY_CHARS]


def classify(exc: BaseException, where: str) -> StepError:
    """An SMTP failure as a step error (the caller scrubs secrets from the message)."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return StepError(ErrorClass.AUTH, f"{where} refused the login: {_reply(exc)}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = "; ".join(
            f"{r.recipient}: {r.code} {r.message}"[:_REPLY_CHARS] for r in exc.recipients
        )
        if any(400 <= r.code < 500 for r in exc.recipients):
            return StepError(
                ErrorClass.PROVIDER_ERROR, f"{where} refused the recipients for now: {refused}"
            )
        return StepError(ErrorClass.VALIDATION, f"{where} refused every recipient: {refused}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return StepError(ErrorClass.TIMEOUT, f"{where} timed out ({type(exc).__name__})")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return StepError(ErrorClass.NETWORK, f"{where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return StepError(ErrorClass.VALIDATION, f"{where}: {exc}; check the connection's security")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"{where} answered {_reply(exc)}"
        if 400 <= exc.code < 500:
            return StepError(ErrorClass.PROVIDER_ERROR, text)
        if exc.code in _AUTH_CODES:
            return StepError(ErrorClass.AUTH, text)
        if 500 <= exc.code < 600:
            return StepError(ErrorClass.VALIDATION, text)
        return StepError(ErrorClass.PROVIDER_ERROR, text)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StepError(ErrorClass.VALIDATION, f"{where}: TLS certificate not trusted: {exc}")
    if isinstance(exc, OSError):
        return StepError(
            ErrorClass.NETWORK, f"{where}: cannot connect: {exc.strerror or type(exc).__name__}"
        )
    if isinstance(exc, aiosmtplib.SMTPException) and "not supported" in str(exc):
        # e.g. AUTH offered only after STARTTLS: a settings problem, retrying cannot help.
        return StepError(ErrorClass.VALIDATION, f"{where}: {exc} (check the connection's security)")
    if isinstance(exc, aiosmtplib.SMTPException):
        return StepError(ErrorClass.PROVIDER_ERROR, f"{where}: {type(exc).__name__}: {exc}")
    return StepError(ErrorClass.PROVIDER_ERROR, f"{where}: {type(exc).__name__}")


def _client(config: SmtpConfig, timeout_seconds: float) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=config.host,
        port=config.port,
        use_tls=config.security == "tls",
        start_tls=config.security == "starttls",  # "none": never upgrade, not even if offered
        timeout=timeout_seconds,
    )


async def _open(client: aiosmtplib.SMTP, config: SmtpConfig, password: str | None) -> None:
    """Connect (TLS / STARTTLS per ``security``), EHLO, and log in when configured."""
    await client.connect()
    await client.ehlo()
    if config.username:
        await client.login(config.username, password or "")


async def _close(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def _where(config: SmtpConfig) -> str:
    return f"SMTP server {config.host}:{config.port}"


async def send(
    config: SmtpConfig,
    mail: OutgoingEmail,
    *,
    password: str | None,
    dkim_key: str | None,
    date: datetime,
    timeout_seconds: float,
) -> dict[str, Any]:
    """Send ``mail``; output ``{"provider", "messageId", "accepted"}`` (plus ``"rejected"``
    when the server refused some, not all, recipients)."""
    raw = render(mail, date=date, dkim_config=config.dkim, dkim_key=dkim_key)
    recipients = mail.recipients
    client = _client(config, timeout_seconds)
    try:
        async with asyncio.timeout(timeout_seconds):
            await _open(client, config, password)
            refused, _ = await client.sendmail(mail.envelope_sender, recipients, raw)
    except asyncio.CancelledError:
        client.close()
        raise
    except Exception as exc:
        client.close()
        raise classify(exc, _where(config)) from None
    await _close(client)
    output: dict[str, Any] = {
        "provider": "smtp",
        "messageId": message_id(mail.idempotency_key, mail.sender),
        "accepted": [r for r in recipients if r not in refused],
    }
    if refused:
        output["rejected"] = [
            {"address": address, "code": reply.code, "message": reply.message[:_REPLY_CHARS]}
            for address, reply in refused.items()
        ]
    return output


async def check(
    config: SmtpConfig, *, password: str | None, timeout_seconds: float
) -> dict[str, Any]:
    """Connect, EHLO, STARTTLS/login as configured, NOOP, QUIT."""
    client = _client(config, timeout_seconds)
    try:
        async with asyncio.timeout(timeout_seconds):
            await _open(client, config, password)
            await client.noop()
            extensions = sorted(client.esmtp_extensions)
            await client.quit()
    except asyncio.CancelledError:
        client.close()
        raise
    except Exception as exc:
        client.close()
        raise classify(exc, _where(config)) from None
    return {
        "provider": "smtp",
        "host": config.host,
        "port": config.port,
        "security": config.security,
        "authenticated": bool(config.username),
        "extensions": extensions,
    }
