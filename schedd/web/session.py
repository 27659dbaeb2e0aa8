"""Browser sessions: a token traded once for an HttpOnly cookie.

The page never holds a bearer token: ``POST /ui/login`` checks the token the
user pasted (``schedd token create``) and answers with a random session secret
in a cookie that scripts cannot read (HttpOnly) and that no other site's page
can make the browser send (SameSite=Strict). Only the secret's SHA-256 is kept,
in memory: a leaked heap or log names no usable session, and a restart of the
daemon ends every session (the user logs in again).

SameSite is a browser's promise, not the server's check, so every mutating
request made with a session must also carry the session's CSRF token in the
``X-Schedd-CSRF`` header (the page reads it from ``GET /ui/session``; another
origin cannot read that answer, nor set a custom header without a CORS
preflight this server never grants). A request without it is a 403.

Cost: one dict lookup per request; at most ``MAX_SESSIONS`` sessions, the
oldest dropped first when a new one would exceed it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from schedd.api.auth import Identity, TokenBook
from schedd.errors import PermissionDenied

__all__ = ["COOKIE", "CSRF_HEADER", "MAX_SESSIONS", "SESSION_TTL_S", "Session", "SessionBook"]

COOKIE = "schedd_session"
CSRF_HEADER = "X-Schedd-CSRF"
#: A session lasts a working day; the cookie's Max-Age says the same.
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 10_000
#: Methods that change nothing and so need no CSRF token.
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    role: str
    csrf: str
    token_hash: str  # the token it was made from: a token removed from the store ends its sessions
    expires: float


class SessionBook:
    """Sessions by the hash of their secret. Resolves a request's cookie to an
    :class:`Identity` for :func:`schedd.api.auth.identify`."""

    def __init__(self, tokens: TokenBook, clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.clock = clock
        self.by_hash: dict[str, Session] = {}

    def login(self, token: str) -> tuple[str, Session] | None:
        """A new session for a valid ``token``: its secret (for the cookie) and itself."""
        row = self.tokens.check(token)
        if row is None:
            return None
        now = self.clock()
        self._expire(now)
        while len(self.by_hash) >= MAX_SESSIONS:
            del self.by_hash[next(iter(self.by_hash))]  # dicts keep insertion order: the oldest
        secret = secrets.token_urlsafe(32)
        ends = now + SESSION_TTL_S if row.expires is None else min(now + SESSION_TTL_S, row.expires)
        session = Session(row.user, row.role, secrets.token_urlsafe(24), row.hash, ends)
        self.by_hash[_hash(secret)] = session
        return secret, session

    def logout(self, request: web.Request) -> None:
        secret = request.cookies.get(COOKIE)
        if secret:
            self.by_hash.pop(_hash(secret), None)

    def lookup(self, request: web.Request) -> Session | None:
        """The live session the request's cookie names, or None."""
        secret = request.cookies.get(COOKIE)
        if not secret:
            return None
        key = _hash(secret)
        session = self.by_hash.get(key)
        if session is None:
            return None
        if session.expires <= self.clock() or session.token_hash not in self.tokens.by_hash:
            del self.by_hash[key]
            return None
        return session

    def identify(self, request: web.Request) -> Identity | None:
        """The session's identity; a 403 for a mutating request without its CSRF token."""
        session = self.lookup(request)
        if session is None:
            return None
        if request.method not in _SAFE:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise PermissionDenied(f"CSRF check failed: a change made from the web page needs its {CSRF_HEADER} header")
        return Identity(session.user, session.role, token=session.token_hash)  # a stream ends with its token

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self.by_hash.items() if s.expires <= now]:
            del self.by_hash[key]
