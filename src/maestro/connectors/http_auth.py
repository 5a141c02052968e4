"""HTTP auth strategies (bearer, apiKey, basic, hmac), shared by the ``http`` and ``ml``
connectors: secrets resolved right before the call, and everything needed to keep them out
of what users see (the values and their encodings, the headers that carry them)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from maestro.connectors.base import ConnectorResources
from maestro.model.connections import ApiKeyAuth, BasicAuth, BearerAuth, HmacAuth, HttpAuth
from maestro.secrets import scrub


def sign_hmac(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    """Hex HMAC-SHA256 over ``"{timestamp}.{method}.{path}.{body}"``."""
    message = f"{timestamp}.{method}.{path}.{body.decode('utf-8', errors='replace')}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def secret_variants(values: Iterable[str]) -> set[str]:
    """Secret values plus the encodings a server could echo them in."""
    found: set[str] = set()
    for value in values:
        if not value:
            continue
        found.add(value)
        found.add(quote(value, safe=""))
        found.add(quote(value, safe="").replace("%20", "+"))
    return found


def collect_secrets(original: Any, resolved: Any, into: list[str]) -> None:
    """Resolved values wherever ``original`` held a ``{"secretRef": ...}``."""
    if isinstance(original, Mapping):
        if set(original) == {"secretRef"}:
            into.append(str(resolved))
            return
        if isinstance(resolved, Mapping):
            for key, inner in original.items():
                collect_secrets(inner, resolved.get(key), into)
    elif isinstance(original, list) and isinstance(resolved, list):
        for inner, resolved_inner in zip(original, resolved, strict=False):
            collect_secrets(inner, resolved_inner, into)


@dataclass
class ResolvedAuth:
    headers: dict[str, str] = field(default_factory=dict)
    params: list[tuple[str, str]] = field(default_factory=list)
    # Lower-case names of headers that carry a secret (never shown in outputs).
    hidden_headers: set[str] = field(default_factory=set)
    hmac: tuple[HmacAuth, str] | None = None
    secrets: set[str] = field(default_factory=set)

    def clean(self, text: str) -> str:
        return scrub(text, self.secrets)

    def sign(self, request: httpx.Request, body: bytes, unix_time: float) -> None:
        """Add the hmac headers over exactly what is sent (path with its query, body)."""
        if self.hmac is None:
            return
        config, secret = self.hmac
        timestamp = str(int(unix_time))
        path = request.url.raw_path.decode("ascii")
        request.headers[config.timestamp_header] = timestamp
        request.headers[config.header] = sign_hmac(secret, timestamp, request.method, path, body)


async def resolve_auth(resources: ConnectorResources, auth: HttpAuth | None) -> ResolvedAuth:
    """The headers and query parameters of ``auth``, its secrets resolved now."""
    result = ResolvedAuth()
    if auth is None:
        return result
    original = auth.model_dump(by_alias=True, mode="json")
    resolved = await resources.resolve(original)
    secrets: list[str] = []
    collect_secrets(original, resolved, secrets)
    if isinstance(auth, BearerAuth):
        result.headers["Authorization"] = f"Bearer {resolved['token']}"
    elif isinstance(auth, ApiKeyAuth):
        if auth.in_ == "header":
            result.headers[auth.name] = str(resolved["value"])
            result.hidden_headers.add(auth.name.lower())
        else:
            result.params.append((auth.name, str(resolved["value"])))
    elif isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{resolved['password']}".encode()
        basic = base64.b64encode(pair).decode("ascii")
        result.headers["Authorization"] = f"Basic {basic}"
        secrets.append(basic)
    else:
        result.hmac = (auth, str(resolved["secret"]))
        result.hidden_headers.add(auth.header.lower())
    result.secrets = secret_variants(secrets)
    return result


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the (decoded) body and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False
