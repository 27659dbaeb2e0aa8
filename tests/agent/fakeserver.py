"""A tiny schedd stand-in for agent tests: real aiohttp, real WebSocket, loopback.

It speaks only the agent half of the protocol: answers each Register with a
Welcome, queues everything the agent sends, and lets the test send messages
and drop connections. Test scaffolding, not a mock of the agent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import aiohttp
from aiohttp import web

from schedd.protocol import (
    BATCH_VERSION,
    AgentMessage,
    Heartbeat,
    RunningJob,
    ServerMessage,
    Welcome,
    decode_agent,
    decode_agent_frame,
    encode,
    encode_frame,
)

TIMEOUT_S = 30.0
T = TypeVar("T")


class FakeServer:
    def __init__(self, heartbeat_s: float = 0.2, autoping: bool = True, version: int = 1) -> None:
        self.heartbeat_s = heartbeat_s
        self.autoping = autoping  # False: a server that never answers a ping (hung, black-holed)
        self.version = version  # the protocol version its Welcome chooses
        self.frames: list[int] = []  # how many messages each frame from the agent held
        self.received: asyncio.Queue[AgentMessage] = asyncio.Queue()
        self.heartbeats: asyncio.Queue[Heartbeat] = asyncio.Queue()
        self.headers: list[dict[str, str]] = []
        self.kill_on_welcome: list[RunningJob] = []
        self.with_welcome: list[ServerMessage] = []  # sent in the Welcome's frame (protocol 5)
        self.ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _agent(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=self.autoping)
        await ws.prepare(request)
        self.headers.append(dict(request.headers))
        self.ws = ws
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            # below protocol 5 a frame holds one message: an array would fail to decode here
            msgs = decode_agent_frame(frame.data) if self.version >= BATCH_VERSION else [decode_agent(frame.data)]
            self.frames.append(len(msgs))
            for msg in msgs:
                if isinstance(msg, Heartbeat):
                    self.heartbeats.put_nowait(msg)
                    continue
                self.received.put_nowait(msg)
                if type(msg).__name__ == "Register":
                    welcome = Welcome(heartbeat_s=self.heartbeat_s, kill=self.kill_on_welcome, version=self.version)
                    await ws.send_str(encode_frame([welcome, *self.with_welcome]).decode())
        return ws

    async def start(self, *, port: int = 0, path: Path | None = None) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/agent", self._agent)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site: web.BaseSite
        if path is not None:
            site = web.UnixSite(self._runner, str(path))
            self.url = f"unix://{path}"
        else:
            site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        if path is None:
            host, bound = self._runner.addresses[0][:2]  # the port the OS chose
            self.url = f"http://{host}:{bound}"

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop(self) -> None:
        """Close the agent's socket; the agent should reconnect."""
        assert self.ws is not None
        await self.ws.close()

    async def send(self, msg: ServerMessage) -> None:
        assert self.ws is not None
        await self.ws.send_str(encode(msg).decode())

    async def send_frame(self, msgs: list[ServerMessage | str]) -> None:
        """Several messages in one frame (protocol 5); a str is sent as it is (JSON)."""
        assert self.ws is not None
        parts = [m if isinstance(m, str) else encode(m).decode() for m in msgs]
        await self.ws.send_str(f"[{','.join(parts)}]")

    async def expect(self, kind: type[T]) -> T:
        """The next non-heartbeat message, which must be a ``kind``."""
        msg = await asyncio.wait_for(self.received.get(), TIMEOUT_S)
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
        return msg
