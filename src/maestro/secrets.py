"""Secret references: ``{"secretRef": "env://NAME" | "file:///abs/path" | "vault://mount/path#key"}``.

Workflows and connections hold references only. Values are resolved at run time, cached
for a short TTL, and never stored, logged or put in an error message; ``scrub`` and
``scrub_json`` remove them from anything shown to users.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "SecretError",
    "SecretRef",
    "SecretResolver",
    "VaultConfig",
    "is_secret_ref",
    "scrub",
    "scrub_json",
]

log = structlog.get_logger("maestro.secrets")

Scheme = Literal["env", "file", "vault"]

ACCEPTED_FORMS = 'accepted forms: "env://NAME", "file:///absolute/path" or "vault://mount/path#key"'
MASK = "***"
MIN_SCRUB_LENGTH = 4

_ENV_RE = re.compile(r"env://(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_VAULT_RE = re.compile(r"vault://(?P<mount>[^/#]+)/(?P<path>[^#]+)#(?P<key>[^#]+)")


class SecretError(Exception):
    """A reference could not be resolved. The message names the reference, never the value."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"SecretError(code={self.code!r}, retryable={self.retryable}, {self.message!r})"


def _reference_problem(ref: str) -> str | None:
    """Why ``ref`` is not a valid reference, or None when it is."""
    if ref.startswith("env://"):
        if _ENV_RE.fullmatch(ref):
            return None
        return (
            f"{ref!r} is not a valid env reference: use env://NAME where NAME is an "
            "environment variable name (letters, digits and _, not starting with a digit)"
        )
    if ref.startswith("file://"):
        if ref.startswith("file:///") and len(ref) > len("file:///"):
            return None
        return (
            f"{ref!r} is not a valid file reference: use an absolute path with three "
            "slashes, e.g. file:///run/secrets/token"
        )
    if ref.startswith("vault://"):
        match = _VAULT_RE.fullmatch(ref)
        if match is None:
            return (
                f"{ref!r} is not a valid vault reference: use vault://mount/path#key, "
                "e.g. vault://secret/slack#token (KV v2 mount, secret path, key)"
            )
        segments = match["path"].split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            return (
                f"{ref!r} has an empty, '.' or '..' segment in its vault path: use "
                "vault://mount/path#key with a plain path such as team/app"
            )
        return None
    # Not echoed: a value with no known scheme may be the secret itself, pasted by mistake.
    return f"the value is not a secret reference; {ACCEPTED_FORMS}"


class SecretRef(BaseModel):
    """A reference to a secret held outside Maestro."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    secret_ref: str = Field(
        alias="secretRef",
        description=(
            "Where the secret lives: env://NAME, file:///absolute/path or vault://mount/path#key"
        ),
        examples=["env://ORDERS_TOKEN", "file:///run/secrets/token", "vault://secret/slack#token"],
    )

    @field_validator("secret_ref")
    @classmethod
    def _check_form(cls, value: str) -> str:
        problem = _reference_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def scheme(self) -> Scheme:
        if self.secret_ref.startswith("env://"):
            return "env"
        if self.secret_ref.startswith("file://"):
            return "file"
        return "vault"


def is_secret_ref(value: object) -> bool:
    """True for a mapping that is exactly ``{"secretRef": <str>}``."""
    return (
        isinstance(value, Mapping) and len(value) == 1 and isinstance(value.get("secretRef"), str)
    )


@dataclass(frozen=True)
class VaultConfig:
    """How to reach HashiCorp Vault. Use ``token``, or ``kubernetes_role`` to log in with
    the pod's service-account token."""

    addr: str
    token: str | None = None
    kubernetes_role: str | None = None
    kubernetes_token_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105
    kubernetes_mount: str = "kubernetes"
    namespace: str | None = None

    def __repr__(self) -> str:
        token = "None" if self.token is None else "'***'"
        return (
            f"VaultConfig(addr={self.addr!r}, token={token}, "
            f"kubernetes_role={self.kubernetes_role!r}, namespace={self.namespace!r})"
        )


def _to_ref(ref: str | SecretRef | Mapping[str, Any]) -> SecretRef:
    if isinstance(ref, SecretRef):
        return ref
    try:
        return SecretRef.model_validate({"secretRef": ref} if isinstance(ref, str) else dict(ref))
    except ValidationError as exc:
        raise SecretError("invalid_secret_ref", _validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        if error["type"] == "value_error":
            problems.append(str(error["msg"]).removeprefix("Value error, "))
        else:
            where = ".".join(str(part) for part in error["loc"]) or "reference"
            problems.append(f"{where}: {error['msg']}")
    if all(error["type"] != "value_error" for error in exc.errors()):
        problems.append('write a reference as {"secretRef": "..."}; ' + ACCEPTED_FORMS)
    return "; ".join(problems)


def _strip_one_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _vault_errors(response: httpx.Response) -> str:
    """Vault's ``{"errors": [...]}`` as one short line (they name paths, never values)."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(errors, list) or not errors:
        return ""
    return ": " + "; ".join(str(error) for error in errors)[:300]


# Re-login this long before a Vault token's lease ends, so a read never races the expiry.
_LEASE_MARGIN_SECONDS = 30.0


class SecretResolver:
    """Resolves references with a short per-reference cache; one instance per process."""

    def __init__(
        self,
        vault: VaultConfig | None = None,
        *,
        ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._vault = vault
        self._ttl = ttl_seconds
        self._clock = clock
        self._transport = transport
        self._timeout = timeout_seconds
        self._client: httpx.AsyncClient | None = None
        self._cache: dict[str, tuple[str, float]] = {}
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._login_token: str | None = None
        self._login_expires = 0.0
        self._login_lock = asyncio.Lock()

    def __repr__(self) -> str:
        addr = None if self._vault is None else self._vault.addr
        return f"SecretResolver(vault={addr!r}, ttl_seconds={self._ttl})"

    async def resolve(self, ref: str | SecretRef | Mapping[str, Any]) -> str:
        """The value behind ``ref``; raises SecretError."""
        parsed = _to_ref(ref)
        key = parsed.secret_ref
        cached = self._cache.get(key)
        if cached is not None:
            if self._clock() < cached[1]:
                return cached[0]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch_and_cache(parsed))
            self._inflight[key] = task
            task.add_done_callback(self._forget_inflight(key))
        # Shielded so that one cancelled caller does not fail the others sharing the fetch.
        return await asyncio.shield(task)

    def _forget_inflight(self, key: str) -> Callable[[asyncio.Task[str]], None]:
        def done(task: asyncio.Task[str]) -> None:
            self._inflight.pop(key, None)
            if not task.cancelled():
                task.exception()  # retrieved here even when every caller was cancelled

        return done

    async def resolve_all(self, value: Any) -> Any:
        """A deep copy of ``value`` with every ``{"secretRef": ...}`` replaced by its value."""
        refs: dict[str, SecretRef] = {}
        _collect_refs(value, refs)
        keys = list(refs)
        values = await asyncio.gather(*(self.resolve(refs[key]) for key in keys))
        return _replace_refs(value, dict(zip(keys, values, strict=True)))

    def known_values(self) -> frozenset[str]:
        """Every value resolved and still cached: what ``scrub`` must hide."""
        now = self._clock()
        return frozenset(value for value, expires in self._cache.values() if now < expires)

    async def aclose(self) -> None:
        self._cache.clear()
        self._login_token = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _fetch_and_cache(self, ref: SecretRef) -> str:
        if ref.scheme == "env":
            value = self._read_env(ref)
        elif ref.scheme == "file":
            value = await self._read_file(ref)
        else:
            value = await self._read_vault(ref)
        log.debug("secret_resolved", ref=ref.secret_ref, scheme=ref.scheme)
        if self._ttl > 0:
            self._cache[ref.secret_ref] = (value, self._clock() + self._ttl)
        return value

    @staticmethod
    def _read_env(ref: SecretRef) -> str:
        name = ref.secret_ref.removeprefix("env://")
        value = os.environ.get(name)
        if value is None:
            raise SecretError(
                "secret_not_found",
                f"{ref.secret_ref} is not set in the worker's environment: set {name} "
                "for the worker process, or use another reference",
            )
        return value

    @staticmethod
    async def _read_file(ref: SecretRef) -> str:
        path = ref.secret_ref.removeprefix("file://")
        try:
            text = await asyncio.to_thread(_read_text, path)
        except UnicodeDecodeError:
            # from None: the decode error holds the file's bytes.
            raise SecretError(
                "secret_unreadable",
                f"{ref.secret_ref}: {path} is not UTF-8 text; store the secret as text",
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SecretError(
                "secret_unreadable",
                f"{ref.secret_ref}: cannot read {path} ({reason}); check that the file "
                "exists and is readable by the worker's user",
            ) from None
        return _strip_one_newline(text)

    # --- Vault ---------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, timeout=self._timeout)
        return self._client

    def _headers(self, vault: VaultConfig, token: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["X-Vault-Token"] = token
        if vault.namespace:
            headers["X-Vault-Namespace"] = vault.namespace
        return headers

    async def _read_vault(self, ref: SecretRef) -> str:
        vault = self._vault
        if vault is None:
            raise SecretError(
                "invalid_secret_ref",
                f"{ref.secret_ref}: vault:// references need a Vault server; set "
                "MAESTRO_VAULT_ADDR (and a token or Kubernetes role) for the worker",
            )
        match = _VAULT_RE.fullmatch(ref.secret_ref)
        assert match is not None  # SecretRef validated the form
        mount, path, key = match["mount"], match["path"], match["key"]
        url = f"{vault.addr.rstrip('/')}/v1/{quote(mount, safe='')}/data/{quote(path, safe='/')}"
        relogged = False
        while True:
            token = await self._vault_token(vault, ref)
            response = await self._vault_call(ref, "GET", url, self._headers(vault, token))
            if response.status_code == 403 and vault.token is None and not relogged:
                # The login token may have been revoked or expired early: log in once more.
                relogged = True
                if self._login_token == token:  # unless a concurrent read already re-logged in
                    self._login_token = None
                continue
            break
        status = response.status_code
        if status == 200:
            return self._vault_value(ref, response, mount, path, key)
        if status == 404:
            raise SecretError(
                "secret_not_found",
                f"{ref.secret_ref}: Vault has no secret at path {path!r} in KV v2 mount "
                f"{mount!r}; write it (vault kv put -mount={mount} {path} {key}=...) or fix "
                "the reference",
            )
        if status == 403:
            raise SecretError(
                "secret_backend_denied",
                f"{ref.secret_ref}: Vault denied the read{_vault_errors(response)}; grant the "
                f"worker's token 'read' on {mount}/data/{path}",
            )
        raise self._unexpected(ref, "read", response)

    def _vault_value(
        self, ref: SecretRef, response: httpx.Response, mount: str, path: str, key: str
    ) -> str:
        try:
            body = response.json()
        except ValueError:
            raise SecretError(
                "secret_backend_unavailable",
                f"{ref.secret_ref}: Vault answered with something that is not JSON; check "
                "that MAESTRO_VAULT_ADDR points at Vault",
                retryable=True,
            ) from None
        outer = body.get("data") if isinstance(body, dict) else None
        data = outer.get("data") if isinstance(outer, dict) else None
        if not isinstance(data, dict):
            raise SecretError(
                "secret_not_found",
                f"{ref.secret_ref}: {mount}/{path} holds no KV v2 data (deleted, or not a KV "
                "v2 mount); check the mount and path",
            )
        if key not in data:
            present = ", ".join(sorted(str(name) for name in data)) or "none"
            raise SecretError(
                "secret_not_found",
                f"{ref.secret_ref}: Vault path {mount}/{path} has no key {key!r} (keys: "
                f"{present}); fix the key after '#'",
            )
        value = data[key]
        return value if isinstance(value, str) else json.dumps(value)

    async def _vault_token(self, vault: VaultConfig, ref: SecretRef) -> str:
        if vault.token is not None:
            return vault.token
        if vault.kubernetes_role is None:
            raise SecretError(
                "invalid_secret_ref",
                f"{ref.secret_ref}: Vault is configured without credentials; set a Vault "
                "token or a Kubernetes auth role for the worker",
            )
        async with self._login_lock:
            if self._login_token is None or self._clock() >= self._login_expires:
                await self._kubernetes_login(vault, vault.kubernetes_role, ref)
            assert self._login_token is not None
            return self._login_token

    async def _kubernetes_login(self, vault: VaultConfig, role: str, ref: SecretRef) -> None:
        try:
            jwt = (await asyncio.to_thread(_read_text, vault.kubernetes_token_path)).strip()
        except (OSError, UnicodeDecodeError):
            raise SecretError(
                "secret_backend_denied",
                f"{ref.secret_ref}: cannot read the Kubernetes service-account token at "
                f"{vault.kubernetes_token_path}; mount it in the pod or configure a Vault token",
            ) from None
        url = f"{vault.addr.rstrip('/')}/v1/auth/{quote(vault.kubernetes_mount, safe='')}/login"
        response = await self._vault_call(
            ref, "POST", url, self._headers(vault, None), {"role": role, "jwt": jwt}
        )
        if response.status_code in (400, 401, 403):
            raise SecretError(
                "secret_backend_denied",
                f"{ref.secret_ref}: Vault refused the Kubernetes login for role {role!r}"
                f"{_vault_errors(response)}; check the role and that it binds this service "
                "account",
            )
        if response.status_code != 200:
            raise self._unexpected(ref, "Kubernetes login", response)
        try:
            auth = response.json()["auth"]
            token = str(auth["client_token"])
            lease = float(auth.get("lease_duration") or 0)
        except (ValueError, KeyError, TypeError):
            raise SecretError(
                "secret_backend_unavailable",
                f"{ref.secret_ref}: Vault's Kubernetes login answer has no auth.client_token",
                retryable=True,
            ) from None
        now = self._clock()
        self._login_token = token
        # lease_duration 0 means the token does not expire.
        self._login_expires = (
            now + max(lease - min(_LEASE_MARGIN_SECONDS, lease / 10), 0.0)
            if lease > 0
            else float("inf")
        )
        log.info("vault_login", role=role, lease_seconds=lease)

    async def _vault_call(
        self,
        ref: SecretRef,
        method: str,
        url: str,
        headers: dict[str, str],
        body: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return await self._http().request(method, url, headers=headers, json=body)
        except httpx.TimeoutException:
            raise SecretError(
                "secret_backend_unavailable",
                f"{ref.secret_ref}: Vault did not answer within {self._timeout:g}s",
                retryable=True,
            ) from None
        except httpx.HTTPError as exc:
            raise SecretError(
                "secret_backend_unavailable",
                f"{ref.secret_ref}: cannot reach Vault at {self._vault_addr()} "
                f"({type(exc).__name__}); check MAESTRO_VAULT_ADDR and the network",
                retryable=True,
            ) from None

    def _vault_addr(self) -> str:
        return "" if self._vault is None else self._vault.addr

    @staticmethod
    def _unexpected(ref: SecretRef, action: str, response: httpx.Response) -> SecretError:
        status = response.status_code
        retryable = status == 429 or status >= 500
        if status == 429:
            hint = "Vault is rate limiting; the step will retry"
        elif status >= 500:
            hint = "Vault is unavailable or sealed; the step will retry"
        else:
            hint = "check the Vault address and mount"
        return SecretError(
            "secret_backend_unavailable",
            f"{ref.secret_ref}: Vault {action} failed with HTTP {status}"
            f"{_vault_errors(response)}; {hint}",
            retryable=retryable,
        )


def _collect_refs(value: Any, refs: dict[str, SecretRef]) -> None:
    if is_secret_ref(value):
        ref = _to_ref(value)
        refs[ref.secret_ref] = ref
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_refs(item, refs)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_refs(item, refs)


def _replace_refs(value: Any, resolved: Mapping[str, str]) -> Any:
    if is_secret_ref(value):
        return resolved[value["secretRef"]]
    if isinstance(value, Mapping):
        return {key: _replace_refs(item, resolved) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_refs(item, resolved) for item in value]
    if isinstance(value, tuple):
        return tuple(_replace_refs(item, resolved) for item in value)
    return copy.deepcopy(value)


def _scrub_set(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({s for s in secrets if len(s) >= MIN_SCRUB_LENGTH}, key=len, reverse=True))


def _scrub_text(text: str, secrets: tuple[str, ...]) -> str:
    # Mask the union of every occurrence (overlapping ones too), so no fragment of a
    # secret survives next to another one's mask.
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    parts: list[str] = []
    position = 0
    span_start, span_end = spans[0]
    for start, end in spans[1:]:
        if start <= span_end:
            span_end = max(span_end, end)
            continue
        parts += [text[position:span_start], MASK]
        position = span_end
        span_start, span_end = start, end
    parts += [text[position:span_start], MASK, text[span_end:]]
    return "".join(parts)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value (4 characters or more) replaced by ``***``."""
    return _scrub_text(text, _scrub_set(secrets))


def scrub_json(value: Any, secrets: Iterable[str]) -> Any:
    """A deep copy of ``value`` with every string, keys included, scrubbed."""
    prepared = _scrub_set(secrets)

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return _scrub_text(item, prepared)
        if isinstance(item, Mapping):
            return {walk(key): walk(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [walk(inner) for inner in item]
        if isinstance(item, tuple):
            return tuple(walk(inner) for inner in item)
        return copy.deepcopy(item)

    return walk(value)
