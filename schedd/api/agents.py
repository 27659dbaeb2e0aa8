"""The agents' WebSocket (``/api/v1/agent``): one connection per node agent.

The first message must be ``Register``; then heartbeats, started and exited
reports flow in, and launch/kill/signal/ack flow out through a per-connection
queue drained by a writer task, so the state never awaits a socket. A session
schedd gave up on (its node was marked down for silence, or the node registered
again on another socket) is closed at its next message, so a live agent whose
node went down registers anew at once instead of talking into the void. A message
that does not decode closes the connection with the decoder's precise reason
(the agent logs it and reconnects); it never reaches the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from aiohttp import WSMsgType, web

from schedd.daemon.reconcile import on_heartbeat, on_register, on_started
from schedd.api.jobs import who
from schedd.api.keys import LOOP, STATE, TOKENS
from schedd.api.metrics_api import AGENT_VERSIONS, SERIES, TAILS
from schedd.api.mlflow import MLFLOW
from schedd.series.feed import take_points, take_samples
from schedd.errors import PermissionDenied
from schedd.protocol import (
    CLOSE_VERSION_MISMATCH,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Ack,
    Exited,
    Heartbeat,
    Points,
    Preparing,
    Register,
    Started,
    TailReply,
    decode_agent,
    encode,
    negotiate,
)

__all__ = ["SOCKETS", "close_all", "handle"]

#: Open agent sockets, closed on shutdown so that cleanup does not wait for them.
SOCKETS = web.AppKey("agent_sockets", set[web.WebSocketResponse])


async def close_all(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=1001, message=b"schedd is shutting down")

log = logging.getLogger("schedd.daemon.reconcile")
REGISTER_TIMEOUT_S = 10.0


async def handle(request: web.Request) -> web.WebSocketResponse:
    ident = who(request)
    if ident.role not in ("admin", "agent"):
        raise PermissionDenied("only an agent or admin identity (an agent token, the daemon's user, root) may connect an agent")
    state, loop, series = request.app[STATE], request.app[LOOP], request.app[SERIES]
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    outq: asyncio.Queue[bytes] = asyncio.Queue()

    def send(msg: msgspec.Struct) -> None:
        outq.put_nowait(encode(msg))

    writer = asyncio.create_task(_drain(ws, outq))
    request.app[SOCKETS].add(ws)
    name = ""
    try:
        first = await asyncio.wait_for(ws.receive(), REGISTER_TIMEOUT_S)
        msg = _decode(first)
        if not isinstance(msg, Register):
            raise ValueError(f"the first message must be 'register', got {type(msg).__name__.lower()}")
        version = negotiate(msg.min_version, msg.version)
        if version is None:
            await _refuse(ws, msg)
            return ws
        name = msg.name
        addr = msg.labels.get("addr") or _peer(request)
        welcome, out = on_register(state, msg, send, addr)
        welcome.version = version
        if version >= 3:
            welcome.metrics_max_points = series.settings.max_points_per_job
            tracking = request.app[MLFLOW]
            welcome.tracking_url, welcome.metrics_secret = tracking.base_url, tracking.secret
        request.app[AGENT_VERSIONS][name] = version
        send(welcome)
        await loop.dispatch(out)
        log.info("agent %s registered: %d cpus, %d gpus%s, %d running, %d finished", name, msg.cpus,
                 len(msg.gpus), " (fake)" if msg.fake_gpus else "", len(msg.running), len(msg.finished))
        entry = state.fleet.nodes[name]
        async for raw in ws:
            if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if not request.app[TOKENS].holds(ident):  # revoked or expired since it connected
                log.warning("agent %s: closing its session: its token was revoked or has expired", name)
                await ws.close(code=4001, message=b"the agent's token was revoked or has expired")
                break
            if entry.send is not send:  # node marked down, or registered anew on another socket
                why = f"node marked down: {entry.comment}" if entry.send is None else "node registered on another socket"
                await _drop(ws, name, why)
                break
            m = _decode(raw)
            if isinstance(m, Heartbeat):
                on_heartbeat(state, entry, m)
                take_samples(series, state, m)
            elif isinstance(m, Points):
                take_points(series, state, name, m)
            elif isinstance(m, TailReply):
                request.app[TAILS].answer(m)
            elif isinstance(m, Started):
                entry.last_seen = state.clock()
                await loop.dispatch(on_started(state, m))
            elif isinstance(m, Exited):
                out = state.rank_exited(m) + [(name, Ack(m.job_id, m.attempt, m.rank))]
                await loop.dispatch(out)
            elif isinstance(m, Preparing):
                await loop.dispatch(state.preparing(m.job_id, m.attempt, m.comment, m.rank))
            else:
                raise ValueError(f"unexpected {type(m).__name__.lower()} after register")
    except (ValueError, msgspec.ValidationError, msgspec.DecodeError, TimeoutError) as e:
        reason = f"bad agent message: {e}" if not isinstance(e, TimeoutError) else "no register within 10 s"
        log.warning("agent %s: %s", name or _peer(request), reason)
        await ws.close(code=1008, message=reason[:120].encode())
    finally:
        request.app[SOCKETS].discard(ws)
        if name:
            state.fleet.disconnect(name, send)
            log.info("agent %s disconnected", name)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return ws


def software() -> str:
    """``schedd 0.1.0``: this side's software, for messages that name both sides."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"schedd {version('schedd')}"
    except PackageNotFoundError:
        return "schedd (not installed)"


async def _refuse(ws: web.WebSocketResponse, msg: Register) -> None:
    """An agent with no protocol version in common: say both ranges, in the log and the close."""
    theirs = f"protocol {msg.min_version}..{msg.version}" + (f" ({msg.software})" if msg.software else "")
    ours = f"{MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION} ({software()})"
    reason = f"agent {msg.name} speaks {theirs}; this schedd speaks {ours}: upgrade one side"
    log.error("refusing %s", reason)
    await ws.close(code=CLOSE_VERSION_MISMATCH, message=reason.encode()[:123])


async def _drop(ws: web.WebSocketResponse, name: str, why: str) -> None:
    """Close a session schedd gave up on, so that its agent registers anew: the
    Register reconciles what the node runs and brings it back. Its message is
    left unread (an exit in it is resent in the Register)."""
    log.warning("agent %s: closing a session schedd gave up on (%s); it will register again", name, why)
    await ws.close(code=4000, message=b"session dropped: register again")


def _decode(raw: object) -> object:
    from aiohttp import WSMessage

    assert isinstance(raw, WSMessage)
    if raw.type == WSMsgType.TEXT:
        return decode_agent(raw.data)
    if raw.type == WSMsgType.BINARY:
        return decode_agent(raw.data)
    raise ValueError(f"connection ended before a message ({raw.type.name})")


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "127.0.0.1"


async def _drain(ws: web.WebSocketResponse, outq: asyncio.Queue[bytes]) -> None:
    while True:
        data = await outq.get()
        await ws.send_str(data.decode())
