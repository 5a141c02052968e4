"""A small Jira Cloud (REST API v3) emulator for the ``jira`` connector's tests.

It follows the documented API for what the connector uses:

* auth: HTTP Basic ``email:apiToken`` or ``Authorization: Bearer <token>``; anything else
  answers 401 ``{"errorMessages": [...], "errors": {}}``;
* ``GET /rest/api/3/myself``;
* ``POST /rest/api/3/issue`` (201 ``{id, key, self}``; checks project, issue type, summary,
  ADF description and labels like Jira does, answering 400 with ``errors`` per field);
* ``GET`` / ``PUT /rest/api/3/issue/{key}`` (edit answers 204);
* ``GET`` / ``POST /rest/api/3/issue/{key}/transitions`` (one workflow per project; a
  transition is offered from every status but its target; doing one answers 204);
* ``POST /rest/api/3/search/jql`` (enhanced search) with a tiny JQL subset —
  ``labels = "x"``, ``project = KEY``, ``key = OPS-1`` joined by ``AND``; ``ORDER BY ...`` is
  ignored (issues come oldest first) — and opaque ``nextPageToken`` paging.

Switches: :meth:`FakeJira.fail_next` answers the next requests with a status (429 with
``Retry-After``, 5xx, ...); ``ambiguous_create`` makes the next create store the issue and then
answer 504 (``"504"``) or hang before answering it (``"hang"``), so the client cannot know
whether it worked. Every request is recorded in ``calls`` before it is answered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_ISSUE_TYPES = ("Task", "Bug", "Story")
# (transition id, name, target status) — the simplified "any status to any status" workflow.
DEFAULT_WORKFLOW = (
    ("11", "To Do", "To Do"),
    ("21", "Start work", "In Progress"),
    ("31", "Done", "Done"),
)

_LABEL = re.compile(r'labels\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s"]+))', re.IGNORECASE)
_PROJECT = re.compile(r"project\s*=\s*\"?([A-Za-z][A-Za-z0-9_]*)\"?", re.IGNORECASE)
_KEY = re.compile(r"(?:key|issuekey)\s*=\s*\"?([A-Za-z][A-Za-z0-9_]*-\d+)\"?", re.IGNORECASE)
_ORDER_BY = re.compile(r"\s+order\s+by\s+.*$|^\s*order\s+by\s+.*$", re.IGNORECASE | re.DOTALL)


@dataclass
class Call:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None


@dataclass
class Issue:
    id: str
    key: str
    project: str
    fields: dict[str, Any]
    status: str = "To Do"


@dataclass
class Project:
    key: str
    id: str
    issue_types: tuple[str, ...] = DEFAULT_ISSUE_TYPES
    workflow: tuple[tuple[str, str, str], ...] = DEFAULT_WORKFLOW


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    remaining: int
    message: str


def _error(status: int, messages: list[str], errors: dict[str, str] | None = None) -> Response:
    return JSONResponse({"errorMessages": messages, "errors": errors or {}}, status_code=status)


def _is_adf(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") == "doc"
        and value.get("version") == 1
        and isinstance(value.get("content"), list)
    )


@dataclass
class FakeJira:
    """ASGI app; ``async with serve_asgi(FakeJira()) as base_url: ...``."""

    email: str = "bot@example.com"
    api_token: str = "jira-api-token"
    bearer_token: str | None = None
    account_id: str = "5b10ac8d82e05b22cc7d4ef5"
    display_name: str = "Maestro Bot"
    hang_seconds: float = 5.0
    projects: dict[str, Project] = field(
        default_factory=lambda: {"OPS": Project("OPS", "10000"), "ENG": Project("ENG", "10001")}
    )
    issues: dict[str, Issue] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    ambiguous_create: Literal["504", "hang"] | None = None
    _failures: list[_Failure] = field(default_factory=list)
    _next_id: int = 10000
    _counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/rest/api/3/myself", self._myself, methods=["GET"]),
                Route("/rest/api/3/issue", self._create, methods=["POST"]),
                Route("/rest/api/3/issue/{key}", self._get, methods=["GET"]),
                Route("/rest/api/3/issue/{key}", self._edit, methods=["PUT"]),
                Route("/rest/api/3/issue/{key}/transitions", self._transitions, methods=["GET"]),
                Route("/rest/api/3/issue/{key}/transitions", self._transition, methods=["POST"]),
                Route("/rest/api/3/search/jql", self._search, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw = await request.body()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.calls.append(
            Call(
                method=request.method,
                path=request.url.path,
                query=request.url.query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=parsed,
            )
        )
        response: Response | None = None
        if not self._authorized(request.headers.get("authorization", "")):
            response = _error(
                401,
                ["You are not authenticated. Authentication required to perform this operation."],
            )
        elif self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.pop(0)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            response = JSONResponse(
                {"errorMessages": [failure.message], "errors": {}},
                status_code=failure.status,
                headers=headers,
            )
        if response is not None:
            await response(scope, receive, send)
            return

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)

    # --- switches and helpers for tests ---

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` authenticated requests with ``status``."""
        text = message or f"emulated failure {status}"
        self._failures.append(_Failure(status, retry_after, times, text))

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    def add_issue(self, project: str, summary: str, **fields: Any) -> Issue:
        return self._store(project, {"summary": summary, **fields})

    def _store(self, project: str, fields: dict[str, Any]) -> Issue:
        self._next_id += 1
        number = self._counters.get(project, 0) + 1
        self._counters[project] = number
        issue = Issue(
            id=str(self._next_id), key=f"{project}-{number}", project=project, fields=fields
        )
        self.issues[issue.key] = issue
        return issue

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except ValueError:
                return False
            return decoded == f"{self.email}:{self.api_token}"
        if scheme.lower() == "bearer":
            return self.bearer_token is not None and value == self.bearer_token
        return False

    def _self_url(self, request: Request, issue: Issue) -> str:
        return str(request.base_url).rstrip("/") + f"/rest/api/3/issue/{issue.id}"

    def _issue_json(
        self, request: Request, issue: Issue, wanted: list[str] | None
    ) -> dict[str, Any]:
        every = {
            **issue.fields,
            "status": {"name": issue.status},
            "project": {"key": issue.project},
        }
        out: dict[str, Any] = {
            "id": issue.id,
            "key": issue.key,
            "self": self._self_url(request, issue),
        }
        if wanted is None or "*all" in wanted or "*navigable" in wanted:
            out["fields"] = every
        else:
            out["fields"] = {name: every[name] for name in wanted if name in every}
        return out

    def _find(self, key: str) -> Issue | None:
        issue = self.issues.get(key.upper())
        if issue is None:  # Jira also accepts the numeric id
            issue = next((i for i in self.issues.values() if i.id == key), None)
        return issue

    # --- endpoints ---

    async def _myself(self, request: Request) -> Response:
        return JSONResponse(
            {
                "accountId": self.account_id,
                "accountType": "atlassian",
                "displayName": self.display_name,
                "emailAddress": self.email,
                "active": True,
                "timeZone": "Europe/Paris",
                "self": str(request.base_url).rstrip("/")
                + f"/rest/api/3/user?accountId={self.account_id}",
            }
        )

    def _check_fields(self, fields: dict[str, Any]) -> dict[str, str]:
        errors: dict[str, str] = {}
        description = fields.get("description")
        if description is not None and not _is_adf(description):
            errors["description"] = "Operation value must be an Atlassian Document"
        if "labels" in fields:
            labels = fields["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                errors["labels"] = "Labels must be a list of strings"
            else:
                for label in labels:
                    if " " in label:
                        errors["labels"] = f"The label '{label}' contains spaces which is invalid."
        if "summary" in fields and not (
            isinstance(fields["summary"], str) and fields["summary"].strip()
        ):
            errors["summary"] = "You must specify a summary of the issue."
        return errors

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return _error(400, ["Request body must contain fields"])
        errors: dict[str, str] = {}
        project_key = (fields.get("project") or {}).get("key")
        project = self.projects.get(str(project_key)) if project_key else None
        if project is None:
            errors["project"] = "valid project is required"
        issue_type = (fields.get("issuetype") or {}).get("name")
        if project is not None and issue_type not in project.issue_types:
            errors["issuetype"] = "Specify a valid issue type"
        if "summary" not in fields:
            errors["summary"] = "You must specify a summary of the issue."
        errors.update(self._check_fields(fields))
        if errors:
            return _error(400, [], errors)
        assert project is not None
        stored = {k: v for k, v in fields.items() if k not in ("project",)}
        stored.setdefault("labels", [])
        issue = self._store(project.key, stored)
        mode, self.ambiguous_create = self.ambiguous_create, None
        if mode == "hang":
            await asyncio.sleep(self.hang_seconds)
        if mode is not None:
            return Response(b"<html>504 Gateway Time-out</html>", status_code=504)
        return JSONResponse(
            {"id": issue.id, "key": issue.key, "self": self._self_url(request, issue)},
            status_code=201,
        )

    async def _get(self, request: Request) -> Response:
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, ["Issue does not exist or you do not have permission to see it."])
        wanted = request.query_params.get("fields")
        return JSONResponse(self._issue_json(request, issue, wanted.split(",") if wanted else None))

    async def _edit(self, request: Request) -> Response:
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, ["Issue does not exist or you do not have permission to see it."])
        body = await request.json()
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return _error(400, ["Request body must contain fields or update"])
        errors = self._check_fields(fields)
        for name in ("project", "issuetype"):
            if name in fields:
                errors[name] = (
                    f"Field '{name}' cannot be set. "
                    "It is not on the appropriate screen, or unknown."
                )
        if errors:
            return _error(400, [], errors)
        issue.fields.update(fields)
        return Response(status_code=204)

    def _available(self, issue: Issue) -> list[tuple[str, str, str]]:
        workflow = self.projects[issue.project].workflow
        return [t for t in workflow if t[2] != issue.status]

    async def _transitions(self, request: Request) -> Response:
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, ["Issue does not exist or you do not have permission to see it."])
        return JSONResponse(
            {
                "expand": "transitions",
                "transitions": [
                    {
                        "id": tid,
                        "name": name,
                        "to": {"name": target},
                        "hasScreen": False,
                        "isGlobal": True,
                        "isInitial": False,
                        "isAvailable": True,
                        "isConditional": False,
                    }
                    for tid, name, target in self._available(issue)
                ],
            }
        )

    async def _transition(self, request: Request) -> Response:
        issue = self._find(request.path_params["key"])
        if issue is None:
            return _error(404, ["Issue does not exist or you do not have permission to see it."])
        body = await request.json()
        transition = body.get("transition") if isinstance(body, dict) else None
        tid = str((transition or {}).get("id", ""))
        match = next((t for t in self._available(issue) if t[0] == tid), None)
        if match is None:
            return _error(400, [f"Transition id '{tid}' is not valid for this issue."])
        fields = body.get("fields")
        if isinstance(fields, dict):
            errors = self._check_fields(fields)
            if errors:
                return _error(400, [], errors)
            issue.fields.update(fields)
        issue.status = match[2]
        return Response(status_code=204)

    def _matches(self, jql: str) -> list[Issue] | str:
        """Issues matching the JQL subset, or an error message."""
        where = _ORDER_BY.sub("", jql).strip()
        issues = list(self.issues.values())
        if not where:
            return issues
        for clause in re.split(r"\s+AND\s+", where, flags=re.IGNORECASE):
            clause = clause.strip()
            if (m := _LABEL.fullmatch(clause)) is not None:
                label = (
                    m.group(1).replace('\\"', '"').replace("\\\\", "\\")
                    if m.group(1) is not None
                    else m.group(2)
                )
                issues = [i for i in issues if label in i.fields.get("labels", [])]
            elif (m := _PROJECT.fullmatch(clause)) is not None:
                key = m.group(1).upper()
                if key not in self.projects:
                    return f"The value '{m.group(1)}' does not exist for the field 'project'."
                issues = [i for i in issues if i.project == key]
            elif (m := _KEY.fullmatch(clause)) is not None:
                issues = [i for i in issues if i.key == m.group(1).upper()]
            else:
                return f"Error in the JQL Query: the emulator does not understand {clause!r}."
        return issues

    async def _search(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("jql"), str):
            return _error(400, ["The JQL query is required (unbounded queries are not allowed)."])
        found = self._matches(body["jql"])
        if isinstance(found, str):
            return _error(400, [found])
        max_results = int(body.get("maxResults", 50))
        start = 0
        token = body.get("nextPageToken")
        if token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
            except (ValueError, KeyError, TypeError):
                return _error(400, ["The nextPageToken is invalid."])
        page = found[start : start + max_results]
        wanted = body.get("fields")
        result: dict[str, Any] = {
            "issues": [
                self._issue_json(request, i, wanted if isinstance(wanted, list) else ["id"])
                for i in page
            ]
        }
        if start + max_results < len(found):
            result["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"offset": start + max_results}).encode()
            ).decode()
            result["isLast"] = False
        else:
            result["isLast"] = True
        return JSONResponse(result)
