"""Typed ``actionConfig`` of the ``slack`` step type (string values are templates).

Shape checks that would refuse a template (a channel must look like ``C0123ABC`` or ``#name``,
a mention like an email address) are skipped while the value still holds template markers; the
handler validates the rendered config with the same model, when no markers remain.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from maestro.model.connections import NAME_PATTERN

_TEMPLATE_MARKERS = ("{{", "{%", "{#")
# A conversation id (C… public, G… private, D… direct message)
# or a channel name with its leading "#".
CHANNEL_ID_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
CHANNEL_NAME_RE = re.compile(r"^#[^\s#,<>@]{1,80}$")
_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50


def _templated(value: str) -> bool:
    return any(marker in value for marker in _TEMPLATE_MARKERS)


class _StepConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SlackFile(_StepConfig):
    """A file for ``uploadFile``: its text ``content`` or its bytes as ``contentBase64``."""

    filename: str = Field(min_length=1, max_length=255)
    content: str | None = Field(default=None, description="The file's text (sent as UTF-8).")
    content_base64: str | None = Field(default=None, description="The file's bytes, base64.")
    title: str | None = Field(default=None, max_length=255, description="Default: filename.")

    @model_validator(mode="after")
    def _one_content(self) -> Self:
        if (self.content is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of content and contentBase64")
        if self.content_base64 is not None and not _templated(self.content_base64):
            try:
                base64.b64decode(self.content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("contentBase64 is not valid base64") from None
        return self

    def data(self) -> bytes:
        """The file's bytes."""
        if self.content_base64 is not None:
            return base64.b64decode(self.content_base64, validate=True)
        return (self.content or "").encode("utf-8")


class SlackStepConfig(_StepConfig):
    """Post a message to a Slack channel, or upload a file to it, through a ``slack``
    connection (``botToken``, ``baseUrl``)."""

    connection: str = Field(pattern=NAME_PATTERN, description="A `slack` connection.")
    operation: Literal["postMessage", "uploadFile"] = "postMessage"
    channel: str = Field(
        min_length=1,
        description="A conversation id (C0123ABC) or a channel name with its '#' (#ops).",
    )
    text: str | None = Field(
        default=None,
        max_length=MAX_TEXT_CHARS,
        description="Message text (mrkdwn); with uploadFile, the comment posted with the file.",
    )
    blocks: list[dict[str, Any]] | None = Field(
        default=None, max_length=MAX_BLOCKS, description="Block Kit blocks (postMessage)."
    )
    thread_ts: str | None = Field(default=None, description="Reply in this thread.")
    mentions: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Emails of users to mention (<@U…>) at the start of the text.",
    )
    file: SlackFile | None = Field(default=None, description="The file, for uploadFile.")

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        value = value.strip()
        if _templated(value) or CHANNEL_ID_RE.match(value) or CHANNEL_NAME_RE.match(value):
            return value
        raise ValueError("channel must be a conversation id such as C0123ABC, or '#name'")

    @field_validator("thread_ts")
    @classmethod
    def _thread_ts(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None  # a template that rendered empty: not a reply
        if _templated(value) or re.fullmatch(r"\d+\.\d+", value):
            return value
        raise ValueError("threadTs must be a message ts such as 1712345678.123456")

    @field_validator("mentions")
    @classmethod
    def _mentions(cls, value: list[str]) -> list[str]:
        cleaned = [email.strip() for email in value]
        for email in cleaned:
            if not (_templated(email) or _EMAIL_RE.match(email)):
                raise ValueError(f"mentions must be email addresses; {email!r} is not one")
        return cleaned

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is not None and not all(isinstance(b.get("type"), str) for b in value):
            raise ValueError("every block needs a 'type' (a Block Kit block object)")
        return value

    @model_validator(mode="after")
    def _by_operation(self) -> Self:
        if self.operation == "postMessage":
            if self.file is not None:
                raise ValueError("file is only for operation uploadFile")
            if not self.text and not self.blocks and not self.mentions:
                raise ValueError("postMessage needs text or blocks")
        else:
            if self.file is None:
                raise ValueError("uploadFile needs file {filename, content | contentBase64}")
            if self.blocks is not None:
                raise ValueError("blocks are only for postMessage; uploadFile takes text")
        return self
