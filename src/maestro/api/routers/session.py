"""Browser sessions: trade a JWT for an HttpOnly session cookie plus a CSRF token, and back.

Cookie-authenticated writes are checked in ``maestro.api.auth.authenticate`` (double-submit
CSRF token and same-origin ``Origin``); this module only sets and clears the cookies.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from maestro.api.auth import CSRF_COOKIE, SESSION_COOKIE, open_session
from maestro.api.common import CurrentPrincipal, iso

router = APIRouter(prefix="/api/session", tags=["session"])

# The session cookie only needs to reach the API; the CSRF cookie is read by the page's
# script, which may live anywhere on the origin.
_SESSION_PATH = "/api"
_CSRF_PATH = "/"


def _set_cookie(name: str, value: str, *, max_age: int, path: str, http_only: bool) -> str:
    """A Set-Cookie value. Written out by hand (not ``Response.set_cookie``) so that the
    attributes are exactly these: Secure and SameSite=Strict always, HttpOnly where asked.
    Values are base64url or JWTs, which need no quoting in a cookie."""
    attributes = [f"{name}={value}", f"Max-Age={max_age}", f"Path={path}", "Secure"]
    if http_only:
        attributes.append("HttpOnly")
    attributes.append("SameSite=Strict")
    if max_age == 0:
        # Max-Age=0 deletes the cookie; Expires in the past does the same for old clients.
        attributes.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    return "; ".join(attributes)


@router.post("")
async def create_session(request: Request, response: Response) -> dict[str, Any]:
    """Start a browser session from ``Authorization: Bearer <JWT>`` (not an API key). Sets the
    ``maestro_session`` (HttpOnly) and ``maestro_csrf`` cookies; send the returned
    ``csrfToken`` as ``X-CSRF-Token`` on every cookie-authenticated write."""
    session = open_session(request)
    csrf_token = secrets.token_urlsafe(32)
    for name, value, path, http_only in (
        (SESSION_COOKIE, session.token, _SESSION_PATH, True),
        # Not HttpOnly: the page must read it to echo it in the header, which a cross-site
        # page cannot do. It grants nothing by itself.
        (CSRF_COOKIE, csrf_token, _CSRF_PATH, False),
    ):
        cookie = _set_cookie(name, value, max_age=session.max_age, path=path, http_only=http_only)
        response.headers.append("set-cookie", cookie)
    # The body carries the CSRF token: no cache may keep it.
    response.headers["cache-control"] = "no-store"
    principal = session.principal
    return {
        "subject": principal.subject,
        "tenant": principal.tenant,
        "roles": sorted(principal.roles),
        "expiresAt": iso(datetime.fromtimestamp(session.expires_at, UTC)),
        "csrfToken": csrf_token,
    }


@router.delete("", status_code=204)
async def delete_session(principal: CurrentPrincipal) -> Response:
    """Sign out: clear both cookies. Authenticated like any write, so with the session cookie
    it needs ``X-CSRF-Token`` and a same-origin ``Origin`` (a forged sign-out is a nuisance)."""
    response = Response(status_code=204)
    for name, path, http_only in (
        (SESSION_COOKIE, _SESSION_PATH, True),
        (CSRF_COOKIE, _CSRF_PATH, False),
    ):
        cookie = _set_cookie(name, "", max_age=0, path=path, http_only=http_only)
        response.headers.append("set-cookie", cookie)
    return response
