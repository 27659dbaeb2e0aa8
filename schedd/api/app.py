"""The aiohttp application: routes, the error mapping, startup and cleanup.

Errors are mapped in one place (:func:`_errors`): a :class:`RequestError` is
its own 4xx, a body msgspec cannot decode is a 400 naming the field, and only
a bug is a 500 — logged with its traceback, answered without one.

Every ``/api/`` request is authenticated (:func:`_authenticate`) before its
handler runs, so no body is read, decompressed or decoded for a stranger.
Bodies are never decompressed at all (``auto_decompress=False``): a
``Content-Encoding`` other than identity is a 400, which also rules out a
small gzip that inflates to gigabytes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from schedd.api import agents, jobs, metrics, metrics_api, mlflow, nodes, openapi, stream
from schedd.api import pool as pool_api
from schedd.api.auth import IDENTITY, TokenBook, identify
from schedd.api.keys import LOOP, STATE, TOKENS
from schedd.errors import InputError, RequestError
from schedd.daemon.records import explain
from schedd.daemon.loop import Loop
from schedd.daemon.state import State
from schedd.series import Series
from schedd import web as web_page

__all__ = ["error_body", "make_app"]

log = logging.getLogger("schedd.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(status: int, code: str, message: str) -> web.Response:
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as e:
        return error_body(e.status, e.code, str(e))
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        return error_body(400, "bad_request", f"invalid request body: {explain(str(e))}")
    except web.HTTPRequestEntityTooLarge as e:
        return error_body(413, "too_large", e.text or "request body too large")
    except web.HTTPException as e:
        if e.status >= 400:
            return error_body(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_body(500, "internal", "internal error (logged by schedd)")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who asks, before anything of the request's body is touched; then refuse a
    compressed body (nothing is decompressed: see the module docstring)."""
    if request.path.startswith("/api/"):
        request[IDENTITY] = identify(request, request.app[TOKENS])
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InputError(f"Content-Encoding {encoding!r}: not accepted; send the JSON body uncompressed")
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(state: State, loop: Loop, tokens: TokenBook) -> web.Application:
    app = web.Application(middlewares=[_errors, _authenticate], client_max_size=state.settings.max_body_mb * 1024 * 1024,
                          handler_args={"auto_decompress": False})
    app[STATE], app[LOOP], app[TOKENS] = state, loop, tokens
    app[agents.SOCKETS] = set()
    app.on_shutdown.append(agents.close_all)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", metrics.handle)
    app.router.add_get("/api/v1/agent", agents.handle)
    metrics.setup(app)
    jobs.add_routes(app)
    nodes.add_routes(app)
    pool_api.add_routes(app)  # POST /api/v1/pool/{group}/scale
    metrics_api.add_routes(app, Series(state.store, state.settings.metrics, state.clock))
    stream.add_routes(app, state)
    mlflow.add_routes(app)
    openapi.add_routes(app)  # GET /api/v1/openapi.json
    web_page.add_routes(app)  # the web page under /ui/
    return app
