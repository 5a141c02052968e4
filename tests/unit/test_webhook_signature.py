"""Standard Webhooks signatures: known answers, tampering, timestamp window, key rotation,
malformed input, secrets, and properties over random deliveries."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maestro.triggers.webhook_signature import (
    MAX_SIGNATURES,
    SECRET_PREFIX,
    CandidateKey,
    Rejection,
    VerificationError,
    Verified,
    new_secret,
    secret_key,
    sign,
    verify,
)

NOW = 1_700_000_000
TOLERANCE = 300
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
MSG_ID = "msg_2b8f1c9e7a"
Headers = dict[str, str]
BODY = b'{"event":"order.created","id":42}'


def key(
    secret: str = SECRET, label: str = "current", expires_at: float | None = None
) -> CandidateKey:
    return CandidateKey(key=secret_key(secret), expires_at=expires_at, label=label)


def headers(
    webhook_id: str = MSG_ID,
    timestamp: int | str = NOW,
    signature: str | None = None,
    *,
    secret: str = SECRET,
    body: bytes = BODY,
) -> dict[str, str]:
    if signature is None:
        signature = sign(secret, webhook_id, int(timestamp), body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def check(
    hdrs: dict[str, str],
    body: bytes = BODY,
    keys: list[CandidateKey] | None = None,
    now: float = NOW,
) -> Verified:
    return verify(
        hdrs, body, [key()] if keys is None else keys, now=now, tolerance_seconds=TOLERANCE
    )


def rejected(
    code: Rejection,
    hdrs: dict[str, str],
    body: bytes = BODY,
    keys: list[CandidateKey] | None = None,
    now: float = NOW,
) -> VerificationError:
    """Asserts the rejection code, and that the detail holds no key material."""
    keys = [key()] if keys is None else keys
    with pytest.raises(VerificationError) as info:
        check(hdrs, body, keys, now)
    err = info.value
    assert err.code is code, err.detail
    secrets_used = [SECRET, OTHER_SECRET]
    for k in keys:
        secrets_used.append(SECRET_PREFIX + base64.b64encode(k.key).decode())
        for ts in {hdrs.get("webhook-timestamp", ""), str(NOW)}:
            msg = f"{hdrs.get('webhook-id', '')}.{ts}.".encode() + body
            secrets_used.append(base64.b64encode(hmac.digest(k.key, msg, "sha256")).decode())
    for s in secrets_used:
        assert s not in err.detail
        assert s.removeprefix(SECRET_PREFIX) not in err.detail
    assert err.detail in str(err)
    return err


def flip_signature_byte(signature: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(signature.removeprefix("v1,")))
    raw[index] ^= 0x01
    return "v1," + base64.b64encode(bytes(raw)).decode()


# -- known answers ------------------------------------------------------------------------------


def test_known_answer_from_spec_formula() -> None:
    raw_key = bytes(range(32))
    msg = f"{MSG_ID}.{NOW}.".encode() + BODY
    expected = "v1," + base64.b64encode(hmac.new(raw_key, msg, hashlib.sha256).digest()).decode()
    assert sign(SECRET, MSG_ID, NOW, BODY) == expected
    assert check(headers(signature=expected)) == Verified(MSG_ID, NOW, "current")


def test_published_standard_webhooks_vector() -> None:
    # The signing example of the Standard Webhooks reference libraries (24-byte key).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, msg_id, 1614265330, body) == expected
    result = verify(
        {"webhook-id": msg_id, "webhook-timestamp": "1614265330", "webhook-signature": expected},
        body,
        [key(secret)],
        now=1614265330,
        tolerance_seconds=TOLERANCE,
    )
    assert result == Verified(msg_id, 1614265330, "current")


# -- valid and tampered -------------------------------------------------------------------------


def test_valid_delivery() -> None:
    result = check(headers())
    assert result == Verified(webhook_id=MSG_ID, timestamp=NOW, matched="current")


def test_empty_body_is_signed_too() -> None:
    assert check(headers(body=b""), body=b"").matched == "current"
    rejected(Rejection.INVALID_SIGNATURE, headers(body=b""), body=b" ")


@pytest.mark.parametrize(
    "tampered",
    [
        pytest.param(lambda h: {**h, "webhook-id": MSG_ID + "x"}, id="id"),
        pytest.param(lambda h: {**h, "webhook-timestamp": str(NOW + 1)}, id="timestamp"),
        pytest.param(
            lambda h: {**h, "webhook-signature": flip_signature_byte(h["webhook-signature"])},
            id="signature-first-byte",
        ),
        pytest.param(
            lambda h: {**h, "webhook-signature": flip_signature_byte(h["webhook-signature"], 31)},
            id="signature-last-byte",
        ),
        pytest.param(lambda h: headers(secret=OTHER_SECRET), id="wrong-secret"),
    ],
)
def test_tampered_headers_are_invalid(tampered: Callable[[Headers], Headers]) -> None:
    err = rejected(Rejection.INVALID_SIGNATURE, tampered(headers()))
    assert "HMAC-SHA256" in err.detail
    assert "whsec_" in err.detail


@pytest.mark.parametrize(
    "body", [BODY + b" ", BODY[:-1], b"", BODY.replace(b"42", b"43"), BODY.upper()]
)
def test_tampered_body_is_invalid(body: bytes) -> None:
    rejected(Rejection.INVALID_SIGNATURE, headers(), body=body)


def test_signature_over_a_different_body_encoding_is_invalid() -> None:
    # The raw bytes are signed: re-serialised JSON with other whitespace does not verify.
    rejected(Rejection.INVALID_SIGNATURE, headers(), body=b'{"event": "order.created", "id": 42}')


# -- missing and malformed headers --------------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_header(name: str, how: str) -> None:
    hdrs = headers()
    if how == "absent":
        del hdrs[name]
    else:
        hdrs[name] = ""
    err = rejected(Rejection.MISSING_SIGNATURE, hdrs)
    assert name in err.detail.split(";")[0]
    others = {"webhook-id", "webhook-timestamp", "webhook-signature"} - {name}
    assert not any(o in err.detail.split(";")[0] for o in others)


def test_all_headers_missing_names_all_three() -> None:
    err = rejected(Rejection.MISSING_SIGNATURE, {})
    first = err.detail.split(";")[0]
    assert all(n in first for n in ("webhook-id", "webhook-timestamp", "webhook-signature"))


def test_header_names_must_be_lower_cased_by_the_caller() -> None:
    hdrs = {k.title(): v for k, v in headers().items()}
    rejected(Rejection.MISSING_SIGNATURE, hdrs)


def test_webhook_id_length_limit() -> None:
    ok = "m" * 255
    assert check(headers(webhook_id=ok)).webhook_id == ok
    err = rejected(Rejection.MISSING_SIGNATURE, headers(webhook_id="m" * 256))
    assert "255" in err.detail


@pytest.mark.parametrize("bad_id", ["msg 1", "msg\t1", "msg\x001", "msg\x7f", "msgé", "ﬁle"])
def test_webhook_id_must_be_printable_ascii_without_spaces(bad_id: str) -> None:
    err = rejected(Rejection.MISSING_SIGNATURE, headers(webhook_id=bad_id))
    assert "printable ASCII" in err.detail


@pytest.mark.parametrize("signature", ["v1a,abc", "v2,Zm9vYmFy v1a,Zm9v", "V1,abc", "v1", "v1;x"])
def test_no_v1_entry_is_missing_signature(signature: str) -> None:
    err = rejected(Rejection.MISSING_SIGNATURE, headers(signature=signature))
    assert "no v1 signature in webhook-signature" in err.detail


# -- timestamp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-TOLERANCE, -1, 0, 1, TOLERANCE])
def test_timestamp_within_tolerance_is_accepted(offset: int) -> None:
    assert check(headers(timestamp=NOW + offset)).timestamp == NOW + offset


@pytest.mark.parametrize(
    ("offset", "direction"),
    [
        (-(TOLERANCE + 1), "past"),
        (TOLERANCE + 1, "future"),
        (-86_400, "past"),
        (86_400 * 365, "future"),
        (-NOW, "past"),
    ],
)
def test_timestamp_outside_tolerance_is_rejected(offset: int, direction: str) -> None:
    err = rejected(Rejection.TIMESTAMP_OUT_OF_WINDOW, headers(timestamp=NOW + offset))
    assert f"{abs(offset)} seconds in the {direction}" in err.detail
    assert f"tolerance of {TOLERANCE} seconds" in err.detail
    assert "clock" in err.detail


def test_fractional_now_is_compared_exactly() -> None:
    assert check(headers(timestamp=NOW), now=NOW + TOLERANCE).timestamp == NOW
    err = rejected(Rejection.TIMESTAMP_OUT_OF_WINDOW, headers(timestamp=NOW), now=NOW + 300.25)
    assert "301 seconds in the past" in err.detail


@pytest.mark.parametrize(
    "raw",
    [
        "1.5",
        f"{NOW}.0",
        "-3",
        "+1700000000",
        "abc",
        " 12",
        f"{NOW} ",
        "1" * 40,
        "1" * 13,
        "1_700_000_000",
        "1e9",
        "１７００００００００",  # fullwidth digits: int() would accept them
        "١٧٠٠٠٠٠٠٠٠",  # Arabic-Indic digits
        "0x6553f100",
    ],
)
def test_non_integer_timestamp_is_rejected(raw: str) -> None:
    hdrs = headers()
    hdrs["webhook-timestamp"] = raw
    err = rejected(Rejection.TIMESTAMP_OUT_OF_WINDOW, hdrs)
    assert "Unix seconds" in err.detail


def test_timestamp_with_leading_zeros_is_signed_as_sent() -> None:
    # Digits only is all we ask; the signed string is the header exactly as received.
    raw = f"00{NOW}"
    msg = f"{MSG_ID}.{raw}.".encode() + BODY
    signature = "v1," + base64.b64encode(hmac.digest(secret_key(SECRET), msg, "sha256")).decode()
    hdrs = {"webhook-id": MSG_ID, "webhook-timestamp": raw, "webhook-signature": signature}
    assert check(hdrs).timestamp == NOW
    rejected(Rejection.INVALID_SIGNATURE, {**hdrs, "webhook-timestamp": str(NOW)})


def test_missing_signature_is_reported_before_a_bad_timestamp() -> None:
    rejected(Rejection.MISSING_SIGNATURE, headers(timestamp="abc", signature="v2,abc"))


def test_bad_timestamp_is_reported_before_a_bad_signature() -> None:
    rejected(Rejection.TIMESTAMP_OUT_OF_WINDOW, headers(timestamp=0, secret=OTHER_SECRET))


# -- several signatures -------------------------------------------------------------------------


WRONG = sign(OTHER_SECRET, MSG_ID, NOW, BODY)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_any_of_several_signatures_may_match(position: int) -> None:
    entries = [WRONG, flip_signature_byte(WRONG), WRONG]
    entries[position] = sign(SECRET, MSG_ID, NOW, BODY)
    assert check(headers(signature=" ".join(entries))).matched == "current"


def test_unknown_versions_are_ignored() -> None:
    good = sign(SECRET, MSG_ID, NOW, BODY)
    signature = f"v1a,xxx v2,xxx v1a,{good[3:]} {good} v3"
    assert check(headers(signature=signature)).matched == "current"
    # ... and only v1 entries are compared, even when they hold the right bytes.
    rejected(Rejection.INVALID_SIGNATURE, headers(signature=f"v1,{WRONG[3:]} v1a,{good[3:]}"))


@pytest.mark.parametrize(
    "entry",
    [
        "v1,",
        "v1,!!!!",
        "v1,abc",
        "v1,abc=",
        "v1," + "A" * 43,
        "v1," + "A" * 44,  # 33 bytes, unpadded: decodes, never matches
        "v1," + "*" * 43 + "=",
        "v1," + WRONG[3:-1] + "é",
        "v1," + WRONG[3:] + "==",
        "v1," + WRONG[3:].replace("+", "-").replace("/", "_"),
        "v1,\x00" * 3,
    ],
)
def test_malformed_signature_entries_do_not_crash(entry: str) -> None:
    rejected(Rejection.INVALID_SIGNATURE, headers(signature=entry))
    good = sign(SECRET, MSG_ID, NOW, BODY)
    assert check(headers(signature=f"{entry} {good}")).matched == "current"


def test_url_safe_alphabet_is_not_accepted() -> None:
    # Strict decoding: the spec's base64 is the standard alphabet.
    good = sign(SECRET, MSG_ID, NOW, BODY)
    url_safe = good.replace("+", "-").replace("/", "_")
    if url_safe != good:
        rejected(Rejection.INVALID_SIGNATURE, headers(signature=url_safe))


def test_only_the_first_entries_are_read() -> None:
    good = sign(SECRET, MSG_ID, NOW, BODY)
    filler = [WRONG] * (MAX_SIGNATURES - 1)
    assert check(headers(signature=" ".join([*filler, good]))).matched == "current"
    rejected(Rejection.INVALID_SIGNATURE, headers(signature=" ".join([*filler, WRONG, good])))
    err = rejected(
        Rejection.MISSING_SIGNATURE, headers(signature=" ".join(["v2,x"] * 10_000 + [good]))
    )
    assert f"first {MAX_SIGNATURES} entries" in err.detail


def test_huge_signature_header_is_cheap() -> None:
    hdrs = headers(signature=" ".join([WRONG] * 100_000))
    rejected(Rejection.INVALID_SIGNATURE, hdrs)


# -- key rotation -------------------------------------------------------------------------------


def rotation(previous_expires_at: float | None = NOW + 3600) -> list[CandidateKey]:
    return [
        key(SECRET, "current"),
        key(OTHER_SECRET, "previous", expires_at=previous_expires_at),
    ]


def test_rotation_current_key_matches() -> None:
    assert check(headers(), keys=rotation()).matched == "current"


def test_rotation_previous_key_matches_during_grace() -> None:
    assert check(headers(secret=OTHER_SECRET), keys=rotation()).matched == "previous"
    assert check(headers(secret=OTHER_SECRET), keys=rotation(NOW + 0.001)).matched == "previous"
    assert check(headers(secret=OTHER_SECRET), keys=rotation(None)).matched == "previous"


@pytest.mark.parametrize("expires_at", [NOW, NOW - 0.001, NOW - 86_400, 0])
def test_rotation_expired_previous_key_does_not_verify(expires_at: float) -> None:
    rejected(Rejection.INVALID_SIGNATURE, headers(secret=OTHER_SECRET), keys=rotation(expires_at))
    # The current key is unaffected.
    assert check(headers(), keys=rotation(expires_at)).matched == "current"


def test_rotation_order_does_not_matter_and_first_match_wins_the_label() -> None:
    keys = list(reversed(rotation()))
    assert check(headers(), keys=keys).matched == "current"
    assert check(headers(secret=OTHER_SECRET), keys=keys).matched == "previous"
    both = f"{sign(SECRET, MSG_ID, NOW, BODY)} {sign(OTHER_SECRET, MSG_ID, NOW, BODY)}"
    assert check(headers(signature=both), keys=rotation()).matched == "current"


def test_no_keys_means_nothing_verifies() -> None:
    rejected(Rejection.INVALID_SIGNATURE, headers(), keys=[])


def test_an_expired_current_key_does_not_verify() -> None:
    rejected(Rejection.INVALID_SIGNATURE, headers(), keys=[key(expires_at=NOW)])


# -- secrets ------------------------------------------------------------------------------------


def test_new_secret_format() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    for s in (a, b):
        assert s.startswith("whsec_")
        assert len(base64.b64decode(s.removeprefix("whsec_"), validate=True)) == 32
        assert secret_key(s) == base64.b64decode(s[6:])
        assert len(s) == 6 + 44


def test_new_secret_signs_and_verifies() -> None:
    s = new_secret()
    hdrs = headers(secret=s)
    assert check(hdrs, keys=[key(s)]).matched == "current"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "whsec_",
        "whsec_!!!",
        "whsec_AAA",  # unpadded
        "whsec_AA=A",
        "whsec_é9==",
        "whsec_ AAAA",
        "whsec_====",
        base64.b64encode(bytes(32)).decode(),  # no prefix
        "WHSEC_" + base64.b64encode(bytes(32)).decode(),
        "sk_" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_secret_key_rejects_malformed_secrets(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as info:
        secret_key(bad)
    body = bad.removeprefix("whsec_")
    if len(body) > 4:
        assert body not in str(info.value)


def test_sign_rejects_malformed_secret() -> None:
    with pytest.raises(ValueError, match="base64"):
        sign("whsec_!!!", MSG_ID, NOW, BODY)


def test_rejection_codes_are_stable() -> None:
    assert [r.value for r in Rejection] == [
        "missing_signature",
        "timestamp_out_of_window",
        "invalid_signature",
    ]
    assert Rejection.INVALID_SIGNATURE == "invalid_signature"


# -- properties ---------------------------------------------------------------------------------

ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)
timestamps = st.integers(min_value=0, max_value=10**12 - 1)
bodies = st.binary(max_size=4096)
raw_keys = st.binary(min_size=1, max_size=64)
skews = st.integers(min_value=-TOLERANCE, max_value=TOLERANCE)


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


@settings(max_examples=300, deadline=None)
@given(webhook_id=ids, ts=timestamps, body=bodies, raw_key=raw_keys, skew=skews)
def test_property_sign_then_verify(
    webhook_id: str, ts: int, body: bytes, raw_key: bytes, skew: int
) -> None:
    secret = whsec(raw_key)
    assert secret_key(secret) == raw_key
    hdrs = headers(webhook_id, ts, sign(secret, webhook_id, ts, body), body=body)
    result = verify(
        hdrs,
        body,
        [CandidateKey(raw_key, None, "current")],
        now=ts + skew,
        tolerance_seconds=TOLERANCE,
    )
    assert result == Verified(webhook_id, ts, "current")


@settings(max_examples=300, deadline=None)
@given(
    webhook_id=ids,
    ts=timestamps,
    body=bodies,
    raw_key=raw_keys,
    field=st.sampled_from(["id", "timestamp", "body"]),
    data=st.data(),
)
def test_property_no_single_byte_change_verifies(
    webhook_id: str, ts: int, body: bytes, raw_key: bytes, field: str, data: st.DataObject
) -> None:
    signature = sign(whsec(raw_key), webhook_id, ts, body)
    raw_ts = str(ts)
    if field == "body" and not body:
        body = b"\x00"  # Need a byte to change; the signature is over the old (empty) body.
    elif field == "body":
        pos = data.draw(st.integers(0, len(body) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != body[pos]), label="byte")
        body = body[:pos] + bytes([new]) + body[pos + 1 :]
    elif field == "id":
        pos = data.draw(st.integers(0, len(webhook_id) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != ord(webhook_id[pos])))
        webhook_id = webhook_id[:pos] + chr(new) + webhook_id[pos + 1 :]
    else:
        pos = data.draw(st.integers(0, len(raw_ts) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != ord(raw_ts[pos])))
        raw_ts = raw_ts[:pos] + chr(new) + raw_ts[pos + 1 :]
    hdrs = {"webhook-id": webhook_id, "webhook-timestamp": raw_ts, "webhook-signature": signature}
    # now == the original timestamp, so a changed digit can still be inside the window.
    with pytest.raises(VerificationError) as info:
        verify(
            hdrs,
            body,
            [CandidateKey(raw_key, None, "current")],
            now=ts,
            tolerance_seconds=TOLERANCE,
        )
    code = info.value.code
    if field == "body":
        assert code is Rejection.INVALID_SIGNATURE
    elif field == "id":
        assert code in (Rejection.MISSING_SIGNATURE, Rejection.INVALID_SIGNATURE)
    else:
        assert code in (Rejection.TIMESTAMP_OUT_OF_WINDOW, Rejection.INVALID_SIGNATURE)
