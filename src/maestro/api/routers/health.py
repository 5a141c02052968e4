"""Liveness, readiness and the workflow JSON Schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from maestro.api.errors import problem
from maestro.db.migrate import pending_migrations
from maestro.model.workflow import workflow_json_schema

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> JSONResponse | dict[str, Any]:
    try:
        async with request.app.state.pool.acquire(timeout=2) as conn:
            pending = await pending_migrations(conn)
    except Exception:
        return problem(503, "database_unavailable", "the database cannot be reached")
    if pending:
        return problem(
            503,
            "migrations_pending",
            f"migrations {pending} are not applied; run `maestro migrate`",
        )
    return {"status": "ready"}


@router.get("/api/schemas/workflow.json")
async def workflow_schema() -> dict[str, Any]:
    return workflow_json_schema()
