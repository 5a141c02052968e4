"""The jira step handler against the Jira Cloud emulator (real HTTP) and PostgreSQL."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from maestro.connectors.base import ConnectorResources
from maestro.connectors.jira import check, idempotency_label, make_handler, text_to_adf
from maestro.engine.retry import ErrorClass, StepError
from maestro.engine.steps import StepContext
from maestro.secrets import SecretResolver
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.jira_api import FakeJira

TENANT = "acme"
EMAIL = "bot@example.com"
API_TOKEN = "jira-very-secret-api-token-123"
BEARER = "jira-very-secret-oauth-bearer-456"
BASIC_PAIR = base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
ALL_SECRETS = (API_TOKEN, BEARER, BASIC_PAIR)
EXECUTION = uuid.UUID(int=42)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeJira, str]]:
    app = FakeJira(email=EMAIL, api_token=API_TOKEN, bearer_token=BEARER, hang_seconds=1.0)
    async with serve_asgi(app) as url:
        yield app, url


@pytest.fixture
async def resources(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ConnectorResources]:
    monkeypatch.setenv("JIRA_TOKEN", API_TOKEN)
    monkeypatch.setenv("JIRA_BEARER", BEARER)
    monkeypatch.setenv("JIRA_WRONG", "not-the-token")
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", TENANT)
    res = ConnectorResources(pool=pool, secrets=SecretResolver(), http=httpx.AsyncClient())
    yield res
    await res.aclose()


def ref(name: str) -> dict[str, str]:
    return {"secretRef": f"env://{name}"}


def connection_config(
    base_url: str, *, bearer: bool = False, env_name: str = "JIRA_TOKEN", allowed: Any = ()
) -> dict[str, Any]:
    auth: dict[str, Any] = (
        {"type": "bearer", "token": ref("JIRA_BEARER")}
        if bearer
        else {"type": "basic", "email": EMAIL, "apiToken": ref(env_name)}
    )
    return {"baseUrl": base_url, "auth": auth, "allowedProjects": list(allowed)}


async def add_connection(
    pool: asyncpg.Pool, name: str, config: dict[str, Any], kind: str = "jira"
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO connections (tenant_id, name, type, description, config) "
            "VALUES ($1, $2, $3, '', $4)",
            TENANT,
            name,
            kind,
            config,
        )


@pytest.fixture
async def jira(
    fake: tuple[FakeJira, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> FakeJira:
    app, url = fake
    await add_connection(pool, "jira", connection_config(url + "/"))
    return app


def context(attempt: int = 1, step_id: str = "ticket") -> StepContext:
    return StepContext(
        tenant=TENANT,
        execution_id=EXECUTION,
        workflow_id=uuid.UUID(int=7),
        step_id=step_id,
        step_type="jira",
        attempt=attempt,
        correlation_id=None,
        state=None,
    )


async def run(
    resources: ConnectorResources,
    config: dict[str, Any],
    *,
    attempt: int = 1,
    timeout: float = 10.0,
    step_id: str = "ticket",
) -> Any:
    output = await make_handler(resources, timeout_seconds=timeout)(
        context(attempt, step_id), config
    )
    assert_no_secret(output)
    return output


async def fails(resources: ConnectorResources, config: dict[str, Any], **kwargs: Any) -> StepError:
    with pytest.raises(StepError) as caught:
        await run(resources, config, **kwargs)
    assert_no_secret(f"{caught.value} {caught.value!r}")
    return caught.value


def assert_no_secret(value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    for secret in ALL_SECRETS:
        assert secret not in text


CREATE = {
    "connection": "jira",
    "operation": "createIssue",
    "project": "OPS",
    "issueType": "Bug",
    "summary": "Disk full on db-1",
    "description": "Host: db-1\nDisk: /var\n\nPlease look.",
    "fields": {"priority": {"name": "High"}, "labels": ["ops"]},
}


# --- createIssue --------------------------------------------------------------------------------


async def test_create_issue_with_adf_description_and_label(
    jira: FakeJira, resources: ConnectorResources, fake: tuple[FakeJira, str]
) -> None:
    output = await run(resources, CREATE)
    _, url = fake
    assert output == {"key": "OPS-1", "id": "10001", "url": f"{url}/browse/OPS-1"}
    issue = jira.issues["OPS-1"]
    assert issue.fields["summary"] == "Disk full on db-1"
    assert issue.fields["issuetype"] == {"name": "Bug"}
    assert issue.fields["priority"] == {"name": "High"}
    assert issue.fields["description"] == text_to_adf("Host: db-1\nDisk: /var\n\nPlease look.")
    assert issue.fields["description"]["content"][0]["content"][1] == {"type": "hardBreak"}
    label = idempotency_label(f"{EXECUTION}:ticket")
    assert issue.fields["labels"] == ["ops", label]
    (call,) = jira.calls
    assert call.headers["authorization"] == f"Basic {BASIC_PAIR}"
    assert call.body["fields"]["project"] == {"key": "OPS"}


async def test_create_with_bearer_auth(
    fake: tuple[FakeJira, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(pool, "jira-oauth", connection_config(url, bearer=True))
    output = await run(resources, {**CREATE, "connection": "jira-oauth", "fields": {}})
    assert output["key"] == "OPS-1"
    assert app.calls[0].headers["authorization"] == f"Bearer {BEARER}"


async def test_fields_cannot_move_the_project_or_repeat_options(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    error = await fails(resources, {**CREATE, "fields": {"project": {"key": "ENG"}}})
    assert error.error_class == ErrorClass.VALIDATION
    error = await fails(resources, {**CREATE, "fields": {"summary": "again"}})
    assert error.error_class == ErrorClass.VALIDATION
    assert jira.calls == []


async def test_ambiguous_create_is_not_duplicated_on_retry(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    jira.ambiguous_create = "504"
    error = await fails(resources, CREATE)
    assert error.error_class == ErrorClass.PROVIDER_ERROR
    assert error.retryable
    assert len(jira.issues) == 1  # Jira did create it

    output = await run(resources, CREATE, attempt=2)
    assert output["key"] == "OPS-1"
    assert output["id"] == jira.issues["OPS-1"].id
    assert list(jira.issues) == ["OPS-1"]
    assert len(jira.calls_to("POST", "/rest/api/3/issue")) == 1
    (search,) = jira.calls_to("POST", "/rest/api/3/search/jql")
    label = idempotency_label(f"{EXECUTION}:ticket")
    assert search.body["jql"] == f'labels = "{label}"'


async def test_create_that_hangs_then_retry_finds_it(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    jira.ambiguous_create = "hang"
    error = await fails(resources, CREATE, timeout=0.5)
    assert error.error_class == ErrorClass.TIMEOUT
    output = await run(resources, CREATE, attempt=2)
    assert output["key"] == "OPS-1"
    assert list(jira.issues) == ["OPS-1"]


async def test_retry_creates_when_the_first_attempt_created_nothing(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    jira.fail_next(503)
    error = await fails(resources, CREATE)
    assert error.error_class == ErrorClass.PROVIDER_ERROR
    assert jira.issues == {}
    output = await run(resources, CREATE, attempt=2)
    assert output["key"] == "OPS-1"
    # another step of the same execution gets its own issue
    other = await run(resources, CREATE, attempt=2, step_id="second")
    assert other["key"] == "OPS-2"


# --- updateIssue ----------------------------------------------------------------------------------


async def test_update_issue(jira: FakeJira, resources: ConnectorResources) -> None:
    jira.add_issue("OPS", "old")
    output = await run(
        resources,
        {
            "connection": "jira",
            "operation": "updateIssue",
            "issueKey": "ops-1",
            "summary": "new",
            "description": "line 1\nline 2",
            "fields": {"labels": ["triaged"]},
        },
    )
    assert output["key"] == "OPS-1"
    assert output["url"].endswith("/browse/OPS-1")
    fields = jira.issues["OPS-1"].fields
    assert fields["summary"] == "new"
    assert fields["labels"] == ["triaged"]
    assert fields["description"] == text_to_adf("line 1\nline 2")
    (call,) = jira.calls
    assert (call.method, call.path) == ("PUT", "/rest/api/3/issue/OPS-1")


async def test_update_missing_issue_is_not_found(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    error = await fails(
        resources,
        {"connection": "jira", "operation": "updateIssue", "issueKey": "OPS-99", "summary": "x"},
    )
    assert error.error_class == ErrorClass.NOT_FOUND
    assert "Issue does not exist" in error.message


# --- transitionIssue ------------------------------------------------------------------------------


async def test_transition_by_name_and_by_id(jira: FakeJira, resources: ConnectorResources) -> None:
    jira.add_issue("OPS", "work")
    step = {"connection": "jira", "operation": "transitionIssue", "issueKey": "OPS-1"}
    output = await run(resources, {**step, "transition": "start work"})
    assert output == {"key": "OPS-1", "transition": {"id": "21", "name": "Start work"}}
    assert jira.issues["OPS-1"].status == "In Progress"
    output = await run(resources, {**step, "transition": "31"})
    assert output == {"key": "OPS-1", "transition": {"id": "31", "name": "Done"}}
    assert jira.issues["OPS-1"].status == "Done"
    posts = jira.calls_to("POST", "/rest/api/3/issue/OPS-1/transitions")
    assert [p.body for p in posts] == [{"transition": {"id": "21"}}, {"transition": {"id": "31"}}]


async def test_unknown_transition_lists_the_available_ones(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    jira.add_issue("OPS", "work")
    error = await fails(
        resources,
        {
            "connection": "jira",
            "operation": "transitionIssue",
            "issueKey": "OPS-1",
            "transition": "Reopen",
        },
    )
    assert error.error_class == ErrorClass.VALIDATION
    assert "Start work (id 21)" in error.message
    assert "Done (id 31)" in error.message
    assert jira.calls_to("POST", "/rest/api/3/issue/OPS-1/transitions") == []


# --- searchIssues ---------------------------------------------------------------------------------


async def test_search_pages_through_three_pages(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    for n in range(5):
        jira.add_issue("OPS", f"issue {n}")
    jira.add_issue("ENG", "elsewhere")
    step: dict[str, Any] = {
        "connection": "jira",
        "operation": "searchIssues",
        "jql": "project = OPS ORDER BY created DESC",
        "maxResults": 2,
    }
    seen: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        config = {**step, "nextPageToken": token} if token else step
        output = await run(resources, config)
        pages += 1
        seen += [issue["key"] for issue in output["issues"]]
        for issue in output["issues"]:
            assert issue["status"] == "To Do"
            assert issue["summary"].startswith("issue ")
            assert issue["id"]
        token = output["nextPageToken"]
        if token is None:
            break
    assert pages == 3
    assert seen == ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]
    first = jira.calls_to("POST", "/rest/api/3/search/jql")[0]
    assert first.body == {
        "jql": "project = OPS ORDER BY created DESC",
        "maxResults": 2,
        "fields": ["summary", "status"],
    }


async def test_search_bad_jql_is_validation(jira: FakeJira, resources: ConnectorResources) -> None:
    error = await fails(
        resources, {"connection": "jira", "operation": "searchIssues", "jql": "assignee ~ me"}
    )
    assert error.error_class == ErrorClass.VALIDATION
    assert "JQL" in error.message


# --- allowedProjects ------------------------------------------------------------------------------


async def test_allowed_projects_denies_without_any_request(
    fake: tuple[FakeJira, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    app, url = fake
    await add_connection(pool, "ops-only", connection_config(url, allowed=["OPS"]))
    app.add_issue("ENG", "not yours")
    configs: list[dict[str, Any]] = [
        {**CREATE, "connection": "ops-only", "project": "ENG"},
        {"connection": "ops-only", "operation": "updateIssue", "issueKey": "ENG-1", "summary": "x"},
        {
            "connection": "ops-only",
            "operation": "transitionIssue",
            "issueKey": "eng-1",
            "transition": "Done",
        },
    ]
    for config in configs:
        error = await fails(resources, config)
        assert error.error_class == ErrorClass.POLICY_DENIED
        assert "ENG" in error.message
        assert not error.retryable
    assert app.calls == []
    # the allowed project works, and a search drops what the connection may not see
    assert (await run(resources, {**CREATE, "connection": "ops-only"}))["key"] == "OPS-1"
    output = await run(
        resources,
        {"connection": "ops-only", "operation": "searchIssues", "jql": "ORDER BY created"},
    )
    assert [i["key"] for i in output["issues"]] == ["OPS-1"]


# --- error classes, secrets ----------------------------------------------------------------------


async def test_bad_issue_type_is_validation_with_jira_errors(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    error = await fails(resources, {**CREATE, "issueType": "Epic Saga"})
    assert error.error_class == ErrorClass.VALIDATION
    assert "issuetype: Specify a valid issue type" in error.message
    assert error.message.startswith("POST http://127.0.0.1:")


async def test_wrong_token_is_auth(
    fake: tuple[FakeJira, str], resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    _, url = fake
    await add_connection(pool, "wrong", connection_config(url, env_name="JIRA_WRONG"))
    error = await fails(resources, {**CREATE, "connection": "wrong"})
    assert error.error_class == ErrorClass.AUTH
    assert "not authenticated" in error.message
    assert "not-the-token" not in error.message


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (403, ErrorClass.AUTH),
        (429, ErrorClass.RATE_LIMITED),
        (500, ErrorClass.PROVIDER_ERROR),
        (503, ErrorClass.PROVIDER_ERROR),
    ],
)
async def test_status_error_classes(
    jira: FakeJira, resources: ConnectorResources, status: int, error_class: ErrorClass
) -> None:
    jira.fail_next(status, retry_after="7")
    error = await fails(
        resources, {"connection": "jira", "operation": "searchIssues", "jql": "project = OPS"}
    )
    assert error.error_class == error_class
    assert error.retry_after == (None if status == 403 else 7.0)


async def test_provider_echoing_the_token_is_scrubbed(
    jira: FakeJira, resources: ConnectorResources
) -> None:
    jira.fail_next(400, message=f"bad header Basic {BASIC_PAIR} token {API_TOKEN}")
    error = await fails(resources, CREATE)
    assert error.error_class == ErrorClass.VALIDATION
    assert "***" in error.message


async def test_network_failure_and_timeout(
    resources: ConnectorResources, pool: asyncpg.Pool, fake: tuple[FakeJira, str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await add_connection(pool, "down", connection_config(f"http://127.0.0.1:{port}"))
    error = await fails(resources, {**CREATE, "connection": "down"})
    assert error.error_class == ErrorClass.NETWORK
    app, _ = fake
    await add_connection(pool, "slow", connection_config(fake[1]))
    app.ambiguous_create = "hang"
    error = await fails(resources, {**CREATE, "connection": "slow"}, timeout=0.3)
    assert error.error_class == ErrorClass.TIMEOUT


async def test_missing_and_mistyped_connections(
    resources: ConnectorResources, pool: asyncpg.Pool
) -> None:
    error = await fails(resources, {**CREATE, "connection": "nope"})
    assert error.error_class == ErrorClass.NOT_FOUND
    await add_connection(pool, "web", {"baseUrl": "https://example.com"}, kind="http")
    error = await fails(resources, {**CREATE, "connection": "web"})
    assert error.error_class == ErrorClass.VALIDATION


# --- check ------------------------------------------------------------------------------------


async def test_check_reports_the_account(
    fake: tuple[FakeJira, str], resources: ConnectorResources
) -> None:
    app, url = fake
    facts = await check(resources, connection_config(url))
    assert facts == {"accountId": app.account_id, "displayName": "Maestro Bot"}
    facts = await check(resources, connection_config(url, bearer=True))
    assert facts["accountId"] == app.account_id
    assert_no_secret(facts)
    with pytest.raises(StepError) as caught:
        await check(resources, connection_config(url, env_name="JIRA_WRONG"))
    assert caught.value.error_class == ErrorClass.AUTH
    assert_no_secret(str(caught.value))
