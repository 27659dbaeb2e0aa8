"""The agent's connection to schedd: dial out, register, heartbeat, obey, report.

One WebSocket at a time, dialled *out* to ``/api/v1/agent`` (pods need no
inbound port). Each connection is a session (see :mod:`schedd.protocol`)::

    Register(resources, running, finished)  ->  Welcome(heartbeat_s, kill)
    then, concurrently until the socket closes:
      reader      Launch / Kill / Signal / Ack  -> the job table
      heartbeat   every heartbeat_s: node CPU/memory, GPU samples, per-job samples
      forwarder   Started / Exited as the table produces them (protocol 5: those
                  ready at once in one frame, as schedd's Launches and Acks come)

Nothing is lost across a broken connection: events produced while
disconnected are dropped from the queue because the next Register states the
same facts from disk (``running`` and the unacknowledged ``finished`` exits) —
that *is* the resend. Reconnects back off exponentially from 0.1 s to 5 s
with jitter; jobs keep running and being enforced by their supervisors
meanwhile — until the fence (:mod:`nodeagent.fence`): cut off for half of
schedd's heartbeat timeout, the agent freezes its ranks, so that no copy of a
job runs on here once schedd may have requeued it; schedd's Welcome on the
next session says which to thaw and which to kill. Each heartbeat is followed
by a WebSocket ping carrying its send time: the pong is how the agent knows
schedd took it. A silent session is not kept for ever: a WebSocket ping every
``ping_s`` must be answered within half of it, and schedd closes a session it
gave up on (the node was marked down), so either way the agent registers anew.
A stop (SIGTERM) closes the socket and leaves every job running.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import psutil

from nodeagent.fence import Fence
from nodeagent.gpu import GpuBackend
from nodeagent.jobs import JobTable, RankKey
from nodeagent.reporting import Reporting
from schedd.protocol import (
    BATCH_VERSION,
    CLOSE_VERSION_MISMATCH,
    MIN_PROTOCOL_VERSION,
    Ack,
    Heartbeat,
    Kill,
    Launch,
    Register,
    ServerMessage,
    Signal,
    Tail,
    Welcome,
    decode_server_frame,
    encode,
    encode_frame,
)

__all__ = ["Agent", "AgentConfig", "ProtocolError", "endpoint"]

log = logging.getLogger("nodeagent.agent")

AGENT_PATH = "/api/v1/agent"
_MB = 1 << 20
#: A ping's payload: the monotonic time the heartbeat before it was sent.
_STAMP = struct.Struct("!d")
#: Most reports (Started, Exited, Preparing) sent in one frame (protocol 5)
_BATCH_MAX = 256


class ProtocolError(Exception):
    """schedd said something out of turn (e.g. no Welcome after Register)."""


@dataclass(frozen=True)
class AgentConfig:
    server: str  # http://HOST:PORT or unix:///path/to/schedd.sock
    name: str
    cpus: int
    mem_mb: int
    token: str | None = None
    heartbeat_s: float = 10.0  # until Welcome says otherwise
    labels: dict[str, str] = field(default_factory=dict)
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0
    welcome_timeout_s: float = 10.0
    #: WebSocket ping interval: a session whose pong does not come within half of it
    #: (schedd hung, stopped, or the network black-holed) is left and dialled again.
    ping_s: float = 20.0
    #: PEM file of the CA that signed schedd's certificate (https:// servers with a
    #: private CA); "" = the system's trust store
    ca_file: str = ""
    #: This life of the node (a pod's UID, ``SCHEDD_NODE_UID``): schedd refuses a
    #: session of an earlier one and takes a new one as the end of the earlier one
    incarnation: str = ""
    #: how jobs are enforced here (nodeagent.cgroups mode: cgroup2..., proctree); "" unsaid
    enforcement: str = ""


def _software() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"nodeagent {version('schedd')}"
    except PackageNotFoundError:
        return "nodeagent (not installed)"


def client_tls(ca_file: str) -> ssl.SSLContext:
    """Verify schedd's certificate against ``ca_file`` (or the system's CAs): a token
    is only ever sent to the server it was made for."""
    return ssl.create_default_context(cafile=ca_file or None)


def endpoint(server: str) -> tuple[str, str | None]:
    """(WebSocket URL, unix socket path or None) for a server address.

    >>> endpoint("http://10.0.0.5:8330")
    ('http://10.0.0.5:8330/api/v1/agent', None)
    >>> endpoint("unix:///run/schedd.sock")
    ('http://localhost/api/v1/agent', '/run/schedd.sock')
    >>> endpoint("ftp://x")
    Traceback (most recent call last):
    ...
    ValueError: server must be http(s)://HOST:PORT or unix:///PATH, got 'ftp://x'
    """
    if server.startswith("unix://"):
        return "http://localhost" + AGENT_PATH, server[len("unix://"):]
    if server.startswith(("http://", "https://")):
        return server.rstrip("/") + AGENT_PATH, None
    raise ValueError(f"server must be http(s)://HOST:PORT or unix:///PATH, got {server!r}")


class Agent:
    """Keeps one session with schedd alive until ``stop`` is set."""

    def __init__(self, config: AgentConfig, table: JobTable, gpus: GpuBackend) -> None:
        self.config = config
        self.table = table
        self.gpus = gpus
        self.url, self.socket_path = endpoint(config.server)
        self.heartbeat_s = config.heartbeat_s
        self.sessions = 0  # Welcomes received, for tests and logs
        self.close_reason = ""  # what schedd said when it last closed a session
        self._send_lock = asyncio.Lock()
        self._last_failure = ""
        self.reporting = Reporting(table)  # protocol 3: job metrics out, output tails back
        table.extra_env = self.reporting.job_env
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.fence = Fence(table, table.root.parent / "fenced.json")
        psutil.cpu_percent(None)  # the first reading is meaningless: take it now

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with backoff; return promptly once ``stop`` is set."""
        connector = (aiohttp.UnixConnector(path=self.socket_path) if self.socket_path
                     else aiohttp.TCPConnector(ssl=client_tls(self.config.ca_file)))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)  # a blackholed server is not a hang
        fence = asyncio.create_task(self.fence.run(stop, lambda: self.heartbeat_s), name="fence")
        try:
            await self._dial(connector, timeout, stop)
        finally:
            fence.cancel()
            await asyncio.gather(fence, return_exceptions=True)

    async def _dial(self, connector: aiohttp.BaseConnector, timeout: aiohttp.ClientTimeout,
                    stop: asyncio.Event) -> None:
        delay = self.config.backoff_min_s
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while not stop.is_set():
                attempt = asyncio.create_task(self._connect(http))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not attempt.done():  # stop: leave the session (and the socket) right now
                    attempt.cancel()
                    await asyncio.gather(attempt, return_exceptions=True)
                    break
                if attempt.result():
                    delay = self.config.backoff_min_s
                pause = random.uniform(delay / 2, delay)
                delay = min(delay * 2, self.config.backoff_max_s)
                if self.fence.after_s > 0:  # a refused try moves the fence: try often enough to tell
                    pause = min(pause, self.fence.after_s / 3)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    async def _connect(self, http: aiohttp.ClientSession) -> bool:
        """One connection, start to end; True if schedd welcomed us (resets the backoff)."""
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        welcomed = self.sessions
        tried_at = time.monotonic()
        try:
            # a Launch carries the environment spec (up to 16 MB: schedd.envspec.MAX_SPEC_BYTES)
            # autoping off: the pongs to our stamped pings are the fence's confirmations
            async with http.ws_connect(self.url, headers=headers, heartbeat=self.config.ping_s,
                                       autoping=False, max_msg_size=32 * 1024 * 1024) as ws:
                self._last_failure = ""
                log.info("connected to %s", self.config.server)
                try:
                    await self._session(ws)
                finally:
                    if ws.close_code == CLOSE_VERSION_MISMATCH:  # not ours to fix: say it loudly, keep trying
                        log.error("schedd at %s refused this agent: %s", self.config.server, self.close_reason)
                    log.info("disconnected from %s (close code %s)", self.config.server, ws.close_code)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if _refused(exc):
                self.fence.absent(tried_at)  # nothing listens: schedd is down, not cut off from us
            reason = str(exc) or type(exc).__name__
            if reason != self._last_failure:  # one line per outage, not one per retry
                log.info("cannot reach %s: %s (retrying with backoff)", self.config.server, reason)
            self._last_failure = reason
        except (ProtocolError, msgspec.DecodeError) as exc:
            log.warning("protocol error with %s: %s", self.config.server, exc)
        except Exception:  # a bug must not stop the agent: jobs still need reporting
            log.exception("session with %s failed", self.config.server)
        return self.sessions > welcomed

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        events = self.table.events
        while not events.empty():  # the Register below states all of it from disk
            events.get_nowait()
        sent_at = time.monotonic()
        await self._send(ws, Register(
            name=self.config.name, cpus=self.config.cpus, mem_mb=self.config.mem_mb,
            gpus=self.gpus.info(), fake_gpus=self.gpus.fake, running=self.table.running(),
            finished=self.table.finished(), labels=self.config.labels, incarnation=self.config.incarnation,
            min_version=MIN_PROTOCOL_VERSION, software=_software(), enforcement=self.config.enforcement,
        ))
        frame = await asyncio.wait_for(self._receive(ws), self.config.welcome_timeout_s) or []
        welcome = frame[0] if frame else None
        if not isinstance(welcome, Welcome):
            raise ProtocolError(f"expected welcome, got {type(welcome).__name__ if welcome else 'a close'}")
        self.sessions += 1
        self._welcome(welcome, sent_at)
        tasks = [
            asyncio.create_task(self._reader(ws), name="reader"),
            asyncio.create_task(self._heartbeats(ws), name="heartbeat"),
            asyncio.create_task(self._forward(ws, welcome.version >= BATCH_VERSION), name="forwarder"),
        ]
        self._ws = ws
        self._obey_all(frame[1:])  # what schedd sent right behind it (protocol 5: in the same frame)
        if welcome.version >= 3:
            tasks.append(asyncio.create_task(self.reporting.run(lambda m: self._send(ws, m)), name="metrics"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, (aiohttp.ClientError, ConnectionError)):
                raise exc
        await ws.close()

    def _welcome(self, msg: Welcome, registered_at: float | None = None) -> None:
        """Settings and verdict; ``registered_at``: the send time of the Register it answers
        (None for a Welcome within a session, which only changes settings)."""
        self.reporting.welcome(msg)
        self.heartbeat_s = msg.heartbeat_s if msg.heartbeat_s > 0 else self.config.heartbeat_s
        stale = [RankKey(r.job_id, r.attempt, r.rank) for r in msg.kill]
        for key in stale:
            if not self.fence.is_frozen(key):  # a frozen one is the fence's to kill, at once
                log.info("schedd does not know %s: killing it", key)
                self.table.kill(key)
        self.fence.welcome(msg.heartbeat_timeout_s, registered_at, stale, self.heartbeat_s)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> list[ServerMessage] | None:
        """The messages of schedd's next frame (one, or several from protocol 5), or None
        once the socket is closed."""
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.PONG:
                if len(msg.data) == _STAMP.size:  # not one of aiohttp's own keep-alive pings
                    self.fence.confirm(_STAMP.unpack(msg.data)[0])
                continue
            if msg.type is aiohttp.WSMsgType.PING:
                async with self._send_lock:
                    await ws.pong(msg.data)
                continue
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                try:  # one bad message is not a broken session, nor a reason to drop those beside it
                    frame = decode_server_frame(msg.data, _malformed)
                except msgspec.ValidationError as exc:
                    _malformed(exc)
                    continue
                if frame:
                    return frame
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                if msg.type == aiohttp.WSMsgType.CLOSE and msg.extra:
                    self.close_reason = str(msg.extra)
                return None

    async def _reader(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while (frame := await self._receive(ws)) is not None:
            self._obey_all(frame)

    def _obey_all(self, msgs: list[ServerMessage]) -> None:
        for msg in msgs:
            try:
                self._obey(msg)
            except Exception:  # one message we could not handle is not a broken session
                log.exception("handling %r failed", msg)

    def _obey(self, msg: ServerMessage) -> None:
        if isinstance(msg, Welcome):
            self._welcome(msg)
            return
        if isinstance(msg, Tail):
            ws = self._ws
            if ws is not None:
                self.reporting.tail(msg, lambda m: self._send(ws, m))
            return
        key = RankKey(msg.job_id, msg.attempt, msg.rank)
        if isinstance(msg, Launch):
            self.table.launch(msg)
        elif isinstance(msg, Kill):
            log.info("kill %s (delay %g s, status %s)", key, msg.kill_delay_s, msg.status)
            self.table.kill(key, msg.kill_delay_s, msg.status)
        elif isinstance(msg, Signal):
            log.info("signal %s %s", key, msg.signal)
            self.table.signal(key, msg.signal)
        elif isinstance(msg, Ack):
            self.table.ack(key)

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            beat = await asyncio.to_thread(self._telemetry)
            sent_at = time.monotonic()
            async with self._send_lock:  # the ping right behind it: its pong confirms the beat
                await ws.send_str(encode(beat).decode())
                await ws.ping(_STAMP.pack(sent_at))
            await asyncio.sleep(self.heartbeat_s)

    def _telemetry(self) -> Heartbeat:
        """Node and job readings; blocking (psutil, NVML), so it runs in a thread."""
        mem = psutil.virtual_memory()
        return Heartbeat(
            time=time.time(), cpu_pct=psutil.cpu_percent(None), mem_used_mb=(mem.total - mem.available) // _MB,
            gpus=self.gpus.sample(), jobs=self.table.samples(),
        )

    async def _forward(self, ws: aiohttp.ClientWebSocketResponse, batch: bool) -> None:
        """The table's reports, as they come; with ``batch`` (protocol 5) all those
        ready at once in one frame: the ranks whose ends one turn of the loop heard."""
        events = self.table.events
        while True:
            msgs: list[msgspec.Struct] = [await events.get()]
            while batch and len(msgs) < _BATCH_MAX and not events.empty():
                msgs.append(events.get_nowait())
            await self._send(ws, *msgs)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, *msgs: msgspec.Struct) -> None:
        """One frame: a lone message as itself, several as an array (protocol 5 only)."""
        async with self._send_lock:
            await ws.send_str(encode_frame(msgs).decode())


def _malformed(exc: msgspec.ValidationError) -> None:
    log.warning("ignoring a malformed message from schedd: %s", exc)


def node_memory_mb() -> int:
    """Memory this node may use: physical RAM, or a smaller cgroup limit (containers)."""
    total = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(path).read_text().strip()))
    return int(total // _MB)


def _refused(exc: BaseException) -> bool:
    """The connection was refused (TCP RST, or no socket file): nothing listened."""
    err = getattr(exc, "os_error", exc)
    return isinstance(err, (ConnectionRefusedError, FileNotFoundError)) or getattr(err, "errno", None) in (
        errno.ECONNREFUSED, errno.ENOENT)
