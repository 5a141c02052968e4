"""The ``jira`` step type: Jira Cloud REST API v3 through a ``jira`` connection.

Operations (``actionConfig.operation``):

* ``createIssue`` -> ``POST /rest/api/3/issue``; output ``{"key", "id", "url"}``. Every issue
  created carries the label ``maestro-<first 16 hex of sha256(idempotency key)>``; a retry
  (attempt > 1) first looks that label up and returns the issue an earlier, ambiguously failed
  attempt already created instead of creating a second one.
* ``updateIssue`` -> ``PUT /rest/api/3/issue/{key}``; output ``{"key", "url"}``.
* ``transitionIssue`` -> the transition (name or id) is resolved through
  ``GET /rest/api/3/issue/{key}/transitions``, then ``POST`` there; output
  ``{"key", "transition": {"id", "name"}}``.
* ``searchIssues`` -> ``POST /rest/api/3/search/jql`` (enhanced search, token paging); output
  ``{"issues": [{"key", "id", "summary", "status"}], "nextPageToken"}``.

A project outside the connection's ``allowedProjects`` is refused (``policy_denied``) before
any request; search results from other projects are dropped. Errors: 400 -> ``validation``
(with Jira's ``errorMessages`` and ``errors``), 401/403 -> ``auth``, 404 -> ``not_found``,
408 -> ``timeout``, 429 -> ``rate_limited``, 5xx -> ``provider_error`` (``Retry-After``
honoured on 408, 429 and 5xx), other 4xx -> ``validation``; transport failures ->
``network``, client timeouts -> ``timeout``. The API token never appears in an output or a
message.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from maestro.connectors.base import ConnectorResources, typed_connection
from maestro.connectors.http import parse_retry_after
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.model.connections import JiraBasicAuth, JiraConfig
from maestro.model.jira_step import JiraStepConfig
from maestro.secrets import scrub, scrub_json

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "check",
    "describe",
    "error_for_status",
    "idempotency_label",
    "make_handler",
    "text_to_adf",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
ERROR_TEXT_CHARS = 300
SEARCH_FIELDS = ["summary", "status"]
API = "/rest/api/3"

_PROJECT_KEY = re.compile(r"[A-Z][A-Z0-9_]{0,254}")
_ISSUE_KEY = re.compile(r"([A-Z][A-Z0-9_]{0,254})-([1-9][0-9]*)")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n?")

Handler = Callable[[StepContext, Any], Awaitable[Any]]


# --- pure helpers -----------------------------------------------------------------------------


def text_to_adf(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document: a paragraph per blank-line-separated block, each
    remaining line break a ``hardBreak``. Empty text gives an empty document."""
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    content: list[dict[str, Any]] = []
    for block in _BLANK_LINES.split(normalized):
        block = block.strip("\n")
        if not block.strip():
            continue
        nodes: list[dict[str, Any]] = []
        for index, line in enumerate(block.split("\n")):
            if index:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


def idempotency_label(idempotency_key: str) -> str:
    """The label that marks the issues one step creates: stable across attempts."""
    return "maestro-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def _jql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _project_of(issue_key: str) -> str:
    return issue_key.rsplit("-", 1)[0]


def _normalize_issue_key(value: str) -> str:
    key = value.strip().upper()
    if _ISSUE_KEY.fullmatch(key) is None:
        raise StepError(
            ErrorClass.VALIDATION,
            f"actionConfig.issueKey {value[:60]!r} is not an issue key such as OPS-123",
        )
    return key


def _normalize_project(value: str) -> str:
    key = value.strip().upper()
    if _PROJECT_KEY.fullmatch(key) is None:
        raise StepError(
            ErrorClass.VALIDATION,
            f"actionConfig.project {value[:60]!r} is not a project key such as OPS",
        )
    return key


def _jira_error_text(body: Any) -> str:
    """Jira's ``{"errorMessages": [...], "errors": {field: message}}`` as one line."""
    if not isinstance(body, Mapping):
        return ""
    parts: list[str] = []
    messages = body.get("errorMessages")
    if isinstance(messages, list):
        parts.extend(str(m) for m in messages if m)
    errors = body.get("errors")
    if isinstance(errors, Mapping):
        parts.extend(f"{field}: {message}" for field, message in errors.items())
    return "; ".join(parts)


def error_for_status(
    status: int, where: str, body: Any, text: str, retry_after: float | None
) -> StepError:
    """The step error for a Jira answer outside 2xx. 403 is ``auth``: Jira answers it for
    missing permissions (the account or token may not do this), which a retry cannot fix and
    an administrator fixes by granting access, like a bad credential."""
    detail = _jira_error_text(body) or text.strip()
    message = f"{where} answered {status}"
    if detail:
        message += f": {detail[:ERROR_TEXT_CHARS]}"
    if status == 408:
        return StepError(ErrorClass.TIMEOUT, message, retry_after=retry_after)
    if status == 429:
        return StepError(ErrorClass.RATE_LIMITED, message, retry_after=retry_after)
    if status >= 500:
        return StepError(ErrorClass.PROVIDER_ERROR, message, retry_after=retry_after)
    if status in (401, 403):
        return StepError(ErrorClass.AUTH, message)
    if status == 404:
        return StepError(ErrorClass.NOT_FOUND, message)
    return StepError(ErrorClass.VALIDATION, message)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    where = f"actionConfig.{where}" if where else "actionConfig"
    return f"{where}: {first['msg']}"


def _calls(step: JiraStepConfig) -> list[dict[str, str]]:
    key = step.issue_key or "{issueKey}"
    if step.operation == "createIssue":
        return [{"method": "POST", "path": f"{API}/issue"}]
    if step.operation == "updateIssue":
        return [{"method": "PUT", "path": f"{API}/issue/{key}"}]
    if step.operation == "transitionIssue":
        return [
            {"method": "GET", "path": f"{API}/issue/{key}/transitions"},
            {"method": "POST", "path": f"{API}/issue/{key}/transitions"},
        ]
    return [{"method": "POST", "path": f"{API}/search/jql"}]


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the step would do, for ``simulate``: no secrets, no I/O. Field values are not
    repeated, only their names. An invalid config raises ValueError."""
    try:
        step = JiraStepConfig.model_validate(config)
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None
    described: dict[str, Any] = {
        "kind": "jira",
        "connection": step.connection,
        "operation": step.operation,
        "calls": _calls(step),
    }
    if step.operation == "createIssue":
        described.update(
            project=step.project,
            issueType=step.issue_type,
            summary=step.summary,
            hasDescription=step.description is not None,
            fieldNames=sorted(step.fields),
            idempotencyLabel="maestro-<sha256 of the step's idempotency key, 16 hex>",
            retryLooksUpLabel=True,
        )
    elif step.operation == "updateIssue":
        changed = set(step.fields)
        if step.summary is not None:
            changed.add("summary")
        if step.description is not None:
            changed.add("description")
        described.update(issueKey=step.issue_key, fieldNames=sorted(changed))
    elif step.operation == "transitionIssue":
        described.update(
            issueKey=step.issue_key, transition=step.transition, fieldNames=sorted(step.fields)
        )
    else:
        described.update(
            jql=step.jql,
            maxResults=step.max_results,
            nextPageToken=step.next_page_token is not None,
        )
    return described


# --- the client ---------------------------------------------------------------------------------


def _typed_connection(name: str, config: Any) -> JiraConfig:
    return typed_connection(JiraConfig, name, "jira", config)


@dataclass(frozen=True)
class _Client:
    """One connection's base URL, resolved credentials and the secrets to scrub."""

    resources: ConnectorResources
    base_url: str
    authorization: str
    secrets: frozenset[str]
    timeout_seconds: float

    def clean(self, text: str) -> str:
        return scrub(text, self.secrets)

    def issue_url(self, key: str) -> str:
        return f"{self.base_url}/browse/{key}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """``(status, parsed JSON body or None)`` of a 2xx answer; StepError otherwise."""
        url = self.base_url + path
        where = f"{method} {url}"
        headers = {"Authorization": self.authorization, "Accept": "application/json"}
        try:
            response = await self.resources.http.request(
                method,
                url,
                json=json_body,
                params=params,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_seconds),
            )
        except httpx.TimeoutException as exc:
            raise StepError(
                ErrorClass.TIMEOUT, self.clean(f"{where} timed out ({type(exc).__name__})")
            ) from None
        except httpx.HTTPError as exc:
            detail = str(exc) or type(exc).__name__
            raise StepError(
                ErrorClass.NETWORK,
                self.clean(f"{where} failed: {type(exc).__name__}: {detail}"),
            ) from None
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        status = response.status_code
        if 200 <= status < 300:
            return status, body
        retry_after = (
            parse_retry_after(response.headers.get("Retry-After"))
            if status in (408, 429) or status >= 500
            else None
        )
        text = "" if body is not None else response.text[:ERROR_TEXT_CHARS]
        error = error_for_status(status, where, body, text, retry_after)
        raise StepError(error.error_class, self.clean(error.message), retry_after=retry_after)


async def _client(
    resources: ConnectorResources, connection: JiraConfig, timeout_seconds: float
) -> _Client:
    base_url = connection.base_url.rstrip("/")
    try:
        parsed = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise StepError(ErrorClass.VALIDATION, f"jira baseUrl is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise StepError(ErrorClass.VALIDATION, "jira baseUrl must be an http(s):// URL")
    original = connection.auth.model_dump(by_alias=True, mode="json")
    resolved = await resources.resolve(original)
    secrets: set[str] = set()
    if isinstance(connection.auth, JiraBasicAuth):
        token = str(resolved["apiToken"])
        pair = base64.b64encode(f"{connection.auth.email}:{token}".encode()).decode("ascii")
        authorization = f"Basic {pair}"
        secrets.update({token, pair, quote(token, safe="")})
    else:
        token = str(resolved["token"])
        authorization = f"Bearer {token}"
        secrets.update({token, quote(token, safe="")})
    return _Client(
        resources=resources,
        base_url=base_url,
        authorization=authorization,
        secrets=frozenset(s for s in secrets if s),
        timeout_seconds=timeout_seconds,
    )


# --- operations ---------------------------------------------------------------------------------


def _check_project(connection: JiraConfig, name: str, project: str) -> None:
    allowed = {p.strip().upper() for p in connection.allowed_projects}
    if allowed and project not in allowed:
        raise StepError(
            ErrorClass.POLICY_DENIED,
            f"project {project} is not in the allowedProjects of connection {name!r} "
            f"({', '.join(sorted(allowed))})",
        )


def _merged_fields(step: JiraStepConfig, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` plus ``step.fields``; a field set twice is refused, labels are combined."""
    extra = dict(step.fields)
    if "project" in extra:
        raise StepError(
            ErrorClass.VALIDATION,
            "actionConfig.fields.project is not allowed: give the project key in "
            "actionConfig.project (issues are never moved between projects)",
        )
    for name in ("issuetype", "summary", "description"):
        if name in extra and name in base:
            option = {"issuetype": "issueType"}.get(name, name)
            raise StepError(
                ErrorClass.VALIDATION,
                f"actionConfig.fields.{name} repeats actionConfig.{option}; give it once",
            )
    merged = dict(base)
    labels = extra.pop("labels", None)
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise StepError(
                ErrorClass.VALIDATION, "actionConfig.fields.labels must be a list of strings"
            )
        own = list(merged.get("labels", []))
        merged["labels"] = [*labels, *(x for x in own if x not in labels)]
    merged.update(extra)
    return merged


async def _find_by_label(client: _Client, label: str) -> dict[str, Any] | None:
    _, body = await client.call(
        "POST",
        f"{API}/search/jql",
        json_body={"jql": f"labels = {_jql_string(label)}", "maxResults": 1, "fields": ["key"]},
    )
    issues = body.get("issues") if isinstance(body, Mapping) else None
    if isinstance(issues, list) and issues and isinstance(issues[0], Mapping):
        found: dict[str, Any] = dict(issues[0])
        return found
    return None


async def _create(
    ctx: StepContext, step: JiraStepConfig, client: _Client, project: str
) -> dict[str, Any]:
    label = idempotency_label(ctx.idempotency_key)
    if ctx.attempt > 1:
        # An earlier attempt may have created the issue and then lost the answer (timeout,
        # 504, worker death): find it by its label instead of creating a second one.
        existing = await _find_by_label(client, label)
        if existing is not None:
            key = str(existing.get("key"))
            found_id = existing.get("id")
            return {
                "key": key,
                "id": None if found_id is None else str(found_id),
                "url": client.issue_url(key),
            }
    base: dict[str, Any] = {
        "project": {"key": project},
        "issuetype": {"name": step.issue_type},
        "summary": step.summary,
        "labels": [label],
    }
    if step.description is not None:
        base["description"] = text_to_adf(step.description)
    fields = _merged_fields(step, base)
    _, body = await client.call("POST", f"{API}/issue", json_body={"fields": fields})
    if not isinstance(body, Mapping) or "key" not in body:
        raise StepError(ErrorClass.PROVIDER_ERROR, "Jira created an issue but sent no key")
    key = str(body["key"])
    created_id = body.get("id")
    return {
        "key": key,
        "id": None if created_id is None else str(created_id),
        "url": client.issue_url(key),
    }


async def _update(step: JiraStepConfig, client: _Client, key: str) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if step.summary is not None:
        base["summary"] = step.summary
    if step.description is not None:
        base["description"] = text_to_adf(step.description)
    fields = _merged_fields(step, base)
    _, body = await client.call("PUT", f"{API}/issue/{quote(key)}", json_body={"fields": fields})
    output: dict[str, Any] = {"key": key, "url": client.issue_url(key)}
    if isinstance(body, Mapping) and body.get("id") is not None:  # returnIssue=true answers
        output["id"] = str(body["id"])
    return output


async def _transition(step: JiraStepConfig, client: _Client, key: str) -> dict[str, Any]:
    wanted = (step.transition or "").strip()
    _, body = await client.call("GET", f"{API}/issue/{quote(key)}/transitions")
    available = body.get("transitions") if isinstance(body, Mapping) else None
    options = [t for t in available or [] if isinstance(t, Mapping) and "id" in t]
    chosen = next((t for t in options if str(t["id"]) == wanted), None)
    if chosen is None:
        chosen = next(
            (t for t in options if str(t.get("name", "")).casefold() == wanted.casefold()), None
        )
    if chosen is None:
        names = ", ".join(f"{t.get('name')} (id {t['id']})" for t in options) or "none"
        raise StepError(
            ErrorClass.VALIDATION,
            client.clean(
                f"issue {key} has no transition {wanted!r} available now; available: {names}"
            ),
        )
    payload: dict[str, Any] = {"transition": {"id": str(chosen["id"])}}
    if step.fields:
        payload["fields"] = _merged_fields(step, {})
    await client.call("POST", f"{API}/issue/{quote(key)}/transitions", json_body=payload)
    return {"key": key, "transition": {"id": str(chosen["id"]), "name": chosen.get("name")}}


def _issue_summary(issue: Mapping[str, Any]) -> dict[str, Any]:
    fields = issue.get("fields")
    fields = fields if isinstance(fields, Mapping) else {}
    status = fields.get("status")
    status_name = status.get("name") if isinstance(status, Mapping) else status
    return {
        "key": issue.get("key"),
        "id": None if issue.get("id") is None else str(issue.get("id")),
        "summary": fields.get("summary"),
        "status": status_name,
    }


async def _search(step: JiraStepConfig, client: _Client, connection: JiraConfig) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "jql": step.jql,
        "maxResults": step.max_results,
        "fields": SEARCH_FIELDS,
    }
    if step.next_page_token:
        payload["nextPageToken"] = step.next_page_token
    _, body = await client.call("POST", f"{API}/search/jql", json_body=payload)
    body = body if isinstance(body, Mapping) else {}
    allowed = {p.strip().upper() for p in connection.allowed_projects}
    issues = []
    for issue in body.get("issues") or []:
        if not isinstance(issue, Mapping):
            continue
        summary = _issue_summary(issue)
        key = str(summary["key"] or "")
        if allowed and _project_of(key).upper() not in allowed:
            continue  # the connection may not see other projects
        issues.append(summary)
    token = body.get("nextPageToken")
    return {"issues": issues, "nextPageToken": token if isinstance(token, str) else None}


def make_handler(
    resources: ConnectorResources, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> Handler:
    """The ``jira`` step handler, sharing ``resources`` (HTTP client, connection cache)."""

    async def run_jira(ctx: StepContext, config: Any) -> Any:
        try:
            step = JiraStepConfig.model_validate(config)
        except ValidationError as exc:
            raise StepError(ErrorClass.VALIDATION, _first_error(exc) + " after rendering") from None
        stored = await resources.connection(ctx.tenant, step.connection, ("jira",))
        connection = _typed_connection(step.connection, stored)

        # Policy before any secret or request.
        project: str | None = None
        key: str | None = None
        if step.operation == "createIssue":
            project = _normalize_project(step.project or "")
            _check_project(connection, step.connection, project)
        elif step.operation in ("updateIssue", "transitionIssue"):
            key = _normalize_issue_key(step.issue_key or "")
            _check_project(connection, step.connection, _project_of(key))

        client = await _client(resources, connection, timeout_seconds)
        if project is not None:
            output = await _create(ctx, step, client, project)
        elif key is not None and step.operation == "updateIssue":
            output = await _update(step, client, key)
        elif key is not None:
            output = await _transition(step, client, key)
        else:
            output = await _search(step, client, connection)
        result: dict[str, Any] = scrub_json(output, client.secrets)
        return result

    return run_jira


async def check(resources: ConnectorResources, config: Mapping[str, Any]) -> dict[str, Any]:
    """Prove a ``jira`` connection's credentials work: ``GET /rest/api/3/myself``.
    Returns ``{"accountId", "displayName"}``; raises StepError (auth, network, ...)."""
    connection = _typed_connection("(tested)", config)
    client = await _client(resources, connection, timeout_seconds=10.0)
    _, body = await client.call("GET", f"{API}/myself")
    body = body if isinstance(body, Mapping) else {}
    facts = {"accountId": body.get("accountId"), "displayName": body.get("displayName")}
    result: dict[str, Any] = scrub_json(facts, client.secrets)
    return result
