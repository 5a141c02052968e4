"""Named SQL blocks loaded once from ``sql/*.sql`` (``-- name: x`` starts a block)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    parts = _NAME.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"duplicate SQL block {name!r}")
        blocks[name] = body.strip()
    return blocks


@cache
def _all() -> dict[str, str]:
    merged: dict[str, str] = {}
    for entry in sorted(resources.files("maestro.db").joinpath("sql").iterdir(), key=str):
        if entry.name.endswith(".sql"):
            merged.update(parse_blocks(entry.read_text(encoding="utf-8")))
    return merged


def sql(name: str) -> str:
    """The SQL text of block ``name``."""
    return _all()[name]
