"""Workflows: create, list, get, replace draft, publish, archive, simulate, execute."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from maestro.api.auth import Action, authorize
from maestro.api.common import (
    CurrentPrincipal,
    audit,
    decode_cursor,
    iso,
    page,
    parse_uuid,
    pool,
)
from maestro.api.errors import ApiError, not_found
from maestro.connectors.registry import DESCRIBERS
from maestro.db.pool import Conn
from maestro.db.queries import sql
from maestro.engine.compiled import compile_workflow
from maestro.engine.executions import IdempotencyKeyReused, create_execution, request_hash
from maestro.engine.simulate import simulate
from maestro.model.workflow import WorkflowDefinition, WorkflowValidationError, parse_workflow

router = APIRouter(prefix="/api/workflows", tags=["workflows"])

_DEFINITION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "/api/schemas/workflow.json"}},
            "application/yaml": {"schema": {"$ref": "/api/schemas/workflow.json"}},
        },
    }
}


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, description="Defaults to the latest published.")


class SimulateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, description="Defaults to the current draft.")


async def _definition_from(request: Request) -> WorkflowDefinition:
    body = await request.body()
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    fmt = "yaml" if ctype in ("application/yaml", "application/x-yaml", "text/yaml") else "json"
    if fmt == "json" and ctype not in ("application/json", ""):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the workflow as application/json or application/yaml",
        )
    try:
        return parse_workflow(body, content_type=fmt)
    except WorkflowValidationError as exc:
        first = exc.errors[0] if exc.errors else {"path": "", "message": "invalid workflow"}
        where = f" at {first['path']}" if first.get("path") else ""
        raise ApiError(
            422,
            "invalid_workflow",
            f"the workflow definition is not valid{where}: {first['message']}",
            errors=exc.errors,
        ) from None


def _dump(definition: WorkflowDefinition) -> dict[str, Any]:
    # Defaults are left out: they are applied again whenever the definition is parsed, and
    # a stored default must not read as a choice the author made (some step types refuse
    # options that do not belong to the chosen operation).
    return definition.model_dump(by_alias=True, exclude_defaults=True, mode="json")


def workflow_json(
    row: asyncpg.Record, versions: list[asyncpg.Record] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(row["id"]),
        "name": row["name"],
        "description": row["description"],
        "status": row["status"],
        "latestVersion": row["latest_version"],
        "draft": row["draft"],
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
    }
    if versions is not None:
        body["versions"] = [
            {
                "version": v["version"],
                "publishedAt": iso(v["published_at"]),
                "publishedBy": v["published_by"],
            }
            for v in versions
        ]
    return body


async def _load(conn: Conn, tenant: str, workflow_id: str, *, lock: bool = False) -> asyncpg.Record:
    wid = parse_uuid(workflow_id, "workflow")
    row = await conn.fetchrow(
        sql("get_workflow_for_update" if lock else "get_workflow"), tenant, wid
    )
    if row is None:
        raise not_found("workflow", workflow_id)
    return row


def _not_archived(row: asyncpg.Record) -> None:
    if row["status"] == "archived":
        raise ApiError(
            409, "workflow_archived", "this workflow is archived; create a new one instead"
        )


@router.post("", status_code=201, openapi_extra=_DEFINITION_BODY)
async def create_workflow(
    request: Request, principal: CurrentPrincipal, response: Response
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    definition = await _definition_from(request)
    async with pool(request).acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            sql("insert_workflow"),
            principal.tenant,
            uuid.uuid4(),
            definition.name,
            definition.description,
            _dump(definition),
            principal.subject,
        )
        assert row is not None
        await audit(conn, request, principal, "workflow.create", "workflow", row["id"])
    response.headers["Location"] = f"/api/workflows/{row['id']}"
    return workflow_json(row, [])


@router.get("")
async def list_workflows(
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: Annotated[str | None, Query(pattern="^(active|archived)$")] = None,
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    after = decode_cursor(cursor, datetime.fromisoformat, uuid.UUID)
    async with pool(request).acquire() as conn:
        rows = await conn.fetch(
            sql("list_workflows"),
            principal.tenant,
            status,
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
    return page(rows, limit, workflow_json, "created_at", "id")


@router.get("/{workflow_id}")
async def get_workflow(
    workflow_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await _load(conn, principal.tenant, workflow_id)
        versions = await conn.fetch(sql("list_versions"), principal.tenant, row["id"])
    return workflow_json(row, versions)


@router.get("/{workflow_id}/versions/{version}")
async def get_workflow_version(
    workflow_id: str, version: int, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await _load(conn, principal.tenant, workflow_id)
        found = await conn.fetchrow(sql("get_version"), principal.tenant, row["id"], version)
    if found is None:
        raise not_found("workflow_version", f"{workflow_id} v{version}")
    return {
        "workflowId": workflow_id,
        "version": found["version"],
        "definition": found["definition"],
        "publishedAt": iso(found["published_at"]),
    }


@router.put("/{workflow_id}", openapi_extra=_DEFINITION_BODY)
async def replace_draft(
    workflow_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    definition = await _definition_from(request)
    async with pool(request).acquire() as conn, conn.transaction():
        current = await _load(conn, principal.tenant, workflow_id, lock=True)
        _not_archived(current)
        row = await conn.fetchrow(
            sql("update_draft"),
            principal.tenant,
            current["id"],
            definition.name,
            definition.description,
            _dump(definition),
        )
        assert row is not None
        await audit(conn, request, principal, "workflow.update", "workflow", row["id"])
        versions = await conn.fetch(sql("list_versions"), principal.tenant, row["id"])
    return workflow_json(row, versions)


@router.post("/{workflow_id}/publish")
async def publish(
    workflow_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Freeze the draft as the next version (unchanged drafts return the latest version)."""
    authorize(principal, Action.EDIT)
    async with pool(request).acquire() as conn, conn.transaction():
        row = await _load(conn, principal.tenant, workflow_id, lock=True)
        _not_archived(row)
        latest = row["latest_version"]
        if latest is not None:
            current = await conn.fetchrow(sql("get_version"), principal.tenant, row["id"], latest)
            if current is not None and current["definition"] == row["draft"]:
                return {
                    "workflowId": workflow_id,
                    "version": latest,
                    "unchanged": True,
                    "publishedAt": iso(current["published_at"]),
                }
        version = (latest or 0) + 1
        published = await conn.fetchrow(
            sql("insert_version"),
            principal.tenant,
            row["id"],
            version,
            row["draft"],
            principal.subject,
        )
        assert published is not None
        await conn.execute(sql("set_latest_version"), principal.tenant, row["id"], version)
        await audit(
            conn,
            request,
            principal,
            "workflow.publish",
            "workflow",
            row["id"],
            {"version": version},
        )
    return {
        "workflowId": workflow_id,
        "version": version,
        "unchanged": False,
        "publishedAt": iso(published["published_at"]),
    }


@router.post("/{workflow_id}/archive")
async def archive(
    workflow_id: str, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    authorize(principal, Action.EDIT)
    async with pool(request).acquire() as conn, conn.transaction():
        current = await _load(conn, principal.tenant, workflow_id, lock=True)
        row = await conn.fetchrow(sql("archive_workflow"), principal.tenant, current["id"])
        assert row is not None
        await audit(conn, request, principal, "workflow.archive", "workflow", row["id"])
    return workflow_json(row)


@router.post("/{workflow_id}/simulate")
async def simulate_workflow(
    workflow_id: str, body: SimulateRequest, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Validate and render with the given input and report the plan; nothing runs."""
    authorize(principal, Action.READ)
    async with pool(request).acquire() as conn:
        row = await _load(conn, principal.tenant, workflow_id)
        definition: Any = row["draft"]
        if body.version is not None:
            found = await conn.fetchrow(
                sql("get_version"), principal.tenant, row["id"], body.version
            )
            if found is None:
                raise not_found("workflow_version", f"{workflow_id} v{body.version}")
            definition = found["definition"]
    compiled = compile_workflow(parse_workflow(definition))
    return simulate(
        compiled, body.input, workflow_id=workflow_id, version=body.version, describers=DESCRIBERS
    )


@router.post("/{workflow_id}/execute", status_code=202)
async def execute(
    workflow_id: str,
    body: ExecuteRequest,
    request: Request,
    principal: CurrentPrincipal,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> dict[str, Any]:
    authorize(principal, Action.OPERATE)
    cache = request.app.state.compiled
    async with pool(request).acquire() as conn:
        row = await _load(conn, principal.tenant, workflow_id)
    _not_archived(row)
    version = body.version or row["latest_version"]
    if version is None:
        raise ApiError(
            409,
            "workflow_not_published",
            "this workflow has no published version; POST .../publish first",
        )
    # Not while holding a connection: on a cache miss the loader borrows one of its own, and
    # a burst of executes holding every pooled connection would wait on each other forever.
    try:
        compiled = await cache.get(principal.tenant, row["id"], version)
    except LookupError:
        raise not_found("workflow_version", f"{workflow_id} v{version}") from None
    body_hash = None
    if idempotency_key is not None:
        body_hash = request_hash(row["id"], body.model_dump(mode="json"))
    async with pool(request).acquire() as conn:
        try:
            enqueued = await create_execution(
                conn,
                tenant=principal.tenant,
                workflow_id=row["id"],
                version=version,
                workflow=compiled,
                input=body.input,
                trigger={"type": "api", "subject": principal.subject},
                correlation_id=request.state.request_id,
                idempotency_key=idempotency_key,
                body_hash=body_hash,
            )
        except IdempotencyKeyReused as exc:
            raise ApiError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request; use a new key",
                executionId=str(exc.execution_id),
            ) from None
        if enqueued.created:
            await audit(
                conn,
                request,
                principal,
                "workflow.execute",
                "execution",
                enqueued.execution_id,
                {"workflowId": workflow_id, "version": version},
            )
    response.headers["Location"] = f"/api/executions/{enqueued.execution_id}"
    if not enqueued.created:
        response.headers["Idempotent-Replayed"] = "true"
    return {"executionId": str(enqueued.execution_id), "status": enqueued.status}
