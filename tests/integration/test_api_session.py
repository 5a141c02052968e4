"""Browser sessions: POST/DELETE /api/session, and the CSRF (double-submit token plus
same-origin Origin) checks on cookie-authenticated writes, as a browser or client sees them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
import httpx
import jwt
import pytest

from maestro.api.app import create_app
from maestro.settings import Settings, SettingsError, load_settings
from tests.conftest import JWT_SECRET, auth, token
from tests.integration.test_api_support import assert_problem, noop_workflow

ORIGIN = "http://test"  # the clients' base_url, so the API's own origin
CONSOLE = "https://console.example.com"
TWELVE_HOURS = 12 * 60 * 60


@asynccontextmanager
async def browser_client(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[httpx.AsyncClient]:
    """Like the ``client`` fixture but with no default Authorization header."""
    app = create_app(settings, pool)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
            yield c


@pytest.fixture
async def browser(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with browser_client(settings, pool) as c:
        yield c


def parse_set_cookies(response: httpx.Response) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (value, {lower-cased attribute: value}) for every Set-Cookie header."""
    cookies = {}
    for header in response.headers.get_list("set-cookie"):
        first, *rest = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        attributes = {}
        for attribute in rest:
            key, _, attr_value = attribute.partition("=")
            attributes[key.lower()] = attr_value
        cookies[name] = (value, attributes)
    return cookies


async def sign_in(c: httpx.AsyncClient, jwt_token: str | None = None) -> tuple[str, str]:
    """(session cookie value, CSRF token) from POST /api/session."""
    r = await c.post("/api/session", headers={"Authorization": f"Bearer {jwt_token or token()}"})
    assert r.status_code == 200, r.text
    # httpx would not send Secure cookies over http://; every test sets Cookie itself.
    c.cookies.clear()
    cookies = parse_set_cookies(r)
    return cookies["maestro_session"][0], cookies["maestro_csrf"][0]


def cookie_header(session: str, csrf: str | None = None) -> dict[str, str]:
    value = f"maestro_session={session}"
    if csrf is not None:
        value += f"; maestro_csrf={csrf}"
    return {"Cookie": value}


def write_headers(session: str, csrf: str, **extra: str) -> dict[str, str]:
    """What the console's own page sends on a write."""
    return {**cookie_header(session, csrf), "X-CSRF-Token": csrf, "Origin": ORIGIN, **extra}


async def workflow_names(c: httpx.AsyncClient) -> list[str]:
    r = await c.get("/api/workflows", headers=auth())
    assert r.status_code == 200, r.text
    return [w["name"] for w in r.json()["items"]]


async def test_sign_in_sets_the_cookies(browser: httpx.AsyncClient) -> None:
    jwt_token = token(roles=("editor", "viewer"), sub="ada")
    r = await browser.post("/api/session", headers={"Authorization": f"Bearer {jwt_token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"subject", "tenant", "roles", "expiresAt", "csrfToken"}
    assert (body["subject"], body["tenant"], body["roles"]) == ("ada", "acme", ["editor", "viewer"])
    assert body["expiresAt"].endswith("Z")
    assert r.headers["cache-control"] == "no-store"

    cookies = parse_set_cookies(r)
    assert set(cookies) == {"maestro_session", "maestro_csrf"}
    session_value, session_attrs = cookies["maestro_session"]
    csrf_value, csrf_attrs = cookies["maestro_csrf"]
    # A one-hour JWT is short enough to be the cookie itself.
    assert session_value == jwt_token
    assert set(session_attrs) == {"max-age", "path", "secure", "httponly", "samesite"}
    assert session_attrs["path"] == "/api"
    assert session_attrs["samesite"] == "Strict"
    # The page's script must read the CSRF cookie, so it is not HttpOnly.
    assert set(csrf_attrs) == {"max-age", "path", "secure", "samesite"}
    assert csrf_attrs["path"] == "/"
    assert csrf_attrs["samesite"] == "Strict"
    for attrs in (session_attrs, csrf_attrs):
        assert 3590 <= int(attrs["max-age"]) <= 3600
    # 32 random bytes, urlsafe base64 without padding, echoed in the body.
    assert csrf_value == body["csrfToken"]
    assert len(csrf_value) == 43
    assert set(csrf_value) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    # Each sign-in gets a fresh CSRF token.
    _, other_csrf = await sign_in(browser, jwt_token)
    assert other_csrf != csrf_value


async def test_long_lived_jwt_gets_a_twelve_hour_session(browser: httpx.AsyncClient) -> None:
    long_lived = jwt.encode(
        {"sub": "ada", "tenant": "acme", "roles": ["admin"], "exp": int(time.time()) + 30 * 86400},
        JWT_SECRET,
        algorithm="HS256",
    )
    r = await browser.post("/api/session", headers={"Authorization": f"Bearer {long_lived}"})
    assert r.status_code == 200, r.text
    cookies = parse_set_cookies(r)
    session, attrs = cookies["maestro_session"]
    assert TWELVE_HOURS - 10 <= int(attrs["max-age"]) <= TWELVE_HOURS
    assert cookies["maestro_csrf"][1]["max-age"] == attrs["max-age"]
    # The cookie holds a new token, with the same identity, that itself expires in 12 h.
    assert session != long_lived
    claims = jwt.decode(session, JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["tenant"], claims["roles"]) == ("ada", "acme", ["admin"])
    assert claims["exp"] <= time.time() + TWELVE_HOURS
    expires_at = datetime.fromisoformat(r.json()["expiresAt"].replace("Z", "+00:00"))
    assert expires_at.timestamp() == claims["exp"]
    # ... and it works.
    r = await browser.get("/api/workflows", headers=cookie_header(session))
    assert r.status_code == 200, r.text


async def test_sign_in_needs_a_jwt_bearer(browser: httpx.AsyncClient) -> None:
    r = await browser.post("/api/api-keys", json={"name": "ci", "roles": ["admin"]}, headers=auth())
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    r = await browser.post("/api/session", headers={"Authorization": f"Bearer {key}"})
    body = assert_problem(r, 400, "session_needs_jwt")
    assert "JWT" in body["detail"]
    assert "set-cookie" not in r.headers

    expired = jwt.encode({"sub": "x", "tenant": "acme", "exp": 1}, JWT_SECRET, "HS256")
    for headers in (
        {},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Bearer {expired}"},
    ):
        r = await browser.post("/api/session", headers=headers)
        assert_problem(r, 401, "unauthenticated")
        assert "set-cookie" not in r.headers

    # A session cannot renew itself: the cookie is not a credential for signing in.
    session, csrf = await sign_in(browser)
    r = await browser.post("/api/session", headers=write_headers(session, csrf))
    assert_problem(r, 401, "unauthenticated")


async def test_cookie_reads_need_no_csrf_token(browser: httpx.AsyncClient) -> None:
    session, _ = await sign_in(browser)
    r = await browser.get("/api/workflows", headers=cookie_header(session))
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []


async def test_cookie_writes_need_the_csrf_token_and_our_origin(
    browser: httpx.AsyncClient,
) -> None:
    session, csrf = await sign_in(browser)
    wf = noop_workflow()

    r = await browser.post("/api/workflows", json=wf, headers=write_headers(session, csrf))
    assert r.status_code == 201, r.text

    rejected: dict[str, tuple[dict[str, str], str]] = {
        "no header": ({**cookie_header(session, csrf), "Origin": ORIGIN}, "csrf_token_invalid"),
        "no csrf cookie": (
            {**cookie_header(session), "X-CSRF-Token": csrf, "Origin": ORIGIN},
            "csrf_token_invalid",
        ),
        "wrong token": (
            write_headers(session, csrf, **{"X-CSRF-Token": csrf[:-1] + "x"}),
            "csrf_token_invalid",
        ),
        "both empty": (
            {**cookie_header(session, ""), "X-CSRF-Token": "", "Origin": ORIGIN},
            "csrf_token_invalid",
        ),
        "cross-site origin": (
            write_headers(session, csrf, Origin="https://evil.example"),
            "origin_not_allowed",
        ),
        "other scheme": (write_headers(session, csrf, Origin="https://test"), "origin_not_allowed"),
        "other port": (
            write_headers(session, csrf, Origin="http://test:8080"),
            "origin_not_allowed",
        ),
        "sibling host": (
            write_headers(session, csrf, Origin="http://test.evil.example"),
            "origin_not_allowed",
        ),
        "origin null": (write_headers(session, csrf, Origin="null"), "origin_not_allowed"),
        "empty origin, same-origin referer": (
            write_headers(session, csrf, Origin="", Referer=f"{ORIGIN}/console"),
            "origin_not_allowed",
        ),
        "origin with a path": (
            write_headers(session, csrf, Origin="http://test/"),
            "origin_not_allowed",
        ),
        "null origin, same-origin referer": (
            write_headers(session, csrf, Origin="null", Referer=f"{ORIGIN}/console"),
            "origin_not_allowed",
        ),
        "console not configured": (
            write_headers(session, csrf, Origin=CONSOLE),
            "origin_not_allowed",
        ),
    }
    for name, (headers, code) in rejected.items():
        r = await browser.post("/api/workflows", json=noop_workflow(name), headers=headers)
        assert r.status_code == 403, (name, r.text)
        assert_problem(r, 403, code)

    # Without Origin, the Referer's origin decides; with neither, the write is refused.
    no_origin = {**cookie_header(session, csrf), "X-CSRF-Token": csrf}
    r = await browser.post(
        "/api/workflows",
        json=noop_workflow("via-referer"),
        headers={**no_origin, "Referer": f"{ORIGIN}/console/workflows?tab=new"},
    )
    assert r.status_code == 201, r.text
    r = await browser.post(
        "/api/workflows",
        json=noop_workflow("evil-referer"),
        headers={**no_origin, "Referer": "https://evil.example/http://test/"},
    )
    assert_problem(r, 403, "origin_not_allowed")
    r = await browser.post("/api/workflows", json=noop_workflow("anonymous"), headers=no_origin)
    body = assert_problem(r, 403, "origin_not_allowed")
    assert "MAESTRO_ALLOWED_ORIGINS" in body["detail"]

    # The same origin spelled with the default port or in capitals is the same origin.
    for origin in ("http://test:80", "HTTP://TEST"):
        r = await browser.post(
            "/api/workflows",
            json=noop_workflow(f"spelled {origin}"),
            headers=write_headers(session, csrf, Origin=origin),
        )
        assert r.status_code == 201, (origin, r.text)

    # Other methods are writes too.
    wid = (await browser.get("/api/workflows", headers=auth())).json()["items"][0]["id"]
    r = await browser.put(f"/api/workflows/{wid}", json=wf, headers=cookie_header(session, csrf))
    assert_problem(r, 403, "csrf_token_invalid")

    # Nothing was created (or changed) by the refused requests.
    assert sorted(await workflow_names(browser)) == sorted(
        ["hello", "via-referer", "spelled http://test:80", "spelled HTTP://TEST"]
    )


async def test_allowed_origins_setting(pool: asyncpg.Pool) -> None:
    settings = Settings(
        jwt_secret=JWT_SECRET,
        database_url="postgresql://unused",
        allowed_origins=f"{CONSOLE},http://localhost:5173",
    )
    async with browser_client(settings, pool) as c:
        session, csrf = await sign_in(c)
        for i, origin in enumerate((CONSOLE, "http://localhost:5173", ORIGIN)):
            r = await c.post(
                "/api/workflows",
                json=noop_workflow(f"wf{i}"),
                headers=write_headers(session, csrf, Origin=origin),
            )
            assert r.status_code == 201, (origin, r.text)
        for origin in ("https://evil.example", "http://console.example.com", "null"):
            r = await c.post(
                "/api/workflows",
                json=noop_workflow("refused"),
                headers=write_headers(session, csrf, Origin=origin),
            )
            assert_problem(r, 403, "origin_not_allowed")
        r = await c.post(
            "/api/workflows",
            json=noop_workflow("via-referer"),
            headers={
                **cookie_header(session, csrf),
                "X-CSRF-Token": csrf,
                "Referer": f"{CONSOLE}/x",
            },
        )
        assert r.status_code == 201, r.text
        assert sorted(await workflow_names(c)) == ["via-referer", "wf0", "wf1", "wf2"]


def test_allowed_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAESTRO_ALLOWED_ORIGINS", f" {CONSOLE} , http://localhost:5173,")
    assert load_settings().allowed_origins == (CONSOLE, "http://localhost:5173")
    monkeypatch.delenv("MAESTRO_ALLOWED_ORIGINS")
    assert load_settings().allowed_origins == ()
    for bad in (
        f"{CONSOLE}/",
        "console.example.com",
        "null",
        "ftp://x.example",
        "https://*.example.com",
        "https://x:port",
    ):
        monkeypatch.setenv("MAESTRO_ALLOWED_ORIGINS", f"{CONSOLE},{bad}")
        with pytest.raises(SettingsError, match="MAESTRO_ALLOWED_ORIGINS") as raised:
            load_settings()
        assert repr(bad) in str(raised.value)


async def test_bearer_requests_ignore_cookies(browser: httpx.AsyncClient) -> None:
    session, csrf = await sign_in(browser)
    # A bearer write with a session cookie but no CSRF header or Origin: exempt.
    r = await browser.post(
        "/api/workflows",
        json=noop_workflow("bearer"),
        headers={**auth(), **cookie_header(session, csrf)},
    )
    assert r.status_code == 201, r.text
    # A broken cookie does not matter when there is a bearer token ...
    r = await browser.post(
        "/api/workflows",
        json=noop_workflow("bad-cookie"),
        headers={**auth(), **cookie_header("garbage", "x"), "Origin": "https://evil.example"},
    )
    assert r.status_code == 201, r.text
    # ... nor does a good cookie rescue a bad (or empty) Authorization header.
    for bad in ("Bearer not.a.jwt", ""):
        r = await browser.get(
            "/api/workflows", headers={"Authorization": bad, **cookie_header(session)}
        )
        assert_problem(r, 401, "unauthenticated")
    assert sorted(await workflow_names(browser)) == ["bad-cookie", "bearer"]


async def test_bad_session_cookies_are_401(browser: httpx.AsyncClient) -> None:
    now = int(time.time())
    claims = {"sub": "ada", "tenant": "acme", "roles": ["admin"], "iat": now - 7200}
    expired = jwt.encode({**claims, "exp": now - 60}, JWT_SECRET, algorithm="HS256")
    r = await browser.get("/api/workflows", headers=cookie_header(expired))
    body = assert_problem(r, 401, "unauthenticated")
    assert "POST /api/session" in body["detail"]
    r = await browser.post(
        "/api/workflows", json=noop_workflow(), headers=write_headers(expired, "csrf-token")
    )
    assert_problem(r, 401, "unauthenticated")

    forged = jwt.encode({**claims, "exp": now + 60}, "another-secret-" + "y" * 40, "HS256")
    r = await browser.get("/api/workflows", headers=cookie_header(forged))
    assert_problem(r, 401, "unauthenticated")

    # An API key is never accepted from a cookie.
    r = await browser.post("/api/api-keys", json={"name": "ci", "roles": ["admin"]}, headers=auth())
    key = r.json()["key"]
    r = await browser.get("/api/workflows", headers=cookie_header(key))
    assert_problem(r, 401, "unauthenticated")

    # No header and no (or an empty) cookie: 401 as ever.
    for headers in ({}, {"Cookie": "maestro_session="}, {"Cookie": "maestro_csrf=abc"}):
        r = await browser.get("/api/workflows", headers=headers)
        assert_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert await workflow_names(browser) == []


async def test_sign_out_clears_the_cookies(browser: httpx.AsyncClient) -> None:
    session, csrf = await sign_in(browser)
    r = await browser.delete("/api/session", headers=cookie_header(session, csrf))
    assert_problem(r, 403, "csrf_token_invalid")
    assert "set-cookie" not in r.headers
    r = await browser.delete(
        "/api/session", headers=write_headers(session, csrf, Origin="https://evil.example")
    )
    assert_problem(r, 403, "origin_not_allowed")
    assert "set-cookie" not in r.headers

    r = await browser.delete("/api/session", headers=write_headers(session, csrf))
    assert r.status_code == 204, r.text
    assert r.content == b""
    cookies = parse_set_cookies(r)
    assert set(cookies) == {"maestro_session", "maestro_csrf"}
    for name, path in (("maestro_session", "/api"), ("maestro_csrf", "/")):
        value, attrs = cookies[name]
        assert value == ""
        assert attrs["max-age"] == "0"
        # Same Path (and flags) as when set, or the browser would keep the original.
        assert attrs["path"] == path
        assert "secure" in attrs
        assert attrs["samesite"] == "Strict"
    assert "httponly" in cookies["maestro_session"][1]
    assert "httponly" not in cookies["maestro_csrf"][1]
    # A bearer caller may sign out too (clearing whatever cookies the browser holds).
    r = await browser.delete("/api/session", headers=auth())
    assert r.status_code == 204, r.text
    r = await browser.delete("/api/session")
    assert_problem(r, 401, "unauthenticated")


async def test_security_headers_on_every_answer(browser: httpx.AsyncClient) -> None:
    session, csrf = await sign_in(browser)
    answers: list[tuple[int, httpx.Response]] = [
        (200, await browser.post("/api/session", headers=auth())),
        (400, await browser.post("/api/session", headers={"Authorization": "Bearer mk_nope"})),
        (401, await browser.post("/api/session")),
        (200, await browser.get("/api/workflows", headers=cookie_header(session))),
        (401, await browser.get("/api/workflows", headers=cookie_header("garbage"))),
        (403, await browser.post("/api/workflows", json={}, headers=cookie_header(session, csrf))),
        (
            403,
            await browser.post(
                "/api/workflows", json={}, headers=write_headers(session, csrf, Origin="null")
            ),
        ),
        (204, await browser.delete("/api/session", headers=write_headers(session, csrf))),
    ]
    for status, r in answers:
        assert r.status_code == status, (r.request.method, r.request.url, r.text)
        assert r.headers["x-content-type-options"] == "nosniff", r.headers
        assert r.headers["strict-transport-security"].startswith("max-age="), r.headers
