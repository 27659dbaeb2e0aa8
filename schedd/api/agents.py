"""The agents' WebSocket (``/api/v1/agent``): one connection per node agent.

The first message must be ``Register``; then heartbeats, started and exited
reports flow in, and launch/kill/signal/ack flow out through a per-connection
queue drained by a writer task, so the state never awaits a socket. From
protocol 5 a frame may hold several messages each way: the writer sends all
that is queued in one frame, and the messages of an agent's frame are applied
in order and committed once, their Acks and Launches sent after that commit. A session
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

from schedd.daemon.active import Outbox
from schedd.daemon.fleet import NodeEntry
from schedd.daemon.reconcile import on_heartbeat, on_register, on_started
from schedd.api.jobs import who
from schedd.api.keys import LOOP, STATE, TOKENS
from schedd.api.metrics_api import AGENT_VERSIONS, SERIES, TAILS
from schedd.api.mlflow import MLFLOW
from schedd.series.feed import take_points, take_samples
from schedd.errors import PermissionDenied
from schedd.protocol import (
    BATCH_VERSION,
    CLOSE_VERSION_MISMATCH,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Ack,
    AgentMessage,
    Exited,
    Heartbeat,
    Points,
    Preparing,
    Register,
    Started,
    TailReply,
    decode_agent_frame,
    encode,
    join_frame,
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
#: A batched frame to an agent stops growing past this (agents take up to 32 MB a frame).
FRAME_BYTES = 1 << 20


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

    writer: asyncio.Task[None] | None = None
    request.app[SOCKETS].add(ws)
    name = ""
    try:
        first = await asyncio.wait_for(ws.receive(), REGISTER_TIMEOUT_S)
        frame = _decode(first)
        msg = frame[0]
        if len(frame) != 1 or not isinstance(msg, Register):
            raise ValueError(f"the first message must be 'register' alone, got {_names(frame)}")
        version = negotiate(msg.min_version, msg.version)
        if version is None:
            await _refuse(ws, msg)
            return ws
        writer = asyncio.create_task(_drain(ws, outq, version >= BATCH_VERSION))
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
            await _frame(request.app, entry, _decode(raw))
    except (ValueError, msgspec.ValidationError, msgspec.DecodeError, TimeoutError) as e:
        reason = f"bad agent message: {e}" if not isinstance(e, TimeoutError) else "no register within 10 s"
        log.warning("agent %s: %s", name or _peer(request), reason)
        await ws.close(code=1008, message=reason[:120].encode())
    finally:
        request.app[SOCKETS].discard(ws)
        if name:
            state.fleet.disconnect(name, send)
            log.info("agent %s disconnected", name)
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
    return ws


async def _frame(app: web.Application, entry: NodeEntry, frame: list[AgentMessage]) -> None:
    """Apply a frame's messages in order (protocol 5: several), then one commit and
    dispatch for all of them — also when one of them is refused, for those before it."""
    out: Outbox = []
    commit = False
    try:
        for m in frame:
            commit |= _take(app, entry, m, out)
    finally:
        if commit:
            await app[LOOP].dispatch(out)


def _take(app: web.Application, entry: NodeEntry, m: AgentMessage, out: Outbox) -> bool:
    """Apply one message of an agent's frame to the state, the messages it leads to
    appended to ``out``; whether the store must commit before they go (an Exited's
    Ack only after the commit that recorded it)."""
    state = app[STATE]
    if isinstance(m, Heartbeat):
        on_heartbeat(state, entry, m)
        take_samples(app[SERIES], state, m)
        return False
    if isinstance(m, Points):
        take_points(app[SERIES], state, entry.node.name, m)
        return False
    if isinstance(m, TailReply):
        app[TAILS].answer(m)
        return False
    if isinstance(m, Started):
        entry.last_seen = state.clock()
        out += on_started(state, m)
    elif isinstance(m, Exited):
        out += state.rank_exited(m)
        out.append((entry.node.name, Ack(m.job_id, m.attempt, m.rank)))
    elif isinstance(m, Preparing):
        out += state.preparing(m.job_id, m.attempt, m.comment, m.rank)
    else:
        raise ValueError(f"unexpected {type(m).__name__.lower()} after register")
    return True


def _names(frame: list[AgentMessage]) -> str:
    return ", ".join(type(m).__name__.lower() for m in frame) or "an empty array"


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


def _decode(raw: object) -> list[AgentMessage]:
    """The messages of one frame: one, or (protocol 5) several; never none."""
    from aiohttp import WSMessage

    assert isinstance(raw, WSMessage)
    if raw.type in (WSMsgType.TEXT, WSMsgType.BINARY):
        msgs = decode_agent_frame(raw.data)
        if msgs:
            return msgs
        raise ValueError("an empty array of messages")
    raise ValueError(f"connection ended before a message ({raw.type.name})")


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "127.0.0.1"


async def _drain(ws: web.WebSocketResponse, outq: asyncio.Queue[bytes], batch: bool) -> None:
    """Send what is queued; with ``batch`` (protocol 5) all that is ready in one frame
    (a cycle's Launches, a frame's Acks), up to :data:`FRAME_BYTES` unless one
    message alone is larger."""
    while True:
        parts = [await outq.get()]
        size = len(parts[0])
        while batch and not outq.empty() and size < FRAME_BYTES:
            parts.append(outq.get_nowait())
            size += len(parts[-1])
        await ws.send_str(join_frame(parts).decode())
