"""Authentication (JWT or API key, or a browser session cookie holding a JWT) and the one
place where authorization is decided."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import jwt
from fastapi import Request

from maestro.api.errors import ApiError
from maestro.db.queries import sql

ROLES = ("admin", "editor", "operator", "viewer")
API_KEY_PREFIX = "mk_"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Browser sessions (POST /api/session): the JWT rides in an HttpOnly cookie, and writes must
# echo the readable CSRF cookie in a header (double submit) and come from an allowed origin.
SESSION_COOKIE = "maestro_session"
CSRF_COOKIE = "maestro_csrf"
CSRF_HEADER = "X-CSRF-Token"
# A stolen cookie (or a forgotten browser) should not stay useful for as long as a CLI token.
SESSION_MAX_SECONDS = 12 * 60 * 60
# Safe methods (RFC 9110) change nothing, so a forged one gains an attacker nothing (the
# answer is not readable cross-site); every other method is a write and is checked.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BEARER = "the bearer token"
_COOKIE = "the session cookie"


class Action(StrEnum):
    READ = "read"
    EDIT = "edit"  # create, update, publish, archive workflows
    OPERATE = "operate"  # execute, cancel, replay, approve
    ADMIN = "admin"  # API keys


# Richer attribute-based policy comes later (DESIGN §6); it plugs in here.
_ALLOWED: dict[Action, frozenset[str]] = {
    Action.READ: frozenset(ROLES),
    Action.EDIT: frozenset({"admin", "editor"}),
    Action.OPERATE: frozenset({"admin", "operator"}),
    Action.ADMIN: frozenset({"admin"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant: str
    roles: frozenset[str]

    def may(self, action: Action) -> bool:
        return not self.roles.isdisjoint(_ALLOWED[action])


def authorize(principal: Principal, action: Action) -> None:
    if not principal.may(action):
        allowed = ", ".join(sorted(_ALLOWED[action]))
        raise ApiError(
            403,
            "forbidden",
            f"this needs one of the roles {allowed}; your token has "
            f"{', '.join(sorted(principal.roles)) or 'none'}",
        )


def _unauthenticated(detail: str) -> ApiError:
    return ApiError(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})


def issue_token(secret: str, *, subject: str, tenant: str, roles: list[str], ttl: int) -> str:
    now = int(time.time())
    claims = {"sub": subject, "tenant": tenant, "roles": roles, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


def new_api_key() -> tuple[str, bytes]:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def hash_api_key(key: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).digest()


def _decode_jwt(token: str, secret: str, source: str) -> dict[str, Any]:
    """The verified claims; ``source`` names where the token came from, for the message."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "tenant", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        if source == _COOKIE:
            raise _unauthenticated(
                "the session has expired; sign in again with POST /api/session"
            ) from None
        raise _unauthenticated("the token has expired; ask for a new one") from None
    except jwt.InvalidTokenError:
        raise _unauthenticated(
            f"{source} is not a valid JWT signed by this server (claims sub, tenant "
            "and exp are required)"
        ) from None
    return claims


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    tenant, roles = claims.get("tenant"), claims.get("roles", [])
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise _unauthenticated("the token's tenant claim must be 1-64 letters, digits, _ . -")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _unauthenticated("the token's roles claim must be a list of role names")
    return Principal(str(claims["sub"]), tenant, frozenset(roles))


def _principal_from_jwt(token: str, secret: str, source: str = _BEARER) -> Principal:
    return _principal_from_claims(_decode_jwt(token, secret, source))


def _bearer_token(header: str) -> str:
    if not header:
        raise _unauthenticated("send Authorization: Bearer <JWT or API key>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthenticated("the Authorization header must be 'Bearer <JWT or API key>'")
    return token.strip()


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization")
    state = request.app.state
    if header is not None:
        # A bearer request ignores cookies entirely: a browser never attaches this header on
        # its own, so such a request cannot be forged cross-site and needs no CSRF check.
        principal = await _principal_from_bearer(request, _bearer_token(header))
    elif session := request.cookies.get(SESSION_COOKIE):
        principal = _principal_from_jwt(session, state.settings.jwt_secret, _COOKIE)
        if request.method not in _SAFE_METHODS:
            # The browser attaches the cookie to any request to us, even one a hostile page
            # triggers; only our own pages can read the CSRF cookie and set our Origin.
            _check_csrf(request)
            _check_origin(request, state.settings.allowed_origins)
    else:
        raise _unauthenticated(
            "send Authorization: Bearer <JWT or API key> (or, from a browser, sign in with "
            "POST /api/session)"
        )
    await _ensure_tenant(request, principal.tenant)
    return principal


async def _principal_from_bearer(request: Request, token: str) -> Principal:
    state = request.app.state
    if not token.startswith(API_KEY_PREFIX):
        return _principal_from_jwt(token, state.settings.jwt_secret)
    async with state.pool.acquire() as conn:
        row = await conn.fetchrow(sql("authenticate_api_key"), hash_api_key(token))
    if row is None:
        raise _unauthenticated("the API key is unknown or revoked")
    return Principal(f"apikey:{row['id']}", row["tenant_id"], frozenset(row["roles"]))


def _check_csrf(request: Request) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    # Compared as bytes: compare_digest refuses non-ASCII str, and headers may hold any byte.
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(
            403,
            "csrf_token_invalid",
            f"a {request.method} authenticated by the session cookie needs the header "
            f"{CSRF_HEADER} set to the csrfToken returned by POST /api/session (also in the "
            f"{CSRF_COOKIE} cookie); requests with an Authorization header need none",
        )


def _check_origin(request: Request, allowed: Iterable[str]) -> None:
    origin_header = request.headers.get("origin")
    if origin_header is not None:
        # "null" (sandboxed frames, file: pages, some redirects) names no origin at all.
        claimed, seen = origin_of(origin_header, exact=True), f"Origin {origin_header[:200]!r}"
    elif referer := request.headers.get("referer"):
        # Older browsers and some privacy settings omit Origin; Referer then says where from.
        claimed, seen = origin_of(referer, exact=False), "the Referer's origin"
    else:
        claimed, seen = None, "no Origin or Referer header"
    if claimed is None or claimed not in _trusted_origins(request, allowed):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"a {request.method} authenticated by the session cookie must come from this "
            "API's own origin or one listed in MAESTRO_ALLOWED_ORIGINS; the request has "
            f"{seen}",
        )


def _trusted_origins(request: Request, allowed: Iterable[str]) -> set[str]:
    # Our own origin: the Host header and the request's scheme as the server sees it (uvicorn
    # applies X-Forwarded-Proto only from trusted proxies); no X-Forwarded-* is read here, so
    # behind another proxy the public origin belongs in MAESTRO_ALLOWED_ORIGINS.
    own = origin_of(f"{request.url.scheme}://{request.headers.get('host', '')}", exact=True)
    trusted = {o for o in (origin_of(a, exact=True) for a in allowed) if o is not None}
    if own is not None:
        trusted.add(own)
    return trusted


def origin_of(url: str, *, exact: bool) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower-cased and without a default port, so
    that equal origins compare equal; None if it names none. With ``exact`` the value must be
    a bare origin (as in an Origin header), not a URL with a path."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None:
        return None
    if exact and (parts.path or parts.query or parts.fragment or "?" in url or "#" in url):
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class BrowserSession:
    principal: Principal
    token: str  # the JWT the session cookie carries
    expires_at: int  # seconds since the epoch
    max_age: int  # seconds the cookies live


def open_session(request: Request) -> BrowserSession:
    """The session POST /api/session starts: only from a JWT bearer token, never a cookie
    (a session must not extend itself) nor an API key (it would sit in a browser's cookie
    store for as long as the key lives)."""
    header = request.headers.get("authorization")
    if header is None:
        raise _unauthenticated("sign in with Authorization: Bearer <JWT>")
    token = _bearer_token(header)
    if token.startswith(API_KEY_PREFIX):
        raise ApiError(
            400,
            "session_needs_jwt",
            "a browser session is opened with a JWT, not an API key; get one with `maestro "
            "token` (or from your identity provider) and send Authorization: Bearer <JWT>",
        )
    secret: str = request.app.state.settings.jwt_secret
    claims = _decode_jwt(token, secret, _BEARER)
    principal = _principal_from_claims(claims)
    now = int(time.time())
    expires = int(claims["exp"])
    if expires - now > SESSION_MAX_SECONDS:
        # Re-issue rather than just shorten the cookie's Max-Age: the token itself must stop
        # working after 12 h even if the cookie is copied out of the browser.
        expires = now + SESSION_MAX_SECONDS
        token = jwt.encode({**claims, "iat": now, "exp": expires}, secret, algorithm="HS256")
    return BrowserSession(principal, token, expires, max(expires - now, 1))


async def _ensure_tenant(request: Request, tenant: str) -> None:
    known: set[str] = request.app.state.known_tenants
    if tenant in known:
        return
    async with request.app.state.pool.acquire() as conn:
        await conn.execute(sql("ensure_tenant"), tenant)
    known.add(tenant)
