"""An emulator of HashiCorp Vault's HTTP API: KV v2 reads and Kubernetes auth login.

It follows Vault's documented answers: ``{"errors": [...]}`` bodies, 403 "permission
denied" for a missing or unknown token, 404 with an empty ``errors`` list for a missing
path, 400 for an unknown role, 503 "Vault is sealed" and 429 for a rate-limit quota.
"""

from __future__ import annotations

import asyncio
import secrets as token_source
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

RFC3339_TIME = "2024-01-01T00:00:00.000000Z"


@dataclass
class KubernetesRole:
    jwt: str
    lease_duration: int = 3600
    namespace: str | None = None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


def _errors(status: int, *errors: str) -> JSONResponse:
    return JSONResponse({"errors": list(errors)}, status_code=status)


class FakeVault:
    """ASGI app; serve it with ``serve_asgi(FakeVault())``."""

    def __init__(self, *, kubernetes_mount: str = "kubernetes") -> None:
        self.kubernetes_mount = kubernetes_mount
        # (namespace, mount, path) -> data; namespace None is the root namespace.
        self._secrets: dict[tuple[str | None, str, str], dict[str, Any]] = {}
        self._tokens: dict[str, str | None] = {}  # token -> namespace
        self._roles: dict[str, KubernetesRole] = {}
        self.sealed = False
        self.rate_limited = False
        self.latency_seconds = 0.0  # delay every answer, to exercise client timeouts
        self.counts: Counter[str] = Counter()  # "read", "login"
        self.requests: list[RecordedRequest] = []
        self._app = Starlette(
            routes=[
                Route("/v1/auth/{auth_mount}/login", self._login, methods=["POST"]),
                Route("/v1/{mount}/data/{path:path}", self._read, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # --- set-up ---------------------------------------------------------------------------

    def put(
        self, mount: str, path: str, data: dict[str, Any], *, namespace: str | None = None
    ) -> None:
        self._secrets[(namespace, mount, path)] = dict(data)

    def delete(self, mount: str, path: str, *, namespace: str | None = None) -> None:
        self._secrets.pop((namespace, mount, path), None)

    def add_token(self, token: str | None = None, *, namespace: str | None = None) -> str:
        token = token or f"hvs.{token_source.token_urlsafe(18)}"
        self._tokens[token] = namespace
        return token

    def revoke_token(self, token: str) -> None:
        self._tokens.pop(token, None)

    def revoke_all_tokens(self) -> None:
        self._tokens.clear()

    def add_kubernetes_role(
        self, role: str, jwt: str, *, lease_duration: int = 3600, namespace: str | None = None
    ) -> None:
        self._roles[role] = KubernetesRole(jwt, lease_duration, namespace)

    @property
    def issued_tokens(self) -> list[str]:
        return list(self._tokens)

    # --- API ------------------------------------------------------------------------------

    async def _gate(self, request: Request) -> JSONResponse | None:
        if self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        self.requests.append(
            RecordedRequest(request.method, request.url.path, dict(request.headers))
        )
        if self.sealed:
            return _errors(503, "Vault is sealed")
        if self.rate_limited:
            return _errors(429, f'request path "{request.url.path}": rate limit quota exceeded')
        return None

    async def _read(self, request: Request) -> JSONResponse:
        self.counts["read"] += 1
        if (refused := await self._gate(request)) is not None:
            return refused
        namespace = request.headers.get("x-vault-namespace") or None
        token = request.headers.get("x-vault-token")
        if token is None or token not in self._tokens or self._tokens[token] != namespace:
            return _errors(403, "permission denied")
        mount = request.path_params["mount"]
        path = request.path_params["path"]
        data = self._secrets.get((namespace, mount, path))
        if data is None:
            return _errors(404)
        return JSONResponse(
            {
                "request_id": str(uuid.uuid4()),
                "lease_id": "",
                "renewable": False,
                "lease_duration": 0,
                "data": {
                    "data": data,
                    "metadata": {
                        "created_time": RFC3339_TIME,
                        "custom_metadata": None,
                        "deletion_time": "",
                        "destroyed": False,
                        "version": 1,
                    },
                },
                "wrap_info": None,
                "warnings": None,
                "auth": None,
            }
        )

    async def _login(self, request: Request) -> JSONResponse:
        self.counts["login"] += 1
        if (refused := await self._gate(request)) is not None:
            return refused
        if request.path_params["auth_mount"] != self.kubernetes_mount:
            return _errors(
                400, f'no handler for route "auth/{request.path_params["auth_mount"]}/login"'
            )
        try:
            body = await request.json()
        except ValueError:
            return _errors(400, "failed to parse JSON input")
        role_name = body.get("role") if isinstance(body, dict) else None
        jwt = body.get("jwt") if isinstance(body, dict) else None
        if not role_name:
            return _errors(400, "missing role")
        if not jwt:
            return _errors(400, "missing jwt")
        role = self._roles.get(role_name)
        if role is None:
            return _errors(400, f'invalid role name "{role_name}"')
        if jwt != role.jwt:
            return _errors(403, "permission denied")
        token = self.add_token(namespace=role.namespace)
        return JSONResponse(
            {
                "request_id": str(uuid.uuid4()),
                "data": None,
                "auth": {
                    "client_token": token,
                    "accessor": str(uuid.uuid4()),
                    "policies": ["default", role_name],
                    "token_policies": ["default", role_name],
                    "metadata": {"role": role_name, "service_account_name": "maestro"},
                    "lease_duration": role.lease_duration,
                    "renewable": True,
                    "entity_id": str(uuid.uuid4()),
                    "token_type": "service",
                    "orphan": True,
                },
            }
        )
