"""SMTP over STARTTLS and implicit TLS, against aiosmtpd with a certificate made for the test
(trusted through SSL_CERT_FILE, as a private CA would be)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiosmtpd.controller import Controller

from maestro.connectors.base import ConnectorResources
from maestro.connectors.email import check
from maestro.engine.retry import ErrorClass
from tests.integration.test_email_connector import (
    Inbox,
    add_connection,
    dkim_key,  # noqa: F401 - a fixture the resources fixture uses
    fails,
    free_port,
    login_checker,
    ref,
    resources,  # noqa: F401 - the fixture
    run,
    step,
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)
    return server


def start(inbox: Inbox, **kwargs: object) -> Controller:
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=login_checker,
        auth_required=True,
        **kwargs,  # type: ignore[arg-type]
    )
    controller.start()
    return controller


@pytest.fixture
def starttls_server(trusted: ssl.SSLContext) -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = start(inbox, tls_context=trusted, require_starttls=True)
    yield controller, inbox
    controller.stop()


@pytest.fixture
def tls_server(trusted: ssl.SSLContext) -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    # Implicit TLS: the whole session is encrypted (aiosmtpd only tracks STARTTLS for AUTH).
    controller = start(inbox, ssl_context=trusted, auth_require_tls=False)
    yield controller, inbox
    controller.stop()


def config(controller: Controller, security: str) -> dict[str, object]:
    return {
        "host": "localhost",
        "port": controller.port,
        "security": security,
        "username": "mailer",
        "password": ref("SMTP_PASSWORD"),
        "from": "Maestro <noreply@example.com>",
    }


async def test_starttls_then_login_then_send(
    starttls_server: tuple[Controller, Inbox],
    resources: ConnectorResources,  # noqa: F811
    pool: asyncpg.Pool,
) -> None:
    controller, inbox = starttls_server
    await add_connection(pool, "mail", "smtp", config(controller, "starttls"))
    facts = await check(resources, config(controller, "starttls"))
    assert facts["authenticated"] is True
    output = await run(resources, step("mail"))
    assert output["provider"] == "smtp"
    assert len(inbox.envelopes) == 1


# aiosmtpd warns about AUTH without STARTTLS; here the whole session is TLS from the start.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_implicit_tls(
    tls_server: tuple[Controller, Inbox],
    resources: ConnectorResources,  # noqa: F811
    pool: asyncpg.Pool,
) -> None:
    controller, inbox = tls_server
    await add_connection(pool, "mail", "smtp", config(controller, "tls"))
    await run(resources, step("mail"))
    assert len(inbox.envelopes) == 1


async def test_a_server_that_requires_starttls_refuses_a_plain_login(
    starttls_server: tuple[Controller, Inbox],
    resources: ConnectorResources,  # noqa: F811
    pool: asyncpg.Pool,
) -> None:
    controller, inbox = starttls_server
    await add_connection(pool, "mail", "smtp", config(controller, "none"))
    error = await fails(resources, step("mail"))
    assert error.error_class is ErrorClass.VALIDATION
    assert "security" in error.message
    assert inbox.envelopes == []


async def test_an_untrusted_certificate_is_refused(
    certificate: tuple[Path, Path],
    resources: ConnectorResources,  # noqa: F811
    pool: asyncpg.Pool,
) -> None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(*certificate)  # SSL_CERT_FILE not pointed at it: not trusted
    inbox = Inbox()
    controller = start(inbox, tls_context=server, require_starttls=True)
    try:
        await add_connection(pool, "mail", "smtp", config(controller, "starttls"))
        error = await fails(resources, step("mail"))
    finally:
        controller.stop()
    assert error.error_class is ErrorClass.VALIDATION
    assert "certificate" in error.message.lower()
    assert inbox.envelopes == []
