"""The email connector's pure parts: config model, message building, DKIM, bodies, describe()."""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime
from typing import Any

import dkim
import httpx
import pytest
from pydantic import ValidationError

from maestro.connectors import email_postmark, email_sendgrid
from maestro.connectors.email import choose_sender, describe, outgoing
from maestro.connectors.email_smtp import build_message, message_id, render
from maestro.engine.retry import ErrorClass, StepError
from maestro.model.connections import DkimConfig
from maestro.model.email_step import EmailStepConfig
from tests.fakes.email_apis import generate_dkim_key

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
KEY = "00000000-0000-0000-0000-00000000002a:notify"


def step(**overrides: Any) -> EmailStepConfig:
    config: dict[str, Any] = {
        "connection": "mail",
        "to": ["ann@example.org", "Bob <bob@example.org>"],
        "cc": "carol@example.org",
        "bcc": ["dave@example.org"],
        "subject": "Order 42",
        "text": "Large order",
        "html": "<p>Large order</p>",
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
    return EmailStepConfig.model_validate(config)


def mail(**overrides: Any) -> Any:
    return outgoing(step(**overrides), "Maestro <noreply@example.com>", KEY)


# --- config model -----------------------------------------------------------------------------


def test_to_as_one_string_and_lists() -> None:
    assert step(to="ann@example.org").to == ["ann@example.org"]
    assert step(to="a@example.org, B <b@example.org>").to == ["a@example.org", "B <b@example.org>"]
    assert step().cc == ["carol@example.org"]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"to": []}, "to"),
        ({"to": ["not-an-address"]}, "not an email address"),
        ({"text": None, "html": None}, "text, html or both"),
        ({"subject": "a\r\nBcc: evil@example.org"}, "line break"),
        ({"from": "x@example.com\nBcc: y@example.org"}, "line break"),
        ({"attachments": [{"filename": "a", "contentBase64": "%%%"}]}, "base64"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_invalid_configs(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        step(**overrides)
    assert fragment in str(caught.value)


def test_templates_are_not_checked_before_rendering() -> None:
    config = step(
        to="{{ input.email }}",
        attachments=[{"filename": "r.pdf", "contentBase64": "{{ steps.pdf.output.b64 }}"}],
    )
    assert config.to == ["{{ input.email }}"]


def test_html_only_and_text_only() -> None:
    assert step(text=None).text is None
    assert step(html=None).html is None


# --- sender ----------------------------------------------------------------------------------


def test_allowed_senders() -> None:
    default = "Maestro <noreply@example.com>"
    assert choose_sender(None, default, ["alerts@example.com"]) == default
    assert choose_sender("Alerts <ALERTS@example.com>", default, ["alerts@example.com"]) == (
        "Alerts <ALERTS@example.com>"
    )
    assert choose_sender("noreply@example.com", default, ["alerts@example.com"]) == (
        "noreply@example.com"
    )
    assert choose_sender("anyone@else.org", default, []) == "anyone@else.org"
    with pytest.raises(StepError) as caught:
        choose_sender("ceo@example.com", default, ["alerts@example.com"])
    assert caught.value.error_class is ErrorClass.VALIDATION
    assert "allowedSenders" in caught.value.message


def test_bad_base64_is_a_validation_error_at_run_time() -> None:
    # A value that still looks like a template passes the model; decoding it fails the step.
    config = step(attachments=[{"filename": "a.bin", "contentBase64": "{{ not base64 }}"}])
    with pytest.raises(StepError) as caught:
        outgoing(config, "a@example.com", KEY)
    assert caught.value.error_class is ErrorClass.VALIDATION
    assert "attachments.0" in caught.value.message


# --- SMTP message ------------------------------------------------------------------------------


def test_message_id_is_stable_per_idempotency_key() -> None:
    first = message_id(KEY, "Maestro <noreply@example.com>")
    assert first == message_id(KEY, "noreply@example.com")
    assert first.startswith("<")
    assert first.endswith("@example.com>")
    assert len(first.split("@")[0]) == 33  # "<" + 32 hex
    assert message_id(KEY + "x", "noreply@example.com") != first
    # the same step, two attempts at different times: one Message-ID
    one = build_message(mail(), date=NOW)
    two = build_message(mail(), date=datetime(2026, 3, 5, tzinfo=UTC))
    assert one["Message-ID"] == two["Message-ID"] == first


def test_message_headers_body_and_attachments() -> None:
    raw = build_message(mail(), date=NOW).as_bytes()
    assert b"\r\n" in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["From"] == "Maestro <noreply@example.com>"
    assert parsed["To"] == "ann@example.org, Bob <bob@example.org>"
    assert parsed["Cc"] == "carol@example.org"
    assert parsed["Bcc"] is None  # envelope only
    assert b"dave@example.org" not in raw
    assert parsed["Reply-To"] == "ops@example.com"
    assert parsed["Subject"] == "Order 42"
    assert parsed["Date"] == "Wed, 04 Mar 2026 05:06:07 +0000"
    assert parsed["X-Maestro-Idempotency-Key"] == KEY
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "multipart/mixed"
    assert parsed.get_body(("plain",)).get_content().strip() == "Large order"  # type: ignore[union-attr]
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Large order</p>"  # type: ignore[union-attr]
    attachments = list(parsed.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == "order.json"
    assert attachments[0].get_content_type() == "application/json"
    assert attachments[0].get_content() == b'{"id": 42}'
    assert mail().recipients == [
        "ann@example.org",
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
    ]


def test_non_ascii_subject_and_html_only() -> None:
    raw = build_message(mail(subject="Größe ✓", text=None, attachments=[]), date=NOW).as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Größe ✓"
    assert parsed.get_content_type() == "text/html"


def test_dkim_signature_verifies() -> None:
    key = generate_dkim_key()
    config = DkimConfig(
        domain="example.com", selector="s1", private_key={"secretRef": "env://DKIM"}
    )
    raw = render(mail(), date=NOW, dkim_config=config, dkim_key=key.private_pem)
    assert raw.startswith(b"DKIM-Signature: ")
    signature = raw.split(b"\r\nFrom:", 1)[0].decode()
    for name in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type"):
        assert name in signature
    assert "d=example.com" in signature
    assert "s=s1" in signature
    assert dkim.verify(raw, dnsfunc=key.dnsfunc("s1", "example.com"))
    # a changed subject, or another key, fails verification
    tampered = raw.replace(b"Subject: Order 42", b"Subject: Order 43")
    assert not dkim.verify(tampered, dnsfunc=key.dnsfunc("s1", "example.com"))
    other = generate_dkim_key()
    assert not dkim.verify(raw, dnsfunc=other.dnsfunc("s1", "example.com"))


def test_dkim_with_a_bad_key_is_validation_without_the_key() -> None:
    config = DkimConfig(domain="example.com", selector="s1", private_key={"secretRef": "env://D"})
    bad = (
        "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
        "-----END RSA PRIVATE KEY-----"
    )
    with pytest.raises(StepError) as caught:
        render(mail(), date=NOW, dkim_config=config, dkim_key=bad)
    assert caught.value.error_class is ErrorClass.VALIDATION
    assert "c2VjcmV0" not in caught.value.message


# --- API bodies ----------------------------------------------------------------------------


def test_sendgrid_body() -> None:
    body = email_sendgrid.request_body(mail())
    assert body["personalizations"] == [
        {
            "to": [{"email": "ann@example.org"}, {"email": "bob@example.org", "name": "Bob"}],
            "cc": [{"email": "carol@example.org"}],
            "bcc": [{"email": "dave@example.org"}],
        }
    ]
    assert body["from"] == {"email": "noreply@example.com", "name": "Maestro"}
    assert body["reply_to"] == {"email": "ops@example.com"}
    assert body["content"] == [
        {"type": "text/plain", "value": "Large order"},
        {"type": "text/html", "value": "<p>Large order</p>"},
    ]
    assert body["attachments"][0]["filename"] == "order.json"
    assert base64.b64decode(body["attachments"][0]["content"]) == b'{"id": 42}'
    assert body["headers"] == {"X-Maestro-Idempotency-Key": KEY}
    assert body["custom_args"] == {"maestro_idempotency_key": KEY}


def test_sendgrid_retry_after_falls_back_to_rate_limit_reset() -> None:
    reset = str(int(NOW.timestamp()) + 42)
    assert email_sendgrid.retry_after(httpx.Headers({"Retry-After": "7"}), NOW) == 7.0
    assert email_sendgrid.retry_after(httpx.Headers({"X-RateLimit-Reset": reset}), NOW) == 42.0
    assert email_sendgrid.retry_after(httpx.Headers({}), NOW) is None


def test_postmark_body() -> None:
    body = email_postmark.request_body(mail(), "outbound")
    assert body["From"] == "Maestro <noreply@example.com>"
    assert body["To"] == "ann@example.org, Bob <bob@example.org>"
    assert body["Cc"] == "carol@example.org"
    assert body["Bcc"] == "dave@example.org"
    assert body["TextBody"] == "Large order"
    assert body["HtmlBody"] == "<p>Large order</p>"
    assert body["ReplyTo"] == "ops@example.com"
    assert body["MessageStream"] == "outbound"
    assert body["Attachments"][0]["Name"] == "order.json"
    assert body["Attachments"][0]["ContentType"] == "application/json"
    assert body["Headers"] == [{"Name": "X-Maestro-Idempotency-Key", "Value": KEY}]
    assert body["Metadata"] == {"maestroIdempotencyKey": KEY}


# --- describe -------------------------------------------------------------------------------


def test_describe() -> None:
    config = step().model_dump(by_alias=True, exclude_none=True)
    described = describe(config)
    assert described == {
        "kind": "email",
        "connection": "mail",
        "from": "the default sender of connection 'mail'",
        "to": ["ann@example.org", "Bob <bob@example.org>"],
        "cc": ["carol@example.org"],
        "bcc": ["dave@example.org"],
        "replyTo": "ops@example.com",
        "subject": "Order 42",
        "body": ["text", "html"],
        "attachments": [{"filename": "order.json", "contentType": "application/json"}],
    }
    assert describe({**config, "from": "a@example.com"})["from"] == "a@example.com"
    with pytest.raises(ValueError, match="actionConfig"):
        describe({"connection": "mail", "to": "a@example.org", "subject": "x"})
