"""REST for the pool driver: ``POST /api/v1/pool/{group}/scale`` (operators).

Body ``{"count": N}``. With a driver that can resize (Kubernetes with
``manage = true``) the group's nodes above ``N`` are drained at once and its
StatefulSet shrinks as their jobs end; a larger ``N`` scales up at once. The
answer: the group, the count wanted, the StatefulSet's replicas now, the nodes
draining. 409 where the pool cannot be resized by schedd (no such driver,
``manage = false``), 404 for an unknown group.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from schedd.api.jobs import who
from schedd.api.keys import STATE
from schedd.errors import PermissionDenied, WrongState

__all__ = ["add_routes"]


class ScaleBody(msgspec.Struct, forbid_unknown_fields=True):
    count: int


async def scale(request: web.Request) -> web.Response:
    if not who(request).privileged:
        raise PermissionDenied("only operators may resize the pool")
    body = msgspec.json.decode(await request.read() or b"{}", type=ScaleBody)
    pool = request.app[STATE].fleet.pool
    if pool is None or pool.resize is None:
        raise WrongState("this pool cannot be resized by schedd (a kubernetes pool with manage = true can)")
    return web.json_response({"pool": pool.resize(request.match_info["group"], body.count)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/pool/{group}/scale", scale)
