"""SendGrid (v3 Web API) and Postmark emulators, and an RSA key maker for DKIM tests.

Both follow the published APIs closely enough to exercise the ``email`` connector:

* ``SendGridApi(api_key)``: ``POST /v3/mail/send`` (bearer auth; 401 with SendGrid's
  ``{"errors": [{"message", "field", "help"}]}``; body checks answering 400 in the same shape;
  202 with ``X-Message-Id``) and ``GET /v3/scopes`` (``{"scopes": [...]}``).
* ``PostmarkApi(token)``: ``POST /email`` (``X-Postmark-Server-Token``; 401 ``ErrorCode`` 10;
  body checks answering 422 with ``{"ErrorCode", "Message"}`` — 300 invalid input, 406 inactive
  recipient; 200 ``{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}``) and
  ``GET /server``.

``api.fail_with(429, retry_after="7")`` (or a 5xx) makes the next ``times`` sends (default: all)
fail that way; ``api.messages`` holds every accepted message body, ``api.requests`` every
request (path, headers, body). Serve with ``serve_asgi(api)``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    times: int | None


def _valid_email(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    address = value.rsplit("<", 1)[-1].rstrip(">").strip() if "<" in value else value.strip()
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain and " " not in address)


def _valid_base64(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class _EmailApi:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.requests: list[Received] = []
        self._failure: _Failure | None = None
        self._app = Starlette(routes=self._routes())

    def _routes(self) -> list[Route]:
        raise NotImplementedError

    def fail_with(
        self, status: int, *, retry_after: str | None = None, times: int | None = None
    ) -> None:
        """Answer the next ``times`` sends (None: every one) with ``status``."""
        self._failure = _Failure(status, retry_after, times)

    def recover(self) -> None:
        self._failure = None

    def _take_failure(self) -> _Failure | None:
        failure = self._failure
        if failure is None:
            return None
        if failure.times is not None:
            failure.times -= 1
            if failure.times <= 0:
                self._failure = None
        return failure

    async def _record(self, request: Request) -> Received:
        received = Received(
            request.method,
            request.url.path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
        )
        self.requests.append(received)
        return received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class SendGridApi(_EmailApi):
    def __init__(self, api_key: str, *, scopes: list[str] | None = None) -> None:
        self.api_key = api_key
        self.scopes = scopes if scopes is not None else ["mail.send", "user.profile.read"]
        # X-RateLimit-Reset on a 429 (a unix time); None: a minute from now
        self.rate_limit_reset: int | None = None
        super().__init__()

    def _routes(self) -> list[Route]:
        return [
            Route("/v3/mail/send", self._send, methods=["POST"]),
            Route("/v3/scopes", self._scopes, methods=["GET"]),
        ]

    @staticmethod
    def _errors(status: int, *errors: tuple[str | None, str], **headers: str) -> Response:
        body = {"errors": [{"message": m, "field": f, "help": None} for f, m in errors]}
        return JSONResponse(body, status_code=status, headers=headers)

    def _authorized(self, received: Received) -> bool:
        return received.headers.get("authorization") == f"Bearer {self.api_key}"

    def _unauthorized(self) -> Response:
        return self._errors(
            401, (None, "The provided authorization grant is invalid, expired, or revoked")
        )

    async def _scopes(self, request: Request) -> Response:
        received = await self._record(request)
        if not self._authorized(received):
            return self._unauthorized()
        return JSONResponse({"scopes": self.scopes})

    async def _send(self, request: Request) -> Response:
        received = await self._record(request)
        if not self._authorized(received):
            return self._unauthorized()
        failure = self._take_failure()
        if failure is not None:
            headers = {}
            if failure.retry_after is not None:
                headers["Retry-After"] = failure.retry_after
            if failure.status == 429:
                headers["X-RateLimit-Limit"] = "600"
                headers["X-RateLimit-Remaining"] = "0"
                reset = self.rate_limit_reset
                headers["X-RateLimit-Reset"] = str(reset or int(time.time()) + 60)
                return self._errors(429, (None, "too many requests"), **headers)
            return self._errors(failure.status, (None, "Internal server error"), **headers)
        try:
            body = received.json()
        except ValueError:
            return self._errors(400, (None, "Bad Request"))
        problems = self._validate(body)
        if problems:
            return self._errors(400, *problems)
        self.messages.append(body)
        return Response(status_code=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})

    @staticmethod
    def _validate(body: Any) -> list[tuple[str | None, str]]:
        if not isinstance(body, dict):
            return [(None, "Bad Request")]
        problems: list[tuple[str | None, str]] = []
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            problems.append(("personalizations", "The personalizations field is required."))
        else:
            for index, item in enumerate(personalizations):
                to = item.get("to") if isinstance(item, dict) else None
                if not isinstance(to, list) or not to:
                    problems.append((f"personalizations.{index}.to", "The to array is required."))
                    continue
                for kind in ("to", "cc", "bcc"):
                    for box in item.get(kind) or []:
                        if not _valid_email(box.get("email") if isinstance(box, dict) else None):
                            problems.append(
                                (
                                    f"personalizations.{index}.{kind}",
                                    "Does not contain a valid address.",
                                )
                            )
        sender = body.get("from")
        if not isinstance(sender, dict) or not _valid_email(sender.get("email")):
            problems.append(("from.email", "The from email does not contain a valid address."))
        if not isinstance(body.get("subject"), str) or not body["subject"]:
            problems.append(("subject", "The subject is required."))
        content = body.get("content")
        if not isinstance(content, list) or not content:
            problems.append(
                (
                    "content",
                    "Unless a valid template_id is provided, the content parameter is required.",
                )
            )
        else:
            types = [c.get("type") for c in content if isinstance(c, dict)]
            if "text/plain" in types and types[0] != "text/plain":
                problems.append(("content", "The text/plain content type must be first."))
        for index, attachment in enumerate(body.get("attachments") or []):
            if not _valid_base64(attachment.get("content")):
                problems.append(
                    (f"attachments.{index}.content", "The attachment content must be base64.")
                )
            if not attachment.get("filename"):
                problems.append((f"attachments.{index}.filename", "The filename is required."))
        return problems


class PostmarkApi(_EmailApi):
    def __init__(self, token: str, *, inactive: set[str] | None = None) -> None:
        self.token = token
        self.inactive = {a.lower() for a in inactive or set()}
        super().__init__()

    def _routes(self) -> list[Route]:
        return [
            Route("/email", self._send, methods=["POST"]),
            Route("/server", self._server, methods=["GET"]),
        ]

    @staticmethod
    def _error(status: int, code: int, message: str, **headers: str) -> Response:
        return JSONResponse(
            {"ErrorCode": code, "Message": message}, status_code=status, headers=headers
        )

    def _authorized(self, received: Received) -> bool:
        return received.headers.get("x-postmark-server-token") == self.token

    def _unauthorized(self) -> Response:
        return self._error(
            401,
            10,
            "The Server Token you provided in the X-Postmark-Server-Token request header was "
            "invalid. Please verify that you are using a valid token.",
        )

    async def _server(self, request: Request) -> Response:
        received = await self._record(request)
        if not self._authorized(received):
            return self._unauthorized()
        return JSONResponse(
            {"ID": 1, "Name": "Maestro test server", "Color": "blue", "DeliveryType": "Live"}
        )

    async def _send(self, request: Request) -> Response:
        received = await self._record(request)
        if not self._authorized(received):
            return self._unauthorized()
        if "application/json" not in received.headers.get("accept", ""):
            return self._error(422, 300, "Accept header must be application/json")
        failure = self._take_failure()
        if failure is not None:
            headers = {} if failure.retry_after is None else {"Retry-After": failure.retry_after}
            if failure.status == 429:
                return self._error(429, 0, "Too many requests", **headers)
            return self._error(failure.status, 0, "Internal server error", **headers)
        try:
            body = received.json()
        except ValueError:
            return self._error(422, 402, "Received invalid JSON input.")
        if not isinstance(body, dict):
            return self._error(422, 402, "Received invalid JSON input.")
        problem = self._validate(body)
        if problem is not None:
            return self._error(422, *problem)
        self.messages.append(body)
        return JSONResponse(
            {
                "To": body["To"],
                "SubmittedAt": datetime.now(UTC).isoformat(),
                "MessageID": str(uuid.uuid4()),
                "ErrorCode": 0,
                "Message": "OK",
            }
        )

    def _validate(self, body: dict[str, Any]) -> tuple[int, str] | None:
        if not _valid_email(body.get("From")):
            return 300, f"Invalid 'From' address: '{body.get('From')}'."
        recipients: list[str] = []
        for name in ("To", "Cc", "Bcc"):
            value = body.get(name)
            if value is None:
                continue
            for item in str(value).split(","):
                if not _valid_email(item):
                    return 300, f"Invalid '{name}' address: '{item.strip()}'."
                recipients.append(item.strip())
        if not body.get("To"):
            return 300, "Zero recipients specified"
        if not body.get("TextBody") and not body.get("HtmlBody"):
            return 300, "Provide either email TextBody or HtmlBody or both."
        for attachment in body.get("Attachments") or []:
            if not _valid_base64(attachment.get("Content")) or not attachment.get("Name"):
                return 300, "Invalid attachment content - illegal base64 string."
        dead = [r for r in recipients if r.lower() in self.inactive]
        if dead:
            return 406, (
                "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {', '.join(dead)}."
            )
        return None


# --- DKIM test keys (pure Python: the test environment has no `cryptography`) -----------------


def _probable_prime(bits: int) -> int:
    small = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if any(candidate % p == 0 for p in small):
            continue
        d, r = candidate - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(40):
            a = secrets.randbelow(candidate - 3) + 2
            x = pow(a, d, candidate)
            if x in (1, candidate - 1):
                continue
            for _ in range(r - 1):
                x = pow(x, 2, candidate)
                if x == candidate - 1:
                    break
            else:
                break
        else:
            return candidate


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _pem(label: str, der: bytes) -> str:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


@dataclass(frozen=True)
class DkimKey:
    private_pem: str  # PKCS#1 "RSA PRIVATE KEY"
    public_der: bytes = field(repr=False)  # SubjectPublicKeyInfo

    def txt_record(self) -> bytes:
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(self.public_der)

    def dnsfunc(self, selector: str, domain: str) -> Any:
        """A dkimpy ``dnsfunc`` answering ``{selector}._domainkey.{domain}`` with the key."""
        wanted = f"{selector}._domainkey.{domain}.".encode()

        def lookup(name: bytes, timeout: float = 5) -> bytes | None:
            return self.txt_record() if name.rstrip(b".") + b"." == wanted else None

        return lookup


def generate_dkim_key(bits: int = 1024) -> DkimKey:
    """A fresh RSA key (e = 65537) for DKIM signing tests."""
    e = 65537
    while True:
        p, q = _probable_prime(bits // 2), _probable_prime(bits // 2)
        if p == q:
            continue
        phi = (p - 1) * (q - 1)
        if phi % e and (p * q).bit_length() == bits:
            break
    n = p * q
    d = pow(e, -1, phi)
    private = _der(
        0x30,
        b"".join(_der_int(v) for v in (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))),
    )
    rsa_public = _der(0x30, _der_int(n) + _der_int(e))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public))
    return DkimKey(private_pem=_pem("RSA PRIVATE KEY", private), public_der=spki)
