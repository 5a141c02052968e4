"""Interoperability with the Standard Webhooks reference library (`standardwebhooks` on PyPI):
it verifies what we sign, and we verify what it signs."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from maestro.triggers.webhook_signature import (
    CandidateKey,
    Rejection,
    VerificationError,
    Verified,
    new_secret,
    secret_key,
    sign,
    verify,
)

MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
PAYLOAD = '{"test": 2432232314}'
TOLERANCE = 300


def our_headers(secret: str, msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def our_verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> Verified:
    return verify(
        headers,
        body,
        [CandidateKey(secret_key(secret), None, "current")],
        now=now,
        tolerance_seconds=TOLERANCE,
    )


def test_reference_signs_the_published_vector_like_we_do() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    when = datetime.fromtimestamp(1614265330, tz=UTC)
    theirs = Webhook(secret).sign(msg_id=MSG_ID, timestamp=when, data=PAYLOAD)
    assert theirs == sign(secret, MSG_ID, 1614265330, PAYLOAD.encode())
    assert theirs == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reference_verifies_our_signature() -> None:
    # The reference library reads the real clock, so sign with it.
    secret = new_secret()
    ts = int(time.time())
    headers = our_headers(secret, MSG_ID, ts, PAYLOAD.encode())
    assert Webhook(secret).verify(PAYLOAD, headers) == json.loads(PAYLOAD)


def test_reference_rejects_our_signature_with_another_secret() -> None:
    ts = int(time.time())
    headers = our_headers(new_secret(), MSG_ID, ts, PAYLOAD.encode())
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(PAYLOAD, headers)


def test_we_verify_the_reference_signature() -> None:
    secret = new_secret()
    now = time.time()
    ts = int(now)
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(ts),
        "webhook-signature": Webhook(secret).sign(
            msg_id=MSG_ID, timestamp=datetime.fromtimestamp(ts, tz=UTC), data=PAYLOAD
        ),
    }
    assert our_verify(secret, headers, PAYLOAD.encode(), now) == Verified(MSG_ID, ts, "current")
    with pytest.raises(VerificationError) as info:
        our_verify(new_secret(), headers, PAYLOAD.encode(), now)
    assert info.value.code is Rejection.INVALID_SIGNATURE


ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)
# The reference library takes the body as text, so bodies here are any Unicode text (UTF-8).
payloads = st.text(max_size=512)


@settings(max_examples=100, deadline=None)
@given(msg_id=ids, payload=payloads, raw_key=st.binary(min_size=1, max_size=64))
def test_property_both_directions(msg_id: str, payload: str, raw_key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(raw_key).decode()
    now = time.time()
    ts = int(now)
    body = payload.encode()
    reference = Webhook(secret)

    ours = our_headers(secret, msg_id, ts, body)
    assert reference.verify(body, ours, json_parse=False) is None

    theirs = reference.sign(
        msg_id=msg_id, timestamp=datetime.fromtimestamp(ts, tz=UTC), data=payload
    )
    assert theirs == ours["webhook-signature"]
    assert our_verify(secret, {**ours, "webhook-signature": theirs}, body, now).matched == "current"
