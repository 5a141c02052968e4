"""Typed ``actionConfig`` of the ``email`` step (string values are templates).

Checks that can only fail on rendered values (an address, base64 content) are skipped while a
value still holds a template marker (``{{``, ``{%``, ``{#``): the worker validates the rendered
config with this same model, so they run then.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from maestro.model.connections import NAME_PATTERN

_TEMPLATE_MARKERS = ("{{", "{%", "{#")
MAX_RECIPIENTS = 1000
MAX_ATTACHMENTS = 50


def _templated(value: str) -> bool:
    return any(marker in value for marker in _TEMPLATE_MARKERS)


def check_address(value: str) -> str:
    """``value`` if it is one mailbox (``a@example.com`` or ``Name <a@example.com>``)."""
    if "\r" in value or "\n" in value:
        raise ValueError("an address cannot contain a line break")
    if _templated(value):
        return value
    parsed = getaddresses([value])
    if len(parsed) != 1:
        raise ValueError(f"{value!r} is not one email address")
    _, address = parsed[0]
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address):
        raise ValueError(f"{value!r} is not an email address (expected name@domain)")
    return value


def split_addresses(value: Any) -> Any:
    """One string may hold several comma-separated addresses; a list holds one per entry."""
    if isinstance(value, str):
        if _templated(value):
            return [value]
        return [
            f"{name} <{address}>" if name else address
            for name, address in getaddresses([value])
            if address
        ] or [value]
    return value


def decode_base64(value: str) -> bytes:
    """Strict base64 (standard alphabet, padding required; whitespace ignored)."""
    compact = "".join(value.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("contentBase64 is not valid base64") from None


class _StepConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class EmailAttachment(_StepConfig):
    filename: str = Field(min_length=1, max_length=255)
    content_base64: str = Field(description="The file's bytes, base64-encoded.")
    content_type: str = Field(default="application/octet-stream", pattern=r"^[^/\s]+/[^/\s]+$")

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        if any(c in value for c in '\r\n"\\/'):
            raise ValueError("filename cannot contain line breaks, quotes or slashes")
        return value

    @field_validator("content_base64")
    @classmethod
    def _base64(cls, value: str) -> str:
        if not _templated(value):
            decode_base64(value)
        return value


class EmailStepConfig(_StepConfig):
    """One email through an ``smtp``, ``sendgrid`` or ``postmark`` connection."""

    connection: str = Field(pattern=NAME_PATTERN)
    to: list[str] = Field(
        min_length=1, description="Recipients: a list, or one string (comma-separated)."
    )
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str = Field(min_length=1, max_length=998)
    text: str | None = Field(default=None, description="Plain-text body.")
    html: str | None = Field(default=None, description="HTML body.")
    from_: str | None = Field(
        default=None,
        alias="from",
        description="Sender; default the connection's. Must be in its allowedSenders when set.",
    )
    reply_to: str | None = None
    attachments: list[EmailAttachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @field_validator("to", "cc", "bcc", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_addresses(value)

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} addresses")
        return [check_address(item) for item in value]

    @field_validator("from_", "reply_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("subject cannot contain a line break")
        return value

    @model_validator(mode="after")
    def _body(self) -> Self:
        if self.text is None and self.html is None:
            raise ValueError("give text, html or both")
        return self


def bare_address(value: str) -> str:
    """``a@example.com`` from ``Name <a@example.com>`` (or from ``a@example.com``)."""
    parsed = getaddresses([value])
    return parsed[0][1] if parsed and parsed[0][1] else value.strip()


def display_name(value: str) -> str:
    parsed = getaddresses([value])
    return parsed[0][0] if parsed else ""


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str


@dataclass(frozen=True)
class OutgoingEmail:
    """The email a step sends: rendered, checked, sender chosen, attachments decoded."""

    sender: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None
    attachments: tuple[Attachment, ...]
    idempotency_key: str

    @property
    def envelope_sender(self) -> str:
        return bare_address(self.sender)

    @property
    def recipients(self) -> list[str]:
        """Every recipient's bare address (To, Cc, Bcc), each once, in order."""
        seen: dict[str, None] = {}
        for item in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(bare_address(item), None)
        return list(seen)
