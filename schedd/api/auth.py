"""Who is asking: peer credentials on the Unix socket, bearer tokens over TCP.

On the Unix socket the kernel tells us the caller's uid (``SO_PEERCRED``), so a
local user needs no setup and cannot lie; the socket file is mode 0666 because
permission comes from the uid, not from the file. root and the daemon's own
user are admins. Over TCP a token is required; only its SHA-256 is stored.
A token may carry an expiry (``schedd token create USER --expires-in 7d``),
as a Slurm or PBS user's credential does; from then on it is refused (401)
like a revoked one, with its own message so that the user knows to get a new one.

Roles: ``user``, ``operator`` (any job, nodes, the pool, reload), ``admin``
(also tokens), and ``agent``: a token that may only connect a node agent
(``GET /api/v1/agent``) and is refused everywhere else. A remote agent's token
sits on a node where users' jobs run; with ``agent`` a token read off a node
cannot cancel others' jobs, resize the pool or mint tokens, as an admin one could.
A browser may instead present the session cookie the web page's login gave it
(:mod:`schedd.web.session`, registered as ``TokenBook.sessions``); a bearer
header, when present, is always the one judged.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pwd
import secrets
import socket
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from schedd.errors import PermissionDenied, Unauthenticated
from schedd.store import Store, TokenRow

__all__ = ["AGENT_PATH", "IDENTITY", "ROLES", "Identity", "SessionResolver", "TokenBook", "identify"]

ROLES = ("user", "operator", "admin", "agent")
#: The one route an ``agent`` token opens: the agents' WebSocket.
AGENT_PATH = "/api/v1/agent"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    role: str = "user"
    local: bool = False  # came over the Unix socket
    #: the hash of the bearer token it came from ("" for a uid or a web session):
    #: a long-lived connection (an agent's socket, a stream) asks :meth:`TokenBook.holds`
    token: str = ""

    @property
    def privileged(self) -> bool:
        return self.role in ("operator", "admin")


#: The caller of a request, set once by the app's authenticating middleware.
IDENTITY = web.RequestKey("identity", Identity)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionResolver(Protocol):
    """Who a request's session cookie names (None: no valid session); raises
    a RequestError to refuse it outright (a change without its CSRF token)."""

    def identify(self, request: web.Request) -> Identity | None: ...


class TokenBook:
    """Tokens by hash, loaded from the store at start and kept in memory."""

    def __init__(self, store: Store | None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.by_hash: dict[str, TokenRow] = {t.hash: t for t in store.tokens()} if store else {}
        #: browser sessions, when the web page is served (schedd.web sets it)
        self.sessions: SessionResolver | None = None

    def create(self, user: str, role: str, now: float, expires: float | None = None) -> str:
        """A new token (shown once, never stored); ``expires``: refused from then on."""
        token = "schedd_" + secrets.token_urlsafe(32)
        row = TokenRow(_hash(token), user, role, now, expires)
        self.by_hash[row.hash] = row
        if self.store is not None:
            self.store.put_token(row)
        return token

    def judge(self, token: str) -> TokenRow:
        """The row of a valid token; Unauthenticated (401) for an unknown, revoked
        or expired one. A miss re-reads the store (``schedd token create`` writes there)."""
        h = _hash(token)
        row = self.by_hash.get(h)
        if row is None and self.store is not None:
            self.by_hash = {t.hash: t for t in self.store.tokens()}
            row = self.by_hash.get(h)
        if row is None:
            raise Unauthenticated("the bearer token is not valid")
        if row.expires is not None and self.clock() >= row.expires:
            when = datetime.datetime.fromtimestamp(row.expires, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise Unauthenticated(f"the bearer token expired at {when}: ask for a new one (schedd token create)")
        return row

    def holds(self, ident: Identity) -> bool:
        """Whether the token ``ident`` came with is still valid: neither revoked nor
        expired. A connection that outlives its request (an agent's WebSocket, the
        event stream) asks at each message, so a revoke or an expiry ends it too."""
        if not ident.token:
            return True
        row = self.by_hash.get(ident.token)
        return row is not None and (row.expires is None or self.clock() < row.expires)

    def check(self, token: str) -> TokenRow | None:
        """The row of a valid token, None for an unknown, revoked or expired one."""
        try:
            return self.judge(token)
        except Unauthenticated:
            return None


def _user_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _confined(request: web.Request, ident: Identity) -> Identity:
    """``ident``, unless it is an agent's asking for anything but the agents' socket (403)."""
    if ident.role == "agent" and request.path != AGENT_PATH:
        raise PermissionDenied(f"an agent token may only connect a node agent ({AGENT_PATH}); "
                               "use a user's token (schedd token create USER)")
    return ident


#: A Unix-socket connection's caller: its peer's credentials are fixed when it
#: connects, and the user database may be a directory service (LDAP, SSSD) whose
#: lookup costs far more than the request — so once per connection, not per request.
_LOCAL: weakref.WeakKeyDictionary[object, Identity] = weakref.WeakKeyDictionary()


def identify(request: web.Request, tokens: TokenBook) -> Identity:
    """The caller of ``request``; raises Unauthenticated (401) when unknown."""
    transport = request.transport
    if transport is not None:
        known = _LOCAL.get(transport)
        if known is not None:
            return known
    sock = transport.get_extra_info("socket") if transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        admin = uid in (0, os.getuid())
        local = _LOCAL[transport] = Identity(_user_of(uid), "admin" if admin else "user", local=True)
        return local
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        row = tokens.judge(header[7:].strip())
        return _confined(request, Identity(row.user, row.role, token=row.hash))
    if tokens.sessions is not None:
        ident = tokens.sessions.identify(request)
        if ident is not None:
            return _confined(request, ident)
    raise Unauthenticated("over TCP a token is required: set SCHEDD_TOKEN (schedd token create USER), or use the Unix socket")
