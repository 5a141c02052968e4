"""The ``ml`` step type: one inference call to a model server through an ``ml`` connection.

Protocols (the connection's ``protocol``):

* ``kserve-v2`` (Open Inference Protocol):
  ``POST {baseUrl}/v2/models/{model}[/versions/{version}]/infer`` with
  ``{"id": <idempotency key>, "inputs": [...], "parameters"?, "outputs"?}``; the answer is
  ``{"model_name", "model_version", "id", "outputs": [{name, shape, datatype, data}]}``.
* ``json``: ``POST {baseUrl}{path}`` with the step's ``payload`` as the body.

Every request carries ``X-Model-Name``, ``X-Model-Version`` (when a version is given),
``Idempotency-Key: {executionId}:{stepId}`` (stable across attempts) and the connection's auth
(the ``http`` strategies: bearer, apiKey, basic, hmac).

**Cold start**: connection failures and 502/503/504 mean "the model is starting": the call is
repeated inside the step with exponential backoff (0.1 s doubling, capped at 2 s; a
``Retry-After`` is honoured) until ``coldStartTimeoutSeconds`` (default 60) have passed since
the first try; then the step fails with ``provider_error`` (retried by the engine) reading
``model 'x' did not become ready within N s``. So a cold model does not use engine attempts;
the worker's step timeout still bounds the whole call.

**Errors**: 400/422 -> ``validation`` (with KServe's ``{"error": ...}`` text); 401/403 ->
``auth``; 404 -> ``not_found``; 408 and client timeouts -> ``timeout``; 429 ->
``rate_limited``; other 5xx -> ``provider_error``; other statuses -> ``validation``.

**Output**: ``{"model", "version", "outputs"`` (kserve-v2) or ``"body"`` (json)``,
"confidence", "requestSha256", "responseSha256"}``; the hashes are SHA-256 of the exact request
body sent and response body received (``Accept-Encoding: identity`` is sent, so the received
bytes are the server's). The confidence rule is in :func:`extract_confidence`.

Secrets are resolved right before the call and scrubbed from outputs and messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from maestro.connectors.base import ConnectorResources, typed_connection, typed_step
from maestro.connectors.http import parse_retry_after
from maestro.connectors.http_auth import ResolvedAuth, read_capped, resolve_auth
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.model.connections import (
    MlConfig,
)
from maestro.model.ml_step import MlStepConfig
from maestro.secrets import scrub_json

__all__ = [
    "COLD_START_INITIAL_DELAY_SECONDS",
    "COLD_START_MAX_DELAY_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_RESPONSE_BYTES",
    "check",
    "describe",
    "extract_confidence",
    "infer_path",
    "make_handler",
    "resolve_path",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
CHECK_TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
ERROR_BODY_CHARS = 200
COLD_START_INITIAL_DELAY_SECONDS = 0.1
COLD_START_MAX_DELAY_SECONDS = 2.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
COLD_STATUSES = frozenset({502, 503, 504})
_FP_TYPES = frozenset({"FP16", "FP32", "FP64"})
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")

Handler = Callable[[StepContext, Any], Awaitable[Any]]
Sleep = Callable[[float], Awaitable[None]]


# --- pure helpers -----------------------------------------------------------------------------


def _segment(name: str, what: str) -> str:
    """``name`` as one URL path segment (quoted); refuses '/', '.', '..' and control chars."""
    if name in (".", "..") or _UNSAFE_NAME.search(name):
        raise ValueError(
            f"actionConfig.{what} must not be '.' or '..' nor contain '/', a backslash or "
            "control characters"
        )
    return quote(name, safe="")


def infer_path(model: str, version: str | None) -> str:
    """``/v2/models/{model}[/versions/{version}]/infer``, names quoted; ValueError if unsafe."""
    path = f"/v2/models/{_segment(model, 'model')}"
    if version is not None:
        path += f"/versions/{_segment(version, 'version')}"
    return path + "/infer"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flat(item))
    return out


def _max_value(tensor: Mapping[str, Any]) -> float | None:
    numbers = [n for n in (_number(v) for v in _flat(tensor.get("data"))) if n is not None]
    return max(numbers) if numbers else None


_MISSING = object()


def resolve_path(document: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``outputs.1.data.0``); KeyError when absent.

    A number segment indexes a list (negative counts from the end); any other segment applied
    to a list picks the element (an object) whose ``name`` equals it; applied to an object it
    is a key."""
    current = document
    for segment in path.split("."):
        found: Any = _MISSING
        if isinstance(current, Mapping):
            found = current.get(segment, _MISSING)
        elif isinstance(current, list):
            if re.fullmatch(r"-?\d+", segment):
                index = int(segment)
                if -len(current) <= index < len(current):
                    found = current[index]
            else:
                for item in current:
                    if isinstance(item, Mapping) and item.get("name") == segment:
                        found = item
                        break
        if found is _MISSING:
            raise KeyError(segment)
        current = found
    return current


def _tensor_confidence(outputs: Any) -> float | None:
    if not isinstance(outputs, list):
        return None
    tensors = [t for t in outputs if isinstance(t, Mapping)]
    for tensor in tensors:
        if str(tensor.get("name", "")).lower() == "confidence":
            flat = _flat(tensor.get("data"))
            return _number(flat[0]) if flat else None
    for tensor in tensors:
        if "prob" in str(tensor.get("name", "")).lower():
            return _max_value(tensor)
    for tensor in tensors:
        if str(tensor.get("datatype", "")).upper() in _FP_TYPES:
            return _max_value(tensor)
    return None


def extract_confidence(document: Any, confidence_path: str | None, protocol: str) -> float | None:
    """The confidence of a model's answer, or None.

    With ``confidence_path``: the number at that dotted path (see :func:`resolve_path`) of the
    KServe response (``outputs.1.data.0``) or of the json body (``predictions.0.score``);
    ValueError when the path is absent or does not hold a number.

    Without it, for a KServe response: the first element of the output named ``confidence``;
    else the largest value of the first output whose name contains ``prob``; else the largest
    value of the first FP16/FP32/FP64 output; else None. For a json body: a top-level numeric
    ``confidence``; else the KServe rule applied to a top-level ``outputs`` list; else None.
    """
    if confidence_path is not None:
        try:
            value = resolve_path(document, confidence_path)
        except KeyError as exc:
            raise ValueError(
                f"confidencePath {confidence_path!r}: no {exc.args[0]!r} in the response"
            ) from None
        number = _number(value)
        if number is None:
            raise ValueError(
                f"confidencePath {confidence_path!r} holds a {type(value).__name__}, not a number"
            )
        return number
    if not isinstance(document, Mapping):
        return None
    if protocol == "json" and "confidence" in document:
        return _number(document["confidence"])
    return _tensor_confidence(document.get("outputs"))


def _typed_step(config: Any) -> MlStepConfig:
    return typed_step(MlStepConfig, config)


def _typed_connection(name: str, config: Any) -> MlConfig:
    return typed_connection(MlConfig, name, "ml", config)


def _display_url(url: httpx.URL) -> str:
    """The URL for messages: no user info, no query (a query may carry an API key)."""
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


def _base_url(text: str, name: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise StepError(
            ErrorClass.VALIDATION, f"connection {name!r}: baseUrl is not a valid URL: {exc}"
        ) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise StepError(
            ErrorClass.VALIDATION, f"connection {name!r}: baseUrl must be an http(s) URL"
        )
    return url


def _join(base: str, path: str) -> str:
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the step would send, for ``simulate``: no secrets, no I/O, no tensor data.

    The protocol is the connection's (not read here): a step with ``inputs`` is described as
    a KServe v2 call, one with ``payload`` as a json call. Invalid configs raise ValueError."""
    try:
        step = MlStepConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        where = f"actionConfig.{where}" if where else "actionConfig"
        raise ValueError(f"{where}: {first['msg']}") from None
    described: dict[str, Any] = {
        "kind": "ml",
        "connection": step.connection,
        "model": step.model,
        "version": step.version,
        "method": "POST",
    }
    if step.payload is not None:
        described["protocol"] = "json"
        described["url"] = f"{step.path or '/'} under connection {step.connection!r}"
        described["body"] = "json"
    else:
        described["protocol"] = "kserve-v2"
        try:
            path = infer_path(step.model, step.version)
        except ValueError:
            path = f"/v2/models/{step.model}/infer"  # a template, checked once rendered
        described["url"] = f"{path} under connection {step.connection!r}"
        described["inputs"] = [
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": tensor.shape,
                "elements": len(tensor.data) if isinstance(tensor.data, list) else "templated",
            }
            for tensor in step.inputs or []
        ]
        if step.outputs is not None:
            described["outputs"] = [output.name for output in step.outputs]
        if step.parameters is not None:
            described["parameters"] = sorted(step.parameters)
    headers = ["X-Model-Name", IDEMPOTENCY_HEADER]
    if step.version is not None:
        headers.append("X-Model-Version")
    described["headerNames"] = sorted(headers, key=str.lower)
    described["auth"] = f"from connection {step.connection!r}, if it has one"
    described["confidence"] = step.confidence_path or "default rule"
    return described


# --- calls -----------------------------------------------------------------------------------


def _error_text(raw: bytes, auth: ResolvedAuth) -> str:
    """KServe's ``{"error": "..."}`` message, else the start of the body; scrubbed."""
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and isinstance(parsed.get("error"), str):
        text = parsed["error"]
    return auth.clean(text)[:ERROR_BODY_CHARS]


def _status_error(status: int, message: str, retry_after: float | None) -> StepError:
    if status in (400, 422):
        return StepError(ErrorClass.VALIDATION, message)
    if status in (401, 403):
        return StepError(ErrorClass.AUTH, message)
    if status == 404:
        return StepError(ErrorClass.NOT_FOUND, message)
    if status == 408:
        return StepError(ErrorClass.TIMEOUT, message, retry_after=retry_after)
    if status == 429:
        return StepError(ErrorClass.RATE_LIMITED, message, retry_after=retry_after)
    if status >= 500:
        return StepError(ErrorClass.PROVIDER_ERROR, message, retry_after=retry_after)
    return StepError(ErrorClass.VALIDATION, message)


@dataclass
class _Answer:
    status: int
    raw: bytes
    truncated: bool
    retry_after: float | None


async def _send(
    resources: ConnectorResources,
    request: httpx.Request,
    where: str,
    auth: ResolvedAuth,
) -> _Answer | None:
    """One exchange; None when the server could not be reached (a cold start)."""
    try:
        response = await resources.http.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise StepError(
            ErrorClass.TIMEOUT, auth.clean(f"{where} timed out ({type(exc).__name__})")
        ) from None
    except httpx.ConnectError:
        return None
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise StepError(
            ErrorClass.NETWORK, auth.clean(f"{where} failed: {type(exc).__name__}: {detail}")
        ) from None
    try:
        ok = 200 <= response.status_code < 300
        raw, truncated = await read_capped(response, MAX_RESPONSE_BYTES if ok else 16 * 1024)
    except httpx.TimeoutException as exc:
        raise StepError(
            ErrorClass.TIMEOUT,
            auth.clean(f"{where} timed out reading the response ({type(exc).__name__})"),
        ) from None
    except httpx.HTTPError as exc:
        raise StepError(
            ErrorClass.NETWORK,
            auth.clean(f"{where} failed reading the response: {type(exc).__name__}"),
        ) from None
    finally:
        await response.aclose()
    status = response.status_code
    retry_after = (
        parse_retry_after(response.headers.get("Retry-After"))
        if status in (408, 429) or status >= 500
        else None
    )
    return _Answer(status, raw, truncated, retry_after)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _MISSING


def make_handler(
    resources: ConnectorResources,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Handler:
    """The ``ml`` step handler. ``timeout_seconds`` bounds each HTTP exchange; ``sleep`` and
    ``clock`` pace the cold-start waits (injectable for tests)."""

    async def run_ml(ctx: StepContext, config: Any) -> Any:
        step = _typed_step(config)
        stored = await resources.connection(ctx.tenant, step.connection, ("ml",))
        connection = _typed_connection(step.connection, stored)
        base = _base_url(connection.base_url, step.connection)

        # --- what and where ---
        body: Any
        if connection.protocol == "kserve-v2":
            if step.payload is not None or step.path:
                raise StepError(
                    ErrorClass.VALIDATION,
                    f"connection {step.connection!r} speaks kserve-v2: give inputs, not "
                    "payload or path",
                )
            if not step.inputs:
                raise StepError(
                    ErrorClass.VALIDATION, "actionConfig.inputs: kserve-v2 needs input tensors"
                )
            try:
                path = infer_path(step.model, step.version)
            except ValueError as exc:
                raise StepError(ErrorClass.VALIDATION, str(exc)) from None
            body = {
                "id": ctx.idempotency_key,
                "inputs": [
                    tensor.model_dump(by_alias=True, exclude_none=True, mode="json")
                    for tensor in step.inputs
                ],
            }
            if step.parameters is not None:
                body["parameters"] = step.parameters
            if step.outputs is not None:
                body["outputs"] = [
                    output.model_dump(by_alias=True, exclude_none=True, mode="json")
                    for output in step.outputs
                ]
        else:
            if step.inputs is not None or step.outputs is not None or step.parameters:
                raise StepError(
                    ErrorClass.VALIDATION,
                    f"connection {step.connection!r} speaks json: give payload (and path), "
                    "not inputs, outputs or parameters",
                )
            if step.payload is None:
                raise StepError(
                    ErrorClass.VALIDATION, "actionConfig.payload: the json protocol needs a body"
                )
            path = step.path
            body = step.payload
        url = httpx.URL(_join(str(base), path))
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "identity",  # so the hashed response bytes are the server's
            "X-Model-Name": step.model,
            IDEMPOTENCY_HEADER: ctx.idempotency_key,
        }
        if step.version is not None:
            headers["X-Model-Version"] = step.version

        # --- auth: resolved only now ---
        auth = await resolve_auth(resources, connection.auth)
        headers.update(auth.headers)
        where = f"POST {_display_url(url)}"

        def build() -> httpx.Request:
            try:
                request = resources.http.build_request(
                    "POST",
                    url,
                    params=tuple(auth.params) if auth.params else None,
                    headers=headers,
                    content=content,
                    timeout=httpx.Timeout(timeout_seconds),
                )
            except (httpx.InvalidURL, ValueError, TypeError) as exc:
                raise StepError(
                    ErrorClass.VALIDATION, auth.clean(f"cannot build the request: {exc}")
                ) from None
            auth.sign(request, content, ctx.now().timestamp())
            return request

        # --- send, waiting out a cold start ---
        limit = connection.cold_start_timeout_seconds
        started = clock()
        delay = COLD_START_INITIAL_DELAY_SECONDS
        while True:
            answer = await _send(resources, build(), where, auth)
            if answer is not None and answer.status not in COLD_STATUSES:
                break
            last = (
                "connection failed"
                if answer is None
                else f"last answer {answer.status}: {_error_text(answer.raw, auth)}"
            )
            remaining = limit - (clock() - started)
            if remaining <= 0:
                raise StepError(
                    ErrorClass.PROVIDER_ERROR,
                    f"model {step.model!r} did not become ready within {limit:g} s "
                    f"({where}, {last})",
                    retry_after=answer.retry_after if answer is not None else None,
                )
            wait = delay if answer is None or answer.retry_after is None else answer.retry_after
            await sleep(min(wait, remaining))
            delay = min(delay * 2, COLD_START_MAX_DELAY_SECONDS)

        status = answer.status
        if not 200 <= status < 300:
            text = _error_text(answer.raw, auth)
            message = f"{where} answered {status}" + (f": {text}" if text else "")
            raise _status_error(status, message, answer.retry_after)
        if answer.truncated:
            raise StepError(
                ErrorClass.VALIDATION,
                f"{where} answered {status} with a response larger than "
                f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB",
            )
        document = _json_or_none(answer.raw)
        output: dict[str, Any]
        if connection.protocol == "kserve-v2":
            if not isinstance(document, Mapping) or not isinstance(document.get("outputs"), list):
                raise StepError(
                    ErrorClass.PROVIDER_ERROR,
                    f"{where} answered {status} without a KServe v2 response (no outputs list)",
                )
            output = {
                "model": document.get("model_name") or step.model,
                "version": document.get("model_version") or step.version,
                "outputs": document["outputs"],
            }
        else:
            output = {"model": step.model, "version": step.version, "body": document}
            if not answer.raw:
                output["body"] = None
            elif document is _MISSING:
                output["body"] = answer.raw.decode("utf-8", errors="replace")
                output["bodyType"] = "text"
        try:
            output["confidence"] = extract_confidence(
                None if document is _MISSING else document,
                step.confidence_path,
                connection.protocol,
            )
        except ValueError as exc:
            raise StepError(ErrorClass.VALIDATION, auth.clean(f"{where}: {exc}")) from None
        output["requestSha256"] = hashlib.sha256(content).hexdigest()
        output["responseSha256"] = hashlib.sha256(answer.raw).hexdigest()
        result: dict[str, Any] = scrub_json(output, auth.secrets)
        return result

    return run_ml


async def check(resources: ConnectorResources, config: Mapping[str, Any]) -> dict[str, Any]:
    """Prove an ``ml`` connection works (no cold-start waiting, no inference).

    kserve-v2: ``GET {baseUrl}/v2/health/ready`` must answer 200, then ``GET {baseUrl}/v2``
    (server metadata) gives ``{"ready": true, "server": name, "version": version}``.
    json: ``GET {baseUrl}`` must answer 2xx; gives ``{"reachable": true, "status": status}``.
    Failures raise StepError (401/403 auth, 404 not_found, 5xx or unreachable
    provider_error/network, timeouts timeout)."""
    try:
        connection = MlConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise StepError(
            ErrorClass.VALIDATION, f"not a valid ml connection: {where}: {first['msg']}"
        ) from None
    base = _base_url(connection.base_url, "under test")
    auth = await resolve_auth(resources, connection.auth)

    async def get(path: str) -> tuple[int, Any]:
        url = httpx.URL(_join(str(base), path))
        where = f"GET {_display_url(url)}"
        request = resources.http.build_request(
            "GET",
            url,
            params=tuple(auth.params) if auth.params else None,
            headers={"Accept": "application/json", **auth.headers},
            timeout=httpx.Timeout(CHECK_TIMEOUT_SECONDS),
        )
        auth.sign(request, b"", time.time())
        answer = await _send(resources, request, where, auth)
        if answer is None:
            raise StepError(ErrorClass.NETWORK, f"{where} failed: cannot connect")
        if not 200 <= answer.status < 300:
            text = _error_text(answer.raw, auth)
            message = f"{where} answered {answer.status}" + (f": {text}" if text else "")
            raise _status_error(answer.status, message, answer.retry_after)
        return answer.status, _json_or_none(answer.raw)

    if connection.protocol == "json":
        status, _ = await get("")
        return {"protocol": "json", "reachable": True, "status": status}
    await get("/v2/health/ready")
    _, metadata = await get("/v2")
    if not isinstance(metadata, Mapping):
        metadata = {}
    facts = {
        "protocol": "kserve-v2",
        "ready": True,
        "server": metadata.get("name") if isinstance(metadata.get("name"), str) else None,
        "version": metadata.get("version") if isinstance(metadata.get("version"), str) else None,
    }
    result: dict[str, Any] = scrub_json(facts, auth.secrets)
    return result
