"""The ``http`` step type: one HTTP request, optionally through an ``http`` connection.

The handler validates the rendered ``actionConfig`` (:class:`HttpStepConfig`), joins a relative
``url`` under the connection's ``baseUrl``, merges the connection's ``defaultHeaders`` under the
step's ``headers``, applies the auth strategy (the step's ``auth`` overrides the connection's),
always sends ``Idempotency-Key`` (stable across attempts) and classifies the answer:

* a status in ``expectStatus`` (default any 2xx) is the step's output
  ``{"status", "headers", "body"}`` (plus ``"bodyType": "text"`` when a ``json`` response was
  not JSON);
* 408 -> ``timeout``, 429 -> ``rate_limited``, 5xx -> ``provider_error`` (``Retry-After``
  honoured on 429 and 5xx), 401/403 -> ``auth``, 404 -> ``not_found``, any other status ->
  ``validation``; transport failures -> ``network``, client timeouts -> ``timeout``.

Secrets are resolved only right before sending, never appear in messages (request headers are
never quoted, URLs lose their query and user info) and are scrubbed from outputs and errors.
A circuit breaker per (tenant, connection) or (tenant, host) fails fast when a provider keeps
failing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import ValidationError

from maestro.connectors.base import ConnectorResources, typed_connection, typed_step
from maestro.connectors.http_auth import read_capped, resolve_auth, sign_hmac
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.model.connections import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    CircuitBreakerConfig,
    HmacAuth,
    HttpAuth,
    HttpConnectionConfig,
)
from maestro.model.connector_steps import HttpStepConfig
from maestro.secrets import scrub_json

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_RESPONSE_BYTES",
    "describe",
    "make_handler",
    "parse_retry_after",
    "sign_hmac",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_RESPONSE_BYTES = 1024 * 1024
# Longest Retry-After honoured; a larger one (or a date far ahead) is capped to this.
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
ERROR_BODY_CHARS = 200
IDEMPOTENCY_HEADER = "Idempotency-Key"

# Response headers never put in a step's output (they carry credentials or sessions).
_DROPPED_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "cookie", "authorization", "proxy-authorization"}
)
_CREDENTIAL_HINTS = ("authorization", "token", "secret", "password", "api-key", "apikey", "session")
_SECONDS_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")

Handler = Callable[[StepContext, Any], Awaitable[Any]]


# --- pure helpers -----------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date).

    None when absent or unparseable; a date in the past gives 0; capped at a day."""
    if value is None:
        return None
    match = _SECONDS_RE.fullmatch(value)
    if match is not None:
        seconds = float(match.group(1))
    else:
        try:
            when = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 7231 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def _typed_step(config: Any) -> HttpStepConfig:
    return typed_step(HttpStepConfig, config)


def _typed_connection(name: str, config: Any) -> HttpConnectionConfig:
    return typed_connection(HttpConnectionConfig, name, "http", config)


def _is_absolute(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _join(base_url: str, url: str) -> str:
    """``url`` under ``base_url``: ``https://api/v1`` + ``orders/1`` -> ``https://api/v1/orders/1``."""
    if _is_absolute(url):
        return url
    return base_url.rstrip("/") + "/" + url.lstrip("/")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _display_url(url: httpx.URL) -> str:
    """The URL for messages: no user info, no query (a query may carry an API key)."""
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


def _query_params(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for name, value in query.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None:
                continue
            if isinstance(item, bool):
                params.append((name, "true" if item else "false"))
            elif isinstance(item, str | int | float):
                params.append((name, str(item)))
            else:
                params.append((name, json.dumps(item, separators=(",", ":"))))
    return params


def _auth_header_names(auth: HttpAuth | None) -> list[str]:
    if isinstance(auth, BearerAuth | BasicAuth):
        return ["Authorization"]
    if isinstance(auth, ApiKeyAuth) and auth.in_ == "header":
        return [auth.name]
    if isinstance(auth, HmacAuth):
        return [auth.header, auth.timestamp_header]
    return []


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the step would send, for ``simulate``: no secrets (not even references), no I/O.
    An invalid config raises ValueError (simulate reports it as a problem).

    The connection's own auth and default headers are not known here (that would take a
    database read); they are named as coming from the connection."""
    try:
        step = HttpStepConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        where = f"actionConfig.{where}" if where else "actionConfig"
        raise ValueError(f"{where}: {first['msg']}") from None
    described: dict[str, Any] = {"kind": "http", "method": step.method}
    if step.connection is not None and not _is_absolute(step.url):
        described["url"] = f"{step.url} under connection {step.connection!r}"
        described["path"] = step.url
    else:
        described["url"] = step.url
        if _is_absolute(step.url):
            try:
                described["url"] = _display_url(httpx.URL(step.url))
            except httpx.InvalidURL as exc:
                raise ValueError(f"actionConfig.url is not a valid URL: {exc}") from None
    if step.connection is not None:
        described["connection"] = step.connection
    names = {name.lower(): name for name in step.headers}
    for name in _auth_header_names(step.auth):
        names.setdefault(name.lower(), name)
    names.setdefault(IDEMPOTENCY_HEADER.lower(), IDEMPOTENCY_HEADER)
    described["headerNames"] = sorted(names.values(), key=str.lower)
    query = dict(step.query)
    if isinstance(step.auth, ApiKeyAuth) and step.auth.in_ == "query":
        query[step.auth.name] = "***"
    described["query"] = query
    if step.json_ is not None:
        described["body"] = "json"
    elif step.body is not None:
        described["body"] = "text"
    else:
        described["body"] = None
    if step.auth is not None:
        described["auth"] = step.auth.strategy
    elif step.connection is not None:
        described["auth"] = f"from connection {step.connection!r}, if it has one"
    else:
        described["auth"] = None
    described["expectStatus"] = step.expect_status or "2xx"
    described["responseType"] = step.response_type
    return described


# --- the handler ------------------------------------------------------------------------------


def _output_headers(headers: httpx.Headers, hidden: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        lower = name.lower()
        if lower in _DROPPED_HEADERS or lower in hidden:
            continue
        if any(hint in lower for hint in _CREDENTIAL_HINTS):
            continue
        out[lower] = f"{out[lower]}, {value}" if lower in out else value
    return out


def _decode(raw: bytes, response: httpx.Response) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        return raw.decode(encoding, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _status_error(status: int, message: str, retry_after: float | None) -> tuple[StepError, bool]:
    """The step error for an unexpected status, and whether it counts against the breaker."""
    if status == 408:
        return StepError(ErrorClass.TIMEOUT, message, retry_after=retry_after), True
    if status == 429:
        return StepError(ErrorClass.RATE_LIMITED, message, retry_after=retry_after), True
    if status >= 500:
        return StepError(ErrorClass.PROVIDER_ERROR, message, retry_after=retry_after), True
    if status in (401, 403):
        return StepError(ErrorClass.AUTH, message), False
    if status == 404:
        return StepError(ErrorClass.NOT_FOUND, message), False
    return StepError(ErrorClass.VALIDATION, message), False


def make_handler(
    resources: ConnectorResources, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> Handler:
    """The ``http`` step handler, sharing ``resources`` (client, breakers, connection cache)."""

    async def run_http(ctx: StepContext, config: Any) -> Any:
        step = _typed_step(config)
        connection: HttpConnectionConfig | None = None
        if step.connection is not None:
            stored = await resources.connection(ctx.tenant, step.connection, ("http",))
            connection = _typed_connection(step.connection, stored)

        # --- where ---
        if connection is not None:
            url_text = _join(connection.base_url, step.url)
        elif _is_absolute(step.url):
            url_text = step.url
        else:
            raise StepError(
                ErrorClass.VALIDATION,
                "actionConfig.url must be absolute (http:// or https://) when no connection "
                "gives the baseUrl",
            )
        try:
            url = httpx.URL(url_text)
        except httpx.InvalidURL as exc:
            raise StepError(
                ErrorClass.VALIDATION, f"actionConfig.url is not a valid URL: {exc}"
            ) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise StepError(
                ErrorClass.VALIDATION, "actionConfig.url must be an http:// or https:// URL"
            )
        if connection is not None and step.connection is not None:
            base = httpx.URL(connection.base_url)
            if _origin(url) != _origin(base):
                # The connection's credentials go to the connection's host and nowhere else.
                raise StepError(
                    ErrorClass.VALIDATION,
                    f"actionConfig.url {_display_url(url)} is outside connection "
                    f"{step.connection!r} ({_display_url(base)}); use a path under its baseUrl",
                )

        if step.connection is not None:
            breaker_key = (ctx.tenant, f"connection:{step.connection}")
        else:
            host = url.host if url.port is None else f"{url.host}:{url.port}"
            breaker_key = (ctx.tenant, f"host:{host}")
        breaker = connection.circuit_breaker if connection is not None else CircuitBreakerConfig()

        # --- headers (case-insensitive merge: connection defaults < step headers < auth) ---
        headers = httpx.Headers(connection.default_headers if connection is not None else {})
        for name, value in step.headers.items():
            headers[name] = value
        if not any(name.lower() == IDEMPOTENCY_HEADER.lower() for name in step.headers):
            headers[IDEMPOTENCY_HEADER] = ctx.idempotency_key
        params = _query_params(step.query)
        content: bytes | None = None
        if step.json_ is not None:
            content = json.dumps(step.json_, separators=(",", ":"), ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json")
        elif step.body is not None:
            content = step.body.encode()
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")

        # --- auth: resolve secrets only now, right before sending ---
        auth = step.auth if step.auth is not None else (connection.auth if connection else None)
        resolved = await resolve_auth(resources, auth)
        headers.update(resolved.headers)
        params.extend(resolved.params)
        hidden_headers = resolved.hidden_headers
        secret_set = resolved.secrets
        clean = resolved.clean

        try:
            request = resources.http.build_request(
                step.method,
                url,
                params=tuple(params) if params else None,
                headers=headers,
                content=content,
                timeout=httpx.Timeout(timeout_seconds),
            )
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise StepError(
                ErrorClass.VALIDATION, clean(f"cannot build the request: {exc}")
            ) from None
        resolved.sign(request, content or b"", ctx.now().timestamp())
        where = f"{step.method} {_display_url(url)}"

        # --- send, through the breaker ---
        resources.breakers.before_call(breaker_key, breaker.reset_timeout_seconds)
        settled = False
        try:
            try:
                response = await resources.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                resources.breakers.record_failure(breaker_key, breaker.failure_threshold)
                settled = True
                raise StepError(
                    ErrorClass.TIMEOUT,
                    clean(f"{where} timed out ({type(exc).__name__})"),
                ) from None
            except httpx.UnsupportedProtocol as exc:
                resources.breakers.record_success(breaker_key)
                settled = True
                raise StepError(ErrorClass.VALIDATION, clean(f"{where}: {exc}")) from None
            except httpx.HTTPError as exc:
                resources.breakers.record_failure(breaker_key, breaker.failure_threshold)
                settled = True
                detail = str(exc) or type(exc).__name__
                raise StepError(
                    ErrorClass.NETWORK, clean(f"{where} failed: {type(exc).__name__}: {detail}")
                ) from None
            try:
                expected = (
                    response.status_code in step.expect_status
                    if step.expect_status is not None
                    else 200 <= response.status_code < 300
                )
                limit = MAX_RESPONSE_BYTES if expected else 16 * 1024
                try:
                    raw, truncated = await read_capped(response, limit)
                except httpx.TimeoutException as exc:
                    resources.breakers.record_failure(breaker_key, breaker.failure_threshold)
                    settled = True
                    raise StepError(
                        ErrorClass.TIMEOUT,
                        clean(f"{where} timed out reading the response ({type(exc).__name__})"),
                    ) from None
                except httpx.HTTPError as exc:
                    resources.breakers.record_failure(breaker_key, breaker.failure_threshold)
                    settled = True
                    raise StepError(
                        ErrorClass.NETWORK,
                        clean(f"{where} failed reading the response: {type(exc).__name__}"),
                    ) from None
            finally:
                await response.aclose()

            status = response.status_code
            if not expected:
                text = clean(_decode(raw, response))[:ERROR_BODY_CHARS]
                message = f"{where} answered {status}"
                message += f": {text}" if text else ""
                retry_after = (
                    parse_retry_after(response.headers.get("Retry-After"), ctx.now())
                    if status in (408, 429) or status >= 500
                    else None
                )
                error, counts = _status_error(status, message, retry_after)
                if counts:
                    resources.breakers.record_failure(breaker_key, breaker.failure_threshold)
                else:
                    resources.breakers.record_success(breaker_key)
                settled = True
                raise error
            resources.breakers.record_success(breaker_key)
            settled = True
        finally:
            if not settled:
                # Cancelled (the worker's step timeout) or an unexpected error: never leave a
                # half-open breaker waiting forever for its probe.
                resources.breakers.record_failure(breaker_key, breaker.failure_threshold)

        if truncated:
            raise StepError(
                ErrorClass.VALIDATION,
                f"{where} answered {status} with a response larger than 1 MiB",
            )
        output: dict[str, Any] = {
            "status": status,
            "headers": _output_headers(response.headers, hidden_headers),
        }
        if step.method == "HEAD" or not raw:
            output["body"] = None if step.response_type == "json" else ""
        elif step.response_type == "json":
            try:
                output["body"] = json.loads(raw)
            except ValueError:
                output["body"] = _decode(raw, response)
                output["bodyType"] = "text"
        else:
            output["body"] = _decode(raw, response)
        result: dict[str, Any] = scrub_json(output, secret_set)
        return result

    return run_http
