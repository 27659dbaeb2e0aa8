"""The web page's own routes under ``/ui/``: the page shell, its static files,
login, logout and the session's description.

Everything else the page shows comes from the REST API under ``/api/v1/``,
which accepts the session cookie as an identity (see :mod:`schedd.web.session`);
so the page sees exactly what its user's token would, and nothing of the data
is in the shell: without a session, the page can show only its login form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from schedd.api.keys import STATE, TOKENS
from schedd.errors import InputError, PermissionDenied, Unauthenticated
from schedd.web.session import COOKIE, SESSION_TTL_S, SessionBook

__all__ = ["SESSIONS", "STATIC", "add_routes"]

STATIC = Path(__file__).parent / "static"
SESSIONS = web.AppKey("sessions", SessionBook)

#: The page loads only its own files, talks only to its own origin, and may not be framed.
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    token: Annotated[str, Meta(min_length=1, max_length=256)]


def _same_origin(request: web.Request) -> None:
    """A login or logout posted by another site's page is refused (its Origin
    names that site); a browser sends Origin on every cross-origin POST."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin != f"{request.scheme}://{request.host}":
        raise PermissionDenied(f"Origin {origin!r} is not this server's")


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def _to_index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


def _describe(request: web.Request, user: str, role: str, csrf: str) -> dict[str, str]:
    return {"user": user, "role": role, "csrf": csrf, "server_name": request.app[STATE].settings.server_name}


async def _session(request: web.Request) -> web.Response:
    """Who is logged in, and the CSRF token the page sends with its changes."""
    session = request.app[SESSIONS].lookup(request)
    if session is None:
        raise Unauthenticated("not logged in: POST /ui/login with a token (schedd token create USER)")
    return web.json_response(_describe(request, session.user, session.role, session.csrf),
                             headers={"Cache-Control": "no-store"})


async def _login(request: web.Request) -> web.Response:
    """Trade a token for a session cookie. JSON only: an HTML form on another
    site cannot send ``application/json`` without a preflight."""
    _same_origin(request)
    if request.content_type != "application/json":
        raise InputError("login: send JSON {\"token\": ...} as application/json")
    body = msgspec.json.decode(await request.read(), type=LoginBody)
    made = request.app[SESSIONS].login(body.token.strip())
    if made is None:
        raise Unauthenticated("that token is not valid (make one with: schedd token create USER)")
    secret, session = made
    response = web.json_response(_describe(request, session.user, session.role, session.csrf))
    response.set_cookie(COOKIE, secret, path="/", httponly=True, samesite="Strict", secure=request.secure,
                        max_age=int(SESSION_TTL_S))
    return response


async def _logout(request: web.Request) -> web.Response:
    """End the session (its CSRF token required, as for every change)."""
    _same_origin(request)
    book = request.app[SESSIONS]
    if book.identify(request) is None:
        raise Unauthenticated("not logged in")
    book.logout(request)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every ``/ui/`` answer: no framing, no sniffing, no referrer, our CSP."""
    if request.path.startswith("/ui"):
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")


def add_routes(app: web.Application) -> None:
    """Serve the page under ``/ui/`` and let the API accept its sessions."""
    book = SessionBook(app[TOKENS])
    app[SESSIONS] = book
    app[TOKENS].sessions = book
    app.on_response_prepare.append(_headers)
    r = app.router
    r.add_get("/ui", _to_index)
    r.add_get("/ui/", _index)
    r.add_get("/ui/session", _session)
    r.add_post("/ui/login", _login)
    r.add_post("/ui/logout", _logout)
    r.add_static("/ui/static/", STATIC, append_version=False)
