"""Webhook signing secrets at rest: AES-256-GCM under a key from settings.

A ciphertext is ``version (1 byte) || nonce (12 bytes) || ciphertext+tag`` and is bound to
its row and slot through the associated data, so a ciphertext copied to another webhook (or
from the previous slot to the current one) does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_NONCE_BYTES = 12
KEY_BYTES = 32


class SecretBoxError(Exception):
    """A ciphertext that does not decrypt under the configured key (wrong key, or tampered)."""


def new_encryption_key() -> str:
    """A fresh key in the format MAESTRO_WEBHOOK_ENCRYPTION_KEY takes (base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_encryption_key(value: str) -> bytes:
    """Decode a base64 key of 32 bytes; ValueError saying how to make one otherwise."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(
            "MAESTRO_WEBHOOK_ENCRYPTION_KEY must be the base64 of 32 random bytes; "
            "make one with: openssl rand -base64 32"
        )
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the webhook encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    @staticmethod
    def _context(tenant: str, webhook_id: uuid.UUID, slot: str) -> bytes:
        return f"maestro-webhook-secret\n{tenant}\n{webhook_id}\n{slot}".encode()

    def seal(self, secret: str, tenant: str, webhook_id: uuid.UUID, slot: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), self._context(tenant, webhook_id, slot))
        return _VERSION + nonce + sealed

    def open(self, blob: bytes, tenant: str, webhook_id: uuid.UUID, slot: str) -> str:
        if blob[:1] != _VERSION or len(blob) < 1 + _NONCE_BYTES + 16:
            raise SecretBoxError("unknown ciphertext format")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, self._context(tenant, webhook_id, slot))
        except InvalidTag:
            raise SecretBoxError(
                "a webhook secret does not decrypt: MAESTRO_WEBHOOK_ENCRYPTION_KEY is not the "
                "key it was stored with, or the row was altered"
            ) from None
        return plain.decode()
