"""The email step handler against a real SMTP server (aiosmtpd), SendGrid and Postmark emulators,
and PostgreSQL (connections)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import dkim
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from maestro.connectors.base import ConnectorResources
from maestro.connectors.email import CHECKS, check, make_handler
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.email_apis import DkimKey, PostmarkApi, SendGridApi, generate_dkim_key

TENANT = "acme"
SMTP_PASSWORD = "smtp-very-secret-password-123"
SENDGRID_KEY = "SG.very-secret-sendgrid-key-456"
POSTMARK_TOKEN = "pm-very-secret-server-token-789"
ALL_SECRETS = (SMTP_PASSWORD, SENDGRID_KEY, POSTMARK_TOKEN)
FIXED_NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


# --- a real SMTP server -------------------------------------------------------------------------


class Inbox:
    """aiosmtpd handler: records messages; refuses ``nobody@`` (550) and ``later@`` (450)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "450 4.2.1 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 queued"

    def content(self, index: int = -1) -> bytes:
        data = self.envelopes[index].original_content
        assert isinstance(data, bytes)
        return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def login_checker(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"mailer"
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    # handled=False: aiosmtpd then answers 535 itself (handled=True would mean "already did")
    return AuthResult(success=ok, handled=False)


def start_smtp(*, auth: bool) -> tuple[Controller, Inbox]:
    inbox = Inbox()
    kwargs: dict[str, Any] = {}
    if auth:
        kwargs = {
            "authenticator": login_checker,
            "auth_required": True,
            "auth_require_tls": False,
        }
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller, inbox


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    controller, inbox = start_smtp(auth=False)
    yield controller, inbox
    controller.stop()


@pytest.fixture
def smtp_auth() -> Iterator[tuple[Controller, Inbox]]:
    controller, inbox = start_smtp(auth=True)
    yield controller, inbox
    controller.stop()


@pytest.fixture(scope="module")
def dkim_key() -> DkimKey:
    return generate_dkim_key()


# --- shared fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, dkim_key: DkimKey
) -> AsyncIterator[ConnectorResources]:
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("SMTP_WRONG_PASSWORD", "wrong-password-000")
    monkeypatch.setenv("SENDGRID_KEY", SENDGRID_KEY)
    monkeypatch.setenv("POSTMARK_TOKEN", POSTMARK_TOKEN)
    monkeypatch.setenv("DKIM_KEY", dkim_key.private_pem)
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


async def add_connection(pool: asyncpg.Pool, name: str, kind: str, config: dict[str, Any]) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (tenant_id, name, type, description, config) "
            "VALUES ($1, $2, $3, '', $4)",
            TENANT,
            name,
            kind,
            config,
        )


def ref(name: str) -> dict[str, str]:
    return {"secretRef": f"env://{name}"}


def context(attempt: int = 1) -> StepContext:
    return StepContext(
        tenant=TENANT,
        execution_id=uuid.UUID(int=42),
        workflow_id=uuid.UUID(int=7),
        step_id="notify",
        step_type="email",
        attempt=attempt,
        correlation_id=None,
        state=None,
        now=lambda: FIXED_NOW,
    )


def step(connection: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "connection": connection,
        "to": ["ann@example.org", "Bob <bob@example.org>"],
        "cc": ["carol@example.org"],
        "bcc": ["dave@example.org"],
        "subject": "Order 42 is large",
        "text": "Order 42: 1,234.00 EUR",
        "html": "<p>Order <b>42</b></p>",
        "replyTo": "ops@example.com",
        "attachments": [
            {
                "filename": "order.json",
                "contentBase64": base64.b64encode(b'{"id": 42}').decode(),
                "contentType": "application/json",
            }
        ],
    }
    config.update(overrides)
    return config


def assert_no_secret(value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    for secret in ALL_SECRETS:
        assert secret not in text


async def run(resources: ConnectorResources, config: dict[str, Any], **ctx: Any) -> Any:
    output = await make_handler(resources, timeout_seconds=10)(context(**ctx), config)
    assert_no_secret(output)
    return output


async def fails(resources: ConnectorResources, config: dict[str, Any]) -> StepError:
    with pytest.raises(StepError) as caught:
        await make_handler(resources, timeout_seconds=10)(context(), config)
    assert_no_secret(f"{caught.value} {caught.value!r}")
    return caught.value


async def check_fails(resources: ConnectorResources, config: dict[str, Any]) -> StepError:
    with pytest.raises(StepError) as caught:
        await check(resources, config)
    assert_no_secret(f"{caught.value} {caught.value!r}")
    return caught.value


def smtp_config(controller: Controller, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": controller.port,
        "security": "none",
        "from": "Maestro <noreply@example.com>",
    }
    config.update(overrides)
    return config


# --- SMTP ---------------------------------------------------------------------------------------


async def test_smtp_delivers_with_headers_and_dkim(
    smtp: tuple[Controller, Inbox],
    resources: ConnectorResources,
    pool: asyncpg.Pool,
    dkim_key: DkimKey,
) -> None:
    controller, inbox = smtp
    dkim_settings = {"domain": "example.com", "selector": "mail2026", "privateKey": ref("DKIM_KEY")}
    await add_connection(pool, "mail", "smtp", smtp_config(controller, dkim=dkim_settings))

    output = await run(resources, step("mail"))

    assert output["provider"] == "smtp"
    assert output["accepted"] == [
        "ann@example.org",
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
    ]
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "noreply@example.com"
    assert envelope.rcpt_tos == output["accepted"]
    raw = inbox.content()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == output["messageId"]
    assert output["messageId"].endswith("@example.com>")
    assert parsed["From"] == "Maestro <noreply@example.com>"
    assert parsed["To"] == "ann@example.org, Bob <bob@example.org>"
    assert parsed["Cc"] == "carol@example.org"
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Order 42 is large"
    assert parsed["X-Maestro-Idempotency-Key"] == f"{uuid.UUID(int=42)}:notify"
    assert [a.get_filename() for a in parsed.iter_attachments()] == ["order.json"]
    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dkim_key.dnsfunc("mail2026", "example.com"))

    # a second attempt of the same step: the same Message-ID
    again = await run(resources, step("mail"), attempt=2)
    assert again["messageId"] == output["messageId"]
    second = email.message_from_bytes(inbox.content(), policy=email.policy.default)
    assert second["Message-ID"] == output["messageId"]


async def test_smtp_allowed_senders(
    smtp: tuple[Controller, Inbox], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    controller, inbox = smtp
    config = smtp_config(controller, allowedSenders=["alerts@example.com"])
    await add_connection(pool, "mail", "smtp", config)
    error = await fails(resources, step("mail", **{"from": "ceo@example.com"}))
    assert error.error_class is ErrorClass.VALIDATION
    assert inbox.envelopes == []

    await run(resources, step("mail", **{"from": "Alerts <alerts@example.com>"}))
    assert inbox.envelopes[-1].mail_from == "alerts@example.com"
    await run(resources, step("mail", **{"from": "noreply@example.com"}))  # the connection's own


async def test_smtp_refused_recipients(
    smtp: tuple[Controller, Inbox], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    controller, inbox = smtp
    await add_connection(pool, "mail", "smtp", smtp_config(controller))

    error = await fails(resources, step("mail", to=["nobody@example.org"], cc=[], bcc=[]))
    assert error.error_class is ErrorClass.VALIDATION
    assert "550" in error.message

    error = await fails(resources, step("mail", to=["later@example.org"], cc=[], bcc=[]))
    assert error.error_class is ErrorClass.PROVIDER_ERROR
    assert error.retryable

    output = await run(resources, step("mail", to=["ann@example.org", "nobody@example.org"]))
    assert "nobody@example.org" not in output["accepted"]
    assert output["rejected"][0]["address"] == "nobody@example.org"
    assert output["rejected"][0]["code"] == 550
    assert inbox.envelopes[-1].rcpt_tos == output["accepted"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_smtp_login(
    smtp_auth: tuple[Controller, Inbox], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    controller, inbox = smtp_auth
    await add_connection(
        pool,
        "good",
        "smtp",
        smtp_config(controller, username="mailer", password=ref("SMTP_PASSWORD")),
    )
    await add_connection(
        pool,
        "bad",
        "smtp",
        smtp_config(controller, username="mailer", password=ref("SMTP_WRONG_PASSWORD")),
    )
    await add_connection(pool, "anonymous", "smtp", smtp_config(controller))

    output = await run(resources, step("good"))
    assert len(output["accepted"]) == 4
    assert len(inbox.envelopes) == 1

    error = await fails(resources, step("bad"))
    assert error.error_class is ErrorClass.AUTH
    assert "wrong-password-000" not in error.message

    error = await fails(resources, step("anonymous"))  # the server demands AUTH: 530
    assert error.error_class is ErrorClass.AUTH
    assert len(inbox.envelopes) == 1

    good = smtp_config(controller, username="mailer", password=ref("SMTP_PASSWORD"))
    facts = await check(resources, good)
    assert facts["provider"] == "smtp"
    assert facts["authenticated"] is True
    assert_no_secret(facts)
    bad = smtp_config(controller, username="mailer", password=ref("SMTP_WRONG_PASSWORD"))
    assert (await check_fails(resources, bad)).error_class is ErrorClass.AUTH


async def test_smtp_check_and_unreachable_server(
    smtp: tuple[Controller, Inbox], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    controller, inbox = smtp
    facts = await CHECKS["smtp"](resources, smtp_config(controller))
    assert facts["provider"] == "smtp"
    assert facts["port"] == controller.port
    assert inbox.envelopes == []

    closed = {**smtp_config(controller), "port": free_port()}
    assert (await check_fails(resources, closed)).error_class is ErrorClass.NETWORK
    await add_connection(pool, "gone", "smtp", closed)
    assert (await fails(resources, step("gone"))).error_class is ErrorClass.NETWORK


async def test_smtp_timeout(resources: ConnectorResources, pool: asyncpg.Pool) -> None:
    # A server that accepts connections and never greets.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = {"host": "127.0.0.1", "port": port, "security": "none", "from": "a@example.com"}
        await add_connection(pool, "slow", "smtp", config)
        with pytest.raises(StepError) as caught:
            await make_handler(resources, timeout_seconds=0.5)(context(), step("slow"))
        assert caught.value.error_class is ErrorClass.TIMEOUT
    finally:
        server.close()


# --- SendGrid ------------------------------------------------------------------------------------


@pytest.fixture
async def sendgrid() -> AsyncIterator[tuple[SendGridApi, str]]:
    api = SendGridApi(SENDGRID_KEY)
    async with serve_asgi(api) as url:
        yield api, url + "/"


def sendgrid_config(url: str, key: str = "SENDGRID_KEY", **extra: Any) -> dict[str, Any]:
    return {"apiKey": ref(key), "baseUrl": url, "from": "Maestro <noreply@example.com>", **extra}


async def test_sendgrid_send(
    sendgrid: tuple[SendGridApi, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    api, url = sendgrid
    await add_connection(pool, "sg", "sendgrid", sendgrid_config(url))
    output = await run(resources, step("sg"))
    assert output["provider"] == "sendgrid"
    assert output["messageId"]
    assert output["accepted"] == [
        "ann@example.org",
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
    ]
    request = api.requests[-1]
    assert request.path == "/v3/mail/send"
    assert request.headers["authorization"] == f"Bearer {SENDGRID_KEY}"
    body = api.messages[0]
    assert body["from"] == {"email": "noreply@example.com", "name": "Maestro"}
    assert body["personalizations"][0]["bcc"] == [{"email": "dave@example.org"}]
    key = f"{uuid.UUID(int=42)}:notify"
    assert body["headers"] == {"X-Maestro-Idempotency-Key": key}
    assert body["custom_args"] == {"maestro_idempotency_key": key}
    assert body["attachments"][0]["type"] == "application/json"


async def test_sendgrid_failures(
    sendgrid: tuple[SendGridApi, str],
    resources: ConnectorResources,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = sendgrid
    monkeypatch.setenv("SENDGRID_WRONG", "SG.wrong-key")
    await add_connection(pool, "sg", "sendgrid", sendgrid_config(url))
    await add_connection(pool, "wrong", "sendgrid", sendgrid_config(url, "SENDGRID_WRONG"))
    # `from` passes the connection model (3+ characters) but not SendGrid
    await add_connection(pool, "badfrom", "sendgrid", {**sendgrid_config(url), "from": "nope"})

    error = await fails(resources, step("wrong"))
    assert error.error_class is ErrorClass.AUTH
    assert "authorization grant is invalid" in error.message
    assert "SG.wrong-key" not in error.message

    error = await fails(resources, step("badfrom"))
    assert error.error_class is ErrorClass.VALIDATION
    assert "from.email: The from email does not contain a valid address." in error.message

    api.fail_with(429, retry_after="7", times=1)
    error = await fails(resources, step("sg"))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 7.0

    api.fail_with(429, times=1)  # no Retry-After: X-RateLimit-Reset (a unix time)
    api.rate_limit_reset = int(FIXED_NOW.timestamp()) + 30
    error = await fails(resources, step("sg"))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 30.0

    api.fail_with(503, times=1)
    error = await fails(resources, step("sg"))
    assert error.error_class is ErrorClass.PROVIDER_ERROR
    assert error.retryable
    assert api.messages == []
    await run(resources, step("sg"))
    assert len(api.messages) == 1


async def test_sendgrid_check(
    sendgrid: tuple[SendGridApi, str],
    resources: ConnectorResources,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = sendgrid
    facts = await CHECKS["sendgrid"](resources, sendgrid_config(url))
    assert facts == {"provider": "sendgrid", "scopeCount": 2, "mailSend": True}
    assert api.requests[-1].path == "/v3/scopes"
    monkeypatch.setenv("SENDGRID_WRONG", "SG.wrong-key")
    error = await check_fails(resources, sendgrid_config(url, "SENDGRID_WRONG"))
    assert error.error_class is ErrorClass.AUTH
    api.scopes = ["user.profile.read"]
    error = await check_fails(resources, sendgrid_config(url))
    assert error.error_class is ErrorClass.AUTH
    assert "mail.send" in error.message


# --- Postmark -------------------------------------------------------------------------------------


@pytest.fixture
async def postmark() -> AsyncIterator[tuple[PostmarkApi, str]]:
    api = PostmarkApi(POSTMARK_TOKEN, inactive={"bounced@example.org"})
    async with serve_asgi(api) as url:
        yield api, url + "/"


def postmark_config(url: str, env_name: str = "POSTMARK_TOKEN") -> dict[str, Any]:
    return {
        "serverToken": ref(env_name),
        "baseUrl": url,
        "from": "Maestro <noreply@example.com>",
        "messageStream": "alerts",
    }


async def test_postmark_send(
    postmark: tuple[PostmarkApi, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    api, url = postmark
    await add_connection(pool, "pm", "postmark", postmark_config(url))
    output = await run(resources, step("pm"))
    assert output["provider"] == "postmark"
    assert uuid.UUID(output["messageId"])
    assert output["accepted"] == [
        "ann@example.org",
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
    ]
    request = api.requests[-1]
    assert request.path == "/email"
    assert request.headers["x-postmark-server-token"] == POSTMARK_TOKEN
    assert request.headers["accept"] == "application/json"
    body = api.messages[0]
    assert body["MessageStream"] == "alerts"
    assert body["To"] == "ann@example.org, Bob <bob@example.org>"
    assert body["Bcc"] == "dave@example.org"
    key = f"{uuid.UUID(int=42)}:notify"
    assert body["Metadata"] == {"maestroIdempotencyKey": key}
    assert body["Headers"] == [{"Name": "X-Maestro-Idempotency-Key", "Value": key}]
    assert body["Attachments"][0]["Name"] == "order.json"


async def test_postmark_failures(
    postmark: tuple[PostmarkApi, str],
    resources: ConnectorResources,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = postmark
    monkeypatch.setenv("POSTMARK_WRONG", "pm-wrong-token")
    await add_connection(pool, "pm", "postmark", postmark_config(url))
    await add_connection(pool, "wrong", "postmark", postmark_config(url, "POSTMARK_WRONG"))
    await add_connection(pool, "badfrom", "postmark", {**postmark_config(url), "from": "nope"})

    error = await fails(resources, step("wrong"))
    assert error.error_class is ErrorClass.AUTH
    assert "ErrorCode 10" in error.message

    error = await fails(resources, step("badfrom"))
    assert error.error_class is ErrorClass.VALIDATION
    assert "422" in error.message
    assert "ErrorCode 300" in error.message

    error = await fails(resources, step("pm", to=["bounced@example.org"]))
    assert error.error_class is ErrorClass.VALIDATION
    assert "ErrorCode 406" in error.message

    api.fail_with(429, retry_after="12", times=1)
    error = await fails(resources, step("pm"))
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after == 12.0

    api.fail_with(500, times=1)
    error = await fails(resources, step("pm"))
    assert error.error_class is ErrorClass.PROVIDER_ERROR
    assert api.messages == []
    await run(resources, step("pm"))
    assert len(api.messages) == 1


async def test_postmark_check(
    postmark: tuple[PostmarkApi, str],
    resources: ConnectorResources,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, url = postmark
    facts = await CHECKS["postmark"](resources, postmark_config(url))
    assert facts == {
        "provider": "postmark",
        "messageStream": "alerts",
        "server": "Maestro test server",
        "serverId": 1,
    }
    assert api.requests[-1].path == "/server"
    monkeypatch.setenv("POSTMARK_WRONG", "pm-wrong-token")
    error = await check_fails(resources, postmark_config(url, "POSTMARK_WRONG"))
    assert error.error_class is ErrorClass.AUTH


async def test_wrong_connection_type_and_unknown_connection(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    await add_connection(pool, "web", "http", {"baseUrl": "https://example.com"})
    assert (await fails(resources, step("web"))).error_class is ErrorClass.VALIDATION
    assert (await fails(resources, step("missing"))).error_class is ErrorClass.NOT_FOUND
