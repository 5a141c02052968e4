"""API keys (admin only): created with their secret shown once, stored hashed."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from maestro.api.auth import ROLES, Action, authorize, new_api_key
from maestro.api.common import CurrentPrincipal, audit, iso, parse_uuid, pool
from maestro.api.errors import not_found
from maestro.db.queries import sql

router = APIRouter(prefix="/api/api-keys", tags=["api-keys"])


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    roles: list[str] = Field(min_length=1)

    @field_validator("roles")
    @classmethod
    def _known(cls, roles: list[str]) -> list[str]:
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r}; use {', '.join(ROLES)}")
        return sorted(set(roles))


def key_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(r["id"]),
        "name": r["name"],
        "roles": list(r["roles"]),
        "createdAt": iso(r["created_at"]),
        "lastUsedAt": iso(r["last_used_at"]),
        "revokedAt": iso(r["revoked_at"]),
    }


@router.post("", status_code=201)
async def create_key(
    body: CreateKey, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.ADMIN)
    key, digest = new_api_key()
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            sql("insert_api_key"),
            principal.tenant,
            uuid.uuid4(),
            body.name,
            digest,
            body.roles,
            principal.subject,
        )
        assert row is not None
        await audit(
            conn, request, principal, "api_key.create", "api_key", row["id"], {"roles": body.roles}
        )
    return {**key_json(row), "key": key}


@router.get("")
async def list_keys(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    authorize(principal, Action.ADMIN)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(sql("list_api_keys"), principal.tenant)
    return {"items": [key_json(r) for r in rows]}


@router.delete("/{key_id}", status_code=204)
async def revoke_key(key_id: str, request: Request, principal: CurrentPrincipal) -> None:
    authorize(principal, Action.ADMIN)
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            sql("revoke_api_key"), principal.tenant, parse_uuid(key_id, "api_key")
        )
        if row is None:
            raise not_found("api_key", key_id)
        await audit(conn, request, principal, "api_key.revoke", "api_key", key_id)
