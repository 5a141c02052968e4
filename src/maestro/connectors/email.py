"""The ``email`` step type: one email through an ``smtp``, ``sendgrid`` or ``postmark`` connection.

The handler validates the rendered ``actionConfig`` (:class:`EmailStepConfig`), picks the
sender (the step's ``from``, which must be the connection's ``from`` or in its non-empty
``allowedSenders``; else the connection's ``from``), decodes attachments, resolves the
connection's secrets right before the call and hands the message to the provider module
(:mod:`~maestro.connectors.email_smtp`, :mod:`~maestro.connectors.email_sendgrid`,
:mod:`~maestro.connectors.email_postmark`). Every provider gets the step's idempotency key
(SMTP: a ``Message-ID`` derived from it; APIs: a header and metadata).

Output: ``{"provider", "messageId", "accepted": [addresses]}``. Resolved secrets are scrubbed
from outputs and error messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from maestro.connectors import email_postmark, email_sendgrid, email_smtp
from maestro.connectors.base import ConnectorResources
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.model.connections import PostmarkConfig, SendgridConfig, SmtpConfig
from maestro.model.email_step import (
    Attachment,
    EmailStepConfig,
    OutgoingEmail,
    bare_address,
    decode_base64,
)
from maestro.secrets import SecretRef, scrub, scrub_json

__all__ = [
    "CHECKS",
    "CONNECTION_TYPES",
    "DEFAULT_TIMEOUT_SECONDS",
    "check",
    "choose_sender",
    "describe",
    "make_handler",
    "outgoing",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
CHECK_TIMEOUT_SECONDS = 10.0
CONNECTION_TYPES = ("smtp", "sendgrid", "postmark")

Handler = Callable[[StepContext, Any], Awaitable[Any]]
ConnectionConfig = SmtpConfig | SendgridConfig | PostmarkConfig


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"actionConfig.{where}: {first['msg']}" if where else f"actionConfig: {first['msg']}"


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the step would send, for ``simulate``: no secrets, no I/O. ValueError if invalid.

    The provider and default sender come from the connection (not read here)."""
    try:
        step = EmailStepConfig.model_validate(config)
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None
    body = [kind for kind, value in (("text", step.text), ("html", step.html)) if value is not None]
    return {
        "kind": "email",
        "connection": step.connection,
        "from": step.from_ or f"the default sender of connection {step.connection!r}",
        "to": step.to,
        "cc": step.cc,
        "bcc": step.bcc,
        "replyTo": step.reply_to,
        "subject": step.subject,
        "body": body,
        "attachments": [
            {"filename": a.filename, "contentType": a.content_type} for a in step.attachments
        ],
    }


def choose_sender(step_from: str | None, default: str, allowed: list[str]) -> str:
    """The sender: ``step_from`` if allowed (the connection's ``default`` always is, anything
    is when ``allowed`` is empty), else StepError ``validation``; no ``step_from``: default."""
    if step_from is None:
        return default
    if allowed:
        permitted = {bare_address(a).lower() for a in allowed}
        permitted.add(bare_address(default).lower())
        if bare_address(step_from).lower() not in permitted:
            raise StepError(
                ErrorClass.VALIDATION,
                f"actionConfig.from {bare_address(step_from)!r} is not one of the connection's "
                "allowedSenders",
            )
    return step_from


def outgoing(step: EmailStepConfig, sender: str, idempotency_key: str) -> OutgoingEmail:
    attachments = []
    for index, item in enumerate(step.attachments):
        try:
            content = decode_base64(item.content_base64)
        except ValueError as exc:
            raise StepError(
                ErrorClass.VALIDATION, f"actionConfig.attachments.{index}: {exc}"
            ) from None
        attachments.append(Attachment(item.filename, content, item.content_type))
    return OutgoingEmail(
        sender=sender,
        to=tuple(step.to),
        cc=tuple(step.cc),
        bcc=tuple(step.bcc),
        subject=step.subject,
        text=step.text,
        html=step.html,
        reply_to=step.reply_to,
        attachments=tuple(attachments),
        idempotency_key=idempotency_key,
    )


def _connection_model(name: str, stored: Mapping[str, Any]) -> ConnectionConfig:
    """The typed connection (its type told apart by its required fields)."""
    model: type[BaseModel]
    if "host" in stored:
        model = SmtpConfig
    elif "apiKey" in stored or "api_key" in stored:
        model = SendgridConfig
    elif "serverToken" in stored or "server_token" in stored:
        model = PostmarkConfig
    else:
        raise StepError(
            ErrorClass.VALIDATION,
            f"connection {name!r} is not an smtp, sendgrid or postmark connection",
        )
    try:
        parsed = model.model_validate(stored)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise StepError(
            ErrorClass.VALIDATION, f"connection {name!r}: config.{where}: {first['msg']}"
        ) from None
    assert isinstance(parsed, SmtpConfig | SendgridConfig | PostmarkConfig)
    return parsed


async def _secret(resources: ConnectorResources, ref: SecretRef, what: str) -> str:
    value = await resources.resolve(ref.model_dump(by_alias=True))
    if not isinstance(value, str) or not value:
        raise StepError(ErrorClass.VALIDATION, f"the connection's {what} resolved to no text")
    return value


async def _secrets(resources: ConnectorResources, connection: ConnectionConfig) -> dict[str, str]:
    """The connection's secrets, resolved now (keys: password, dkimKey, apiKey, serverToken)."""
    found: dict[str, str] = {}
    if isinstance(connection, SmtpConfig):
        if connection.password is not None:
            found["password"] = await _secret(resources, connection.password, "password")
        if connection.dkim is not None:
            found["dkimKey"] = await _secret(
                resources, connection.dkim.private_key, "dkim.privateKey"
            )
    elif isinstance(connection, SendgridConfig):
        found["apiKey"] = await _secret(resources, connection.api_key, "apiKey")
    else:
        found["serverToken"] = await _secret(resources, connection.server_token, "serverToken")
    return found


def _scrubbed(exc: StepError, secrets: list[str]) -> StepError:
    return StepError(exc.error_class, scrub(exc.message, secrets), retry_after=exc.retry_after)


def _secret_values(resolved: Mapping[str, str]) -> list[str]:
    values = list(resolved.values())
    key = resolved.get("dkimKey")
    if key:  # a provider could quote one line of a PEM key
        values += [line for line in key.splitlines() if len(line) >= 16]
    return values


def make_handler(
    resources: ConnectorResources, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> Handler:
    """The ``email`` step handler."""

    async def run_email(ctx: StepContext, config: Any) -> Any:
        try:
            step = EmailStepConfig.model_validate(config)
        except ValidationError as exc:
            raise StepError(ErrorClass.VALIDATION, _first_error(exc) + " after rendering") from None
        stored = await resources.connection(ctx.tenant, step.connection, CONNECTION_TYPES)
        connection = _connection_model(step.connection, stored)
        sender = choose_sender(step.from_, connection.from_, connection.allowed_senders)
        mail = outgoing(step, sender, ctx.idempotency_key)
        resolved = await _secrets(resources, connection)
        secrets = _secret_values(resolved)
        try:
            if isinstance(connection, SmtpConfig):
                output = await email_smtp.send(
                    connection,
                    mail,
                    password=resolved.get("password"),
                    dkim_key=resolved.get("dkimKey"),
                    date=ctx.now(),
                    timeout_seconds=timeout_seconds,
                )
            elif isinstance(connection, SendgridConfig):
                output = await email_sendgrid.send(
                    resources.http,
                    connection,
                    mail,
                    api_key=resolved["apiKey"],
                    now=ctx.now(),
                    timeout_seconds=timeout_seconds,
                )
            else:
                output = await email_postmark.send(
                    resources.http,
                    connection,
                    mail,
                    token=resolved["serverToken"],
                    now=ctx.now(),
                    timeout_seconds=timeout_seconds,
                )
        except StepError as exc:
            raise _scrubbed(exc, secrets) from None
        result: dict[str, Any] = scrub_json(output, secrets)
        return result

    return run_email


async def check(
    resources: ConnectorResources,
    config: Mapping[str, Any],
    *,
    timeout_seconds: float = CHECK_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """A harmless call proving the connection works: SMTP connect/EHLO/(STARTTLS, login)/NOOP/
    QUIT; SendGrid ``GET v3/scopes`` (needs ``mail.send``); Postmark ``GET server``."""
    connection = _connection_model("under test", config)
    resolved = await _secrets(resources, connection)
    secrets = _secret_values(resolved)
    now = datetime.now(UTC)
    try:
        if isinstance(connection, SmtpConfig):
            facts = await email_smtp.check(
                connection, password=resolved.get("password"), timeout_seconds=timeout_seconds
            )
        elif isinstance(connection, SendgridConfig):
            facts = await email_sendgrid.check(
                resources.http,
                connection,
                api_key=resolved["apiKey"],
                now=now,
                timeout_seconds=timeout_seconds,
            )
        else:
            facts = await email_postmark.check(
                resources.http,
                connection,
                token=resolved["serverToken"],
                now=now,
                timeout_seconds=timeout_seconds,
            )
    except StepError as exc:
        raise _scrubbed(exc, secrets) from None
    result: dict[str, Any] = scrub_json(facts, secrets)
    return result


async def _check(resources: ConnectorResources, config: Mapping[str, Any]) -> dict[str, Any]:
    return await check(resources, config)


Check = Callable[[ConnectorResources, Mapping[str, Any]], Awaitable[dict[str, Any]]]

# For maestro.connectors.registry.CHECKS (keyed by connection type).
CHECKS: dict[str, Check] = dict.fromkeys(CONNECTION_TYPES, _check)
