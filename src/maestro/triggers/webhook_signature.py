"""Standard Webhooks 1.0 signatures: secrets, signing and verification (pure, no I/O).

A delivery carries three headers: ``webhook-id`` (the message id, which we also use as the
replay nonce), ``webhook-timestamp`` (integer Unix seconds) and ``webhook-signature`` (one or
more space-separated ``v1,<base64 HMAC-SHA256>`` entries). The signed content is
``f"{webhook_id}.{webhook_timestamp}.".encode() + raw_body``, keyed with the base64-decoded part
of a ``whsec_`` secret.

:func:`verify` checks the headers against the endpoint's candidate keys (the current secret
and, during a rotation's grace period, the previous one) and returns :class:`Verified` or
raises :class:`VerificationError` with a stable :class:`Rejection` code and a detail for the
client that never contains key material.
"""

from __future__ import annotations

import base64
import hmac
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_SIGNATURES",
    "SECRET_PREFIX",
    "CandidateKey",
    "Rejection",
    "VerificationError",
    "Verified",
    "new_secret",
    "secret_key",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 -- a format prefix, not a secret
# Only this many entries of webhook-signature are read, so a huge header cannot make us
# decode and compare without bound.
MAX_SIGNATURES = 10
MAX_ID_LENGTH = 255
# 12 digits is far beyond any real Unix time and keeps int() and the window check trivial.
MAX_TIMESTAMP_DIGITS = 12
# base64 of a 32-byte SHA-256 digest, padded; any other length cannot match.
_V1_B64_LENGTH = 44

_ID = "webhook-id"
_TIMESTAMP = "webhook-timestamp"
_SIGNATURE = "webhook-signature"


class Rejection(StrEnum):
    """Stable problem codes for a rejected delivery."""

    MISSING_SIGNATURE = "missing_signature"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    INVALID_SIGNATURE = "invalid_signature"


class VerificationError(Exception):
    """A delivery failed verification; ``detail`` is safe to show to the sender."""

    code: Rejection
    detail: str

    def __init__(self, code: Rejection, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CandidateKey:
    """A decoded HMAC key an endpoint accepts; it stops verifying once ``now >= expires_at``."""

    key: bytes
    expires_at: float | None
    label: str


@dataclass(frozen=True, slots=True)
class Verified:
    """A delivery whose signature matched ``matched`` (a :class:`CandidateKey` label)."""

    webhook_id: str
    timestamp: int
    matched: str


def new_secret() -> str:
    """A fresh ``whsec_`` secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; ValueError (without the secret) if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    if not encoded:
        raise ValueError(f"webhook secret has no key after {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error (bad characters or padding), or non-ASCII text
        raise ValueError(
            f"webhook secret after {SECRET_PREFIX!r} is not valid base64 "
            "(standard alphabet, with padding)"
        ) from None
    if not key:
        raise ValueError(f"webhook secret has no key after {SECRET_PREFIX!r}")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature entry for one delivery."""
    msg = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(secret_key(secret), msg, "sha256")).decode("ascii")


def verify(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[CandidateKey],
    *,
    now: float,
    tolerance_seconds: int,
) -> Verified:
    """Check a delivery's Standard Webhooks headers; raises :class:`VerificationError`.

    ``headers`` maps lower-cased names to values; ``body`` is the raw body as received.
    """
    webhook_id = headers.get(_ID)
    raw_timestamp = headers.get(_TIMESTAMP)
    signature_header = headers.get(_SIGNATURE)

    # 1. Headers present and well-formed.
    if not (webhook_id and raw_timestamp and signature_header):
        missing = [
            name
            for name, value in (
                (_ID, webhook_id),
                (_TIMESTAMP, raw_timestamp),
                (_SIGNATURE, signature_header),
            )
            if not value
        ]
        raise VerificationError(
            Rejection.MISSING_SIGNATURE,
            f"missing or empty header(s): {', '.join(missing)}; every delivery needs "
            f"{_ID}, {_TIMESTAMP} and {_SIGNATURE} (Standard Webhooks)",
        )
    if len(webhook_id) > MAX_ID_LENGTH:
        raise VerificationError(
            Rejection.MISSING_SIGNATURE,
            f"{_ID} is longer than {MAX_ID_LENGTH} characters; use a shorter unique message id",
        )
    # isprintable() alone admits the space and non-ASCII letters.
    if not (webhook_id.isascii() and webhook_id.isprintable()) or " " in webhook_id:
        raise VerificationError(
            Rejection.MISSING_SIGNATURE,
            f"{_ID} must contain only printable ASCII characters without spaces",
        )
    signatures: list[bytes] = []
    has_v1 = False
    for entry in signature_header.split(" ", MAX_SIGNATURES)[:MAX_SIGNATURES]:
        # Other versions (v1a, v2, ...) are for other schemes: skip them, do not fail.
        if not entry.startswith("v1,"):
            continue
        has_v1 = True
        encoded = entry[3:]
        if len(encoded) != _V1_B64_LENGTH:
            continue
        try:
            signatures.append(base64.b64decode(encoded, validate=True))
        except ValueError:  # binascii.Error, or non-ASCII text
            continue  # An undecodable entry just doesn't match.
    if not has_v1:
        raise VerificationError(
            Rejection.MISSING_SIGNATURE,
            f"no v1 signature in {_SIGNATURE}; send space-separated entries "
            "'v1,<base64 of HMAC-SHA256>'"
            + (
                f" (only the first {MAX_SIGNATURES} entries are read)"
                if signature_header.count(" ") >= MAX_SIGNATURES
                else ""
            ),
        )

    # 2. Timestamp: Unix seconds, within the tolerance on both sides of now.
    # isascii() because isdigit() also admits digits of other scripts, which int() would parse.
    if not (
        raw_timestamp.isascii()
        and raw_timestamp.isdigit()
        and len(raw_timestamp) <= MAX_TIMESTAMP_DIGITS
    ):
        raise VerificationError(
            Rejection.TIMESTAMP_OUT_OF_WINDOW,
            f"{_TIMESTAMP} must be the send time in Unix seconds: a plain integer of at most "
            f"{MAX_TIMESTAMP_DIGITS} digits",
        )
    timestamp = int(raw_timestamp)
    skew = now - timestamp
    if abs(skew) > tolerance_seconds:
        direction = "in the past" if skew > 0 else "in the future"
        raise VerificationError(
            Rejection.TIMESTAMP_OUT_OF_WINDOW,
            f"{_TIMESTAMP} is {math.ceil(abs(skew))} seconds {direction}, beyond the tolerance "
            f"of {tolerance_seconds} seconds; check the sender's clock (NTP) and sign each "
            "delivery with the current time",
        )

    # 3. Signature: every live key against every decoded v1 entry, without stopping at the
    # first match, so timing reveals little about which key or entry matched.
    msg = f"{webhook_id}.{raw_timestamp}.".encode() + body
    matched: str | None = None
    for candidate in keys:
        if candidate.expires_at is not None and now >= candidate.expires_at:
            continue
        expected = hmac.digest(candidate.key, msg, "sha256")
        for signature in signatures:
            if hmac.compare_digest(expected, signature) and matched is None:
                matched = candidate.label
    if matched is None:
        raise VerificationError(
            Rejection.INVALID_SIGNATURE,
            "no signature matches this endpoint's secret; sign '{id}.{timestamp}.{body}' with "
            "HMAC-SHA256 using the base64-decoded part of the whsec_ secret",
        )
    return Verified(webhook_id=webhook_id, timestamp=timestamp, matched=matched)
