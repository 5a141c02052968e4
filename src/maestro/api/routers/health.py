"""Liveness, readiness, Prometheus metrics and the workflow JSON Schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from maestro.api.errors import problem
from maestro.db.migrate import pending_migrations
from maestro.model.workflow import workflow_json_schema
from maestro.observability.metrics import render

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


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus text exposition of this process's metrics (unauthenticated, like probes;
    bind the API to a private network or filter /metrics at the ingress)."""
    body, content_type = render()
    return Response(body, media_type=content_type)


@router.get("/api/schemas/workflow.json")
async def workflow_schema() -> dict[str, Any]:
    return workflow_json_schema()
