"""Authentication (JWT or API key) and the one place where authorization is decided."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import jwt
from fastapi import Request

from maestro.api.errors import ApiError
from maestro.db.queries import sql

ROLES = ("admin", "editor", "operator", "viewer")
API_KEY_PREFIX = "mk_"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def _principal_from_jwt(token: str, secret: str) -> Principal:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "tenant", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise _unauthenticated("the token has expired; ask for a new one") from None
    except jwt.InvalidTokenError:
        raise _unauthenticated(
            "the bearer token is not a valid JWT signed by this server (claims sub, tenant "
            "and exp are required)"
        ) from None
    tenant, roles = claims.get("tenant"), claims.get("roles", [])
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise _unauthenticated("the token's tenant claim must be 1-64 letters, digits, _ . -")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _unauthenticated("the token's roles claim must be a list of role names")
    return Principal(str(claims["sub"]), tenant, frozenset(roles))


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthenticated("send Authorization: Bearer <JWT or API key>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthenticated("the Authorization header must be 'Bearer <JWT or API key>'")
    token = token.strip()
    state = request.app.state
    if token.startswith(API_KEY_PREFIX):
        async with state.pool.acquire() as conn:
            row = await conn.fetchrow(sql("authenticate_api_key"), hash_api_key(token))
        if row is None:
            raise _unauthenticated("the API key is unknown or revoked")
        principal = Principal(f"apikey:{row['id']}", row["tenant_id"], frozenset(row["roles"]))
    else:
        principal = _principal_from_jwt(token, state.settings.jwt_secret)
    await _ensure_tenant(request, principal.tenant)
    return principal


async def _ensure_tenant(request: Request, tenant: str) -> None:
    known: set[str] = request.app.state.known_tenants
    if tenant in known:
        return
    async with request.app.state.pool.acquire() as conn:
        await conn.execute(sql("ensure_tenant"), tenant)
    known.add(tenant)
