"""Authentication (JWT, API keys) and role-based authorization over HTTP."""

from __future__ import annotations

import time

import httpx
import jwt

from tests.conftest import JWT_SECRET, auth
from tests.integration.test_api_support import (
    assert_problem,
    create_workflow,
    execute,
    noop_workflow,
    published_workflow,
)


def _jwt(secret: str = JWT_SECRET, **claims: object) -> dict[str, str]:
    now = int(time.time())
    payload = {"sub": "mallory", "tenant": "acme", "roles": ["admin"], "iat": now, "exp": now + 60}
    payload.update(claims)
    return {"Authorization": f"Bearer {jwt.encode(payload, secret, algorithm='HS256')}"}


BAD_CREDENTIALS = {
    "bad-scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "empty-bearer": {"Authorization": "Bearer "},
    "not-a-jwt": {"Authorization": "Bearer not.a.jwt"},
    "wrong-secret": _jwt(secret="another-secret-" + "y" * 40),
    "expired": _jwt(exp=int(time.time()) - 120),
    "no-tenant": _jwt(tenant=None),
    "no-expiry": {
        "Authorization": "Bearer "
        + jwt.encode({"sub": "x", "tenant": "acme", "roles": ["admin"]}, JWT_SECRET, "HS256")
    },
    "bad-tenant": _jwt(tenant="../etc"),
    "roles-not-a-list": _jwt(roles="admin"),
    "unknown-api-key": {"Authorization": "Bearer mk_doesnotexist"},
    "alg-none": {
        "Authorization": "Bearer "
        + jwt.encode({"sub": "x", "tenant": "acme", "roles": ["admin"]}, None, algorithm="none")
    },
}


async def test_missing_and_bad_credentials_are_401(client: httpx.AsyncClient) -> None:
    for name, headers in {"no-header": {"Authorization": ""}, **BAD_CREDENTIALS}.items():
        # The client sends an admin token by default; replace (or blank) it per case.
        r = await client.get("/api/workflows", headers=headers)
        assert r.status_code == 401, (name, r.text)
        assert_problem(r, 401, "unauthenticated")
        assert r.headers.get("www-authenticate", "").startswith("Bearer"), (name, r.headers)
    # Also on a write: nothing is created.
    r = await client.post(
        "/api/workflows", json=noop_workflow(), headers=BAD_CREDENTIALS["expired"]
    )
    assert_problem(r, 401, "unauthenticated")
    assert (await client.get("/api/workflows")).json()["items"] == []


async def test_no_authorization_header_at_all_is_401(client: httpx.AsyncClient) -> None:
    request = client.build_request("GET", "/api/executions")
    del request.headers["Authorization"]
    r = await client.send(request)
    assert_problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_roles(client: httpx.AsyncClient) -> None:
    viewer, editor, operator = (auth(roles=(role,)) for role in ("viewer", "editor", "operator"))
    wf = noop_workflow()

    # viewer: reads only
    assert_problem(await client.post("/api/workflows", json=wf, headers=viewer), 403, "forbidden")
    wid = await published_workflow(client, wf)
    eid = await execute(client, wid, {"name": "Ada"})
    for path in (
        "/api/workflows",
        f"/api/workflows/{wid}",
        "/api/executions",
        f"/api/executions/{eid}",
        f"/api/executions/{eid}/logs",
        "/api/dlq",
        "/api/human-tasks",
    ):
        r = await client.get(path, headers=viewer)
        assert r.status_code == 200, (path, r.text)
    r = await client.post(f"/api/workflows/{wid}/simulate", json={}, headers=viewer)
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/workflows/{wid}/execute", json={}, headers=viewer)
    assert_problem(r, 403, "forbidden")
    assert_problem(await client.post(f"/api/executions/{eid}/cancel", headers=viewer), 403)
    assert_problem(await client.put(f"/api/workflows/{wid}", json=wf, headers=viewer), 403)
    # Operating needs the operator (or admin) role, whether or not the target exists: the
    # role check comes first, so these are 403 and not 404.
    some_task = "/api/human-tasks/00000000-0000-4000-8000-000000000000/complete"
    for headers in (viewer, editor):
        for path, body in (
            (some_task, {"decision": "approve"}),
            (f"/api/executions/{eid}/replay", None),
            ("/api/dlq/1/replay", None),
        ):
            r = await client.post(path, json=body, headers=headers)
            assert_problem(r, 403, "forbidden")

    # editor: edits workflows, cannot run them
    r = await client.post("/api/workflows", json=wf, headers=editor)
    assert r.status_code == 201, r.text
    r = await client.put(f"/api/workflows/{wid}", json=noop_workflow("v2"), headers=editor)
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/workflows/{wid}/publish", headers=editor)
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/workflows/{wid}/execute", json={}, headers=editor)
    assert_problem(r, 403, "forbidden")
    assert_problem(await client.post(f"/api/executions/{eid}/cancel", headers=editor), 403)

    # operator: runs workflows, cannot edit them
    r = await client.post("/api/workflows", json=wf, headers=operator)
    assert_problem(r, 403, "forbidden")
    assert_problem(await client.post(f"/api/workflows/{wid}/publish", headers=operator), 403)
    assert_problem(await client.post(f"/api/workflows/{wid}/archive", headers=operator), 403)
    r = await client.post(
        f"/api/workflows/{wid}/execute", json={"input": {"name": "Op"}}, headers=operator
    )
    assert r.status_code == 202, r.text
    r = await client.post(f"/api/executions/{eid}/cancel", headers=operator)
    assert r.status_code == 200, r.text

    # no role at all: not even reads
    r = await client.get("/api/workflows", headers=auth(roles=()))
    assert_problem(r, 403, "forbidden")
    # A forbidden request changed nothing.
    names = {w["name"] for w in (await client.get("/api/workflows")).json()["items"]}
    assert names == {"hello", "v2"}


async def test_api_key_lifecycle(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/api-keys", json={"name": "ci", "roles": ["operator", "viewer"]})
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("mk_")
    assert created["roles"] == ["operator", "viewer"]
    assert created["revokedAt"] is None

    listed = (await client.get("/api/api-keys")).json()["items"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert key not in (await client.get("/api/api-keys")).text

    with_key = {"Authorization": f"Bearer {key}"}
    wid = await published_workflow(client, noop_workflow())
    # It authenticates, with exactly its roles.
    r = await client.get("/api/workflows", headers=with_key)
    assert r.status_code == 200, r.text
    assert [w["id"] for w in r.json()["items"]] == [wid]
    r = await client.post(f"/api/workflows/{wid}/execute", json={}, headers=with_key)
    assert r.status_code == 202, r.text
    assert_problem(await client.post("/api/workflows", json=noop_workflow(), headers=with_key), 403)
    assert_problem(await client.get("/api/api-keys", headers=with_key), 403, "forbidden")
    # It was used.
    listed = (await client.get("/api/api-keys")).json()["items"]
    assert listed[0]["lastUsedAt"] is not None

    r = await client.delete(f"/api/api-keys/{created['id']}")
    assert r.status_code == 204, r.text
    r = await client.get("/api/workflows", headers=with_key)
    assert_problem(r, 401, "unauthenticated")
    listed = (await client.get("/api/api-keys")).json()["items"]
    assert listed[0]["revokedAt"] is not None
    # Revoking again: it no longer exists as a live key.
    assert_problem(await client.delete(f"/api/api-keys/{created['id']}"), 404, "api_key_not_found")


async def test_invalid_api_key_requests_are_422(client: httpx.AsyncClient) -> None:
    for body in (
        {"name": "x", "roles": ["superuser"]},
        {"name": "x", "roles": []},
        {"name": "", "roles": ["viewer"]},
        {"name": "x", "roles": ["viewer"], "key": "mk_chosen"},
    ):
        r = await client.post("/api/api-keys", json=body)
        assert r.status_code == 422, (body, r.text)
        assert_problem(r, 422, "invalid_request")
    assert (await client.get("/api/api-keys")).json()["items"] == []


async def test_only_admins_manage_api_keys(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/api-keys", json={"name": "mine", "roles": ["viewer"]})
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    for role in ("editor", "operator", "viewer"):
        headers = auth(roles=(role,))
        r = await client.post(
            "/api/api-keys", json={"name": "sneaky", "roles": ["admin"]}, headers=headers
        )
        assert_problem(r, 403, "forbidden")
        assert_problem(await client.get("/api/api-keys", headers=headers), 403, "forbidden")
        r = await client.delete(f"/api/api-keys/{key_id}", headers=headers)
        assert_problem(r, 403, "forbidden")
    listed = (await client.get("/api/api-keys")).json()["items"]
    assert [(k["name"], k["revokedAt"]) for k in listed] == [("mine", None)]


async def test_created_by_is_the_token_subject(client: httpx.AsyncClient) -> None:
    wid = await create_workflow(client, noop_workflow())
    r = await client.post(f"/api/workflows/{wid}/publish", headers=_jwt(sub="alice"))
    assert r.status_code == 200, r.text
    versions = (await client.get(f"/api/workflows/{wid}")).json()["versions"]
    assert versions[0]["publishedBy"] == "alice"
