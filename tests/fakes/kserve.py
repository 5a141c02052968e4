"""A KServe v2 (Open Inference Protocol) model server emulator with two tiny models.

Endpoints: ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata),
``GET /v2/models/{m}[/versions/{v}]`` (model metadata), ``GET /v2/models/{m}[/versions/{v}]/ready``
and ``POST /v2/models/{m}[/versions/{v}]/infer``; plus, for the ``json`` protocol,
``GET /`` (200) and ``POST /predict`` (``{"instances": [[numbers]]}`` ->
``{"predictions": [{"label", "score"}]}``).

Models (deterministic; ``s`` is the sum of the ``features`` input):

* ``classifier`` (versions 1 and 2; 2 is the default): ``label`` INT64 [1] and
  ``probabilities`` FP32 [1, 2] = ``[p, 1 - p]`` with ``p = sigmoid(s)`` (version 1) or
  ``sigmoid(2 s)`` (version 2), rounded to 6 places.
* ``scorer`` (version 1): ``score`` FP64 [1] = ``s`` and ``confidence`` FP32 [1] = 0.875.

Errors follow the protocol: ``{"error": "..."}`` with 400 (bad request body, tensor shape/data
mismatch, unknown input or requested output), 404 (unknown model or version), 401 when a
``token`` is configured and the request lacks ``Authorization: Bearer <token>``.

``POST /predict`` reflects a top-level ``"echo"`` of the request in its answer, and a 422 quotes
the offending instance (to prove secrets a server echoes are scrubbed).

Cold start: ``cold_requests=N`` answers 503 (with ``Retry-After`` when ``cold_retry_after`` is
set) to the first N readiness/inference requests; ``cold_seconds=S`` does the same for S
seconds after creation (or after :meth:`KServeFake.start_cold`). ``/v2/health/live`` is always
up. Every request and its answer are recorded in ``fake.requests``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
)
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer)?$"
)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response_body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeModel:
    name: str
    versions: tuple[str, ...]
    input_name: str
    outputs: tuple[tuple[str, str, list[int]], ...]  # (name, datatype, shape) metadata
    run: Callable[[str, float], list[dict[str, Any]]]  # (version, sum of inputs) -> tensors


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, x))))


def _classifier(version: str, total: float) -> list[dict[str, Any]]:
    p = round(_sigmoid(total if version == "1" else 2 * total), 6)
    return [
        {"name": "label", "shape": [1], "datatype": "INT64", "data": [0 if p >= 0.5 else 1]},
        {
            "name": "probabilities",
            "shape": [1, 2],
            "datatype": "FP32",
            "data": [p, round(1 - p, 6)],
        },
    ]


def _scorer(version: str, total: float) -> list[dict[str, Any]]:
    return [
        {"name": "score", "shape": [1], "datatype": "FP64", "data": [total]},
        {"name": "confidence", "shape": [1], "datatype": "FP32", "data": [0.875]},
    ]


def default_models() -> dict[str, FakeModel]:
    return {
        "classifier": FakeModel(
            "classifier",
            ("1", "2"),
            "features",
            (("label", "INT64", [1]), ("probabilities", "FP32", [1, 2])),
            _classifier,
        ),
        "scorer": FakeModel(
            "scorer",
            ("1",),
            "features",
            (("score", "FP64", [1]), ("confidence", "FP32", [1])),
            _scorer,
        ),
    }


class _Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item))
    return out


@dataclass
class KServeFake:
    """ASGI app; ``async with serve_asgi(KServeFake()) as base_url: ...``."""

    token: str | None = None
    cold_requests: int = 0
    cold_seconds: float = 0.0
    cold_retry_after: str | None = None
    server_name: str = "fake-kserve"
    server_version: str = "0.11.0"
    models: dict[str, FakeModel] = field(default_factory=default_models)
    requests: list[RecordedRequest] = field(default_factory=list)
    _cold_until: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._cold_until = time.monotonic() + self.cold_seconds

    def start_cold(self, *, requests: int = 0, seconds: float = 0.0) -> None:
        self.cold_requests = requests
        self._cold_until = time.monotonic() + seconds

    def infer_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/infer")]

    # --- ASGI ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        self.requests.append(record)
        headers: dict[str, str] = {}
        try:
            status, answer = self._dispatch(record, headers)
        except _Problem as problem:
            status, answer = problem.status, {"error": problem.message}
            if status == 503 and self.cold_retry_after is not None:
                headers["Retry-After"] = self.cold_retry_after
        content = json.dumps(answer, separators=(",", ":")).encode()
        record.status, record.response_body = status, content
        response = Response(
            content, status_code=status, headers=headers, media_type="application/json"
        )
        await response(scope, receive, send)

    def _cold(self) -> bool:
        if self.cold_requests > 0:
            self.cold_requests -= 1
            return True
        return time.monotonic() < self._cold_until

    def _authorize(self, record: RecordedRequest) -> None:
        if self.token is None:
            return
        if record.headers.get("authorization") != f"Bearer {self.token}":
            raise _Problem(401, "unauthorized: a valid bearer token is required")

    def _dispatch(self, record: RecordedRequest, headers: dict[str, str]) -> tuple[int, Any]:
        method, path = record.method, record.path
        if method == "GET" and path == "/v2/health/live":
            return 200, {"live": True}
        readiness = path in ("/v2/health/ready", "/predict") or path.endswith(("/ready", "/infer"))
        if readiness and self._cold():
            raise _Problem(503, "model server is starting")
        self._authorize(record)
        if method == "GET" and path == "/":
            return 200, {"status": "ok"}
        if method == "GET" and path == "/v2/health/ready":
            return 200, {"ready": True}
        if method == "GET" and path == "/v2":
            return 200, {
                "name": self.server_name,
                "version": self.server_version,
                "extensions": ["model_repository_extension"],
            }
        if method == "POST" and path == "/predict":
            return 200, self._predict(record.body)
        match = _MODEL_PATH.match(path)
        if match is None:
            raise _Problem(404, f"no route for {method} {path}")
        model = self.models.get(match["model"])
        if model is None:
            raise _Problem(404, f"Model {match['model']} not found")
        version = match["version"]
        if version is not None and version not in model.versions:
            raise _Problem(404, f"Model {model.name} version {version} not found")
        version = version or model.versions[-1]
        tail = match["tail"]
        if tail is None and method == "GET":
            return 200, {
                "name": model.name,
                "versions": list(model.versions),
                "platform": "fake",
                "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [
                    {"name": name, "datatype": datatype, "shape": shape}
                    for name, datatype, shape in model.outputs
                ],
            }
        if tail == "/ready" and method == "GET":
            return 200, {"name": model.name, "ready": True}
        if tail == "/infer" and method == "POST":
            return 200, self._infer(model, version, record.body)
        raise _Problem(405, f"{method} is not allowed on {path}")

    def _infer(self, model: FakeModel, version: str, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Problem(400, "request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise _Problem(400, "inference request must have an 'inputs' list")
        if not body["inputs"]:
            raise _Problem(400, "expected at least one input")
        total = 0.0
        for tensor in body["inputs"]:
            if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(
                tensor
            ):
                raise _Problem(400, "each input needs name, shape, datatype and data")
            name = tensor["name"]
            if name != model.input_name:
                raise _Problem(400, f"unexpected inference input '{name}' for model {model.name}")
            if tensor["datatype"] not in DATATYPES:
                raise _Problem(400, f"invalid datatype {tensor['datatype']!r} for input '{name}'")
            shape = tensor["shape"]
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise _Problem(400, f"invalid shape for input '{name}'")
            data = _flatten(tensor["data"])
            if len(data) != math.prod(shape):
                raise _Problem(
                    400,
                    f"input '{name}' has {len(data)} elements, shape {shape} "
                    f"needs {math.prod(shape)}",
                )
            for value in data:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise _Problem(400, f"input '{name}' must be numeric")
                total += value
        outputs = model.run(version, total)
        requested = body.get("outputs")
        if requested is not None:
            names = [o.get("name") if isinstance(o, dict) else None for o in requested]
            known = {o["name"] for o in outputs}
            for name in names:
                if name not in known:
                    raise _Problem(400, f"unexpected inference output '{name}'")
            outputs = [o for o in outputs if o["name"] in names]
        answer: dict[str, Any] = {
            "model_name": model.name,
            "model_version": version,
            "outputs": outputs,
        }
        if "id" in body:
            answer["id"] = body["id"]
        return answer

    def _predict(self, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Problem(400, "request body is not valid JSON") from None
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            raise _Problem(422, "'instances' must be a non-empty list")
        predictions = []
        for instance in instances:
            values = _flatten(instance)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise _Problem(422, f"instances must hold numbers, got {instance!r}")
            p = round(_sigmoid(sum(values)), 6)
            predictions.append({"label": "yes" if p >= 0.5 else "no", "score": max(p, 1 - p)})
        answer: dict[str, Any] = {"predictions": predictions}
        if "echo" in body:  # like a gateway that reflects part of the request
            answer["echo"] = body["echo"]
        return answer
