"""Operating the daemon over HTTP: what is not a job or a node.

=========================================  ==========  ==================================================
``POST   /api/v1/admin/reload``             operator    re-read the three files (schedd.daemon.reload);
                                                        400 ``config_error`` naming file and key, old kept
``GET    /api/v1/admin/tokens``             admin       the API tokens: id (hash prefix), user, role, created
``DELETE /api/v1/admin/tokens/{id}``        admin       revoke tokens by id (a unique hash prefix) or
                                                        ``-?user=NAME`` (all of a user's): at once, and stored
=========================================  ==========  ==================================================

and ``schedd_policy_errors{policy,hook}`` / ``schedd_reloads{result}`` on ``/metrics``.
Set up by :func:`setup`, which the daemon calls on the app :func:`make_app`
built, before the app starts (and is frozen).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from schedd import plugins
from schedd.api.auth import IDENTITY
from schedd.api.keys import TOKENS
from schedd.api.metrics import METRICS
from schedd.daemon.reload import Reloader
from schedd.errors import ConfigError, InputError, PermissionDenied, RequestError
from schedd.store import TokenRow

__all__ = ["MIN_ID", "select_tokens", "setup", "token_view"]

RELOADER = web.AppKey("reloader", Reloader)
#: Shortest token id accepted by revoke: a prefix of the token's sha256.
MIN_ID = 8
_ID_SHOWN = 12


class _Refused(RequestError):
    code = "config_error"


class _NoToken(RequestError):
    status = 404
    code = "unknown_token"


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_view(row: TokenRow) -> dict[str, str | None]:
    """A token as listed: never the token, only its hash's prefix as an id;
    ``expires`` None for a token that never does."""
    return {"id": row.hash[:_ID_SHOWN], "user": row.user, "role": row.role, "created": _utc(row.created),
            "expires": _utc(row.expires) if row.expires is not None else None}


def select_tokens(rows: Iterable[TokenRow], token_id: str = "", user: str = "") -> list[TokenRow]:
    """The tokens ``revoke`` means: those of ``user``, or the one whose hash starts with ``token_id``.

    An id must be at least :data:`MIN_ID` hex digits and name one token (an ambiguous
    prefix is an error, not a revocation of several).
    """
    rows = list(rows)
    if user:
        return [r for r in rows if r.user == user]
    if len(token_id) < MIN_ID:
        raise InputError(f"token id {token_id!r}: give at least {MIN_ID} characters of the id shown by schedd token list")
    found = [r for r in rows if r.hash.startswith(token_id.lower())]
    if len(found) > 1:
        raise InputError(f"token id {token_id!r} names {len(found)} tokens: give more of it")
    return found


def _admin(request: web.Request, role: tuple[str, ...] = ("admin",)) -> None:
    if request[IDENTITY].role not in role:
        raise PermissionDenied(f"only {' or '.join(role)}s may do this")


async def _reload(request: web.Request) -> web.Response:
    _admin(request, ("operator", "admin"))
    try:
        changes = request.app[RELOADER].reload()
    except ConfigError as e:
        raise _Refused(f"reload refused, the configuration in use is kept: {e}") from None
    return web.json_response({"changes": changes})


async def _tokens(request: web.Request) -> web.Response:
    _admin(request)
    book = request.app[TOKENS]
    rows = book.store.tokens() if book.store is not None else list(book.by_hash.values())
    return web.json_response({"tokens": [token_view(r) for r in sorted(rows, key=lambda r: (r.user, r.created))]})


async def _revoke(request: web.Request) -> web.Response:
    _admin(request)
    book = request.app[TOKENS]
    rows = book.store.tokens() if book.store is not None else list(book.by_hash.values())
    gone = select_tokens(rows, request.match_info["id"], request.query.get("user", ""))
    if not gone:
        raise _NoToken("no such token")
    for row in gone:
        book.by_hash.pop(row.hash, None)
        if book.store is not None:
            book.store.delete_token(row.hash)
    if book.store is not None:
        await book.store.flush()
    return web.json_response({"revoked": [token_view(r) for r in gone]})


class _Collector(Collector):
    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("schedd_policy_errors", "Calls of a plugin policy's hook that raised (the call was ignored)",
                                  labels=["policy", "hook"])
        for (policy, hook), n in sorted(plugins.ERRORS.items()):
            fam.add_metric([policy, hook], n)
        yield fam
        rel = CounterMetricFamily("schedd_reloads", "Configuration reloads by result", labels=["result"])
        rel.add_metric(["applied"], self.reloader.reloads)
        rel.add_metric(["refused"], self.reloader.failures)
        yield rel


def setup(app: web.Application, reloader: Reloader) -> None:
    """Register the admin routes and metrics on ``app`` (built by make_app, not yet started)."""
    app[RELOADER] = reloader
    registry: CollectorRegistry = app[METRICS][0]
    registry.register(_Collector(reloader))
    app.router.add_post("/api/v1/admin/reload", _reload)
    app.router.add_get("/api/v1/admin/tokens", _tokens)
    app.router.add_delete("/api/v1/admin/tokens/{id}", _revoke)
