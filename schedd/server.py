"""Assembling the daemon: store, state, scheduling loop, HTTP sites, pool.

Long-lived parts start in order and stop in reverse (like aiohttp's cleanup
contexts): store -> state (reloaded) -> loop -> TCP and Unix sites -> pool;
on SIGTERM/SIGINT the pool's agents stop (their jobs keep running under their
supervisors), the sites close, the loop stops, and the store flushes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from aiohttp import web

from schedd.api import make_app
from schedd.api.auth import TokenBook
from schedd.config import load_pipeline
from schedd.errors import ConfigError
from schedd.loop import Loop
from schedd.pool.local import AgentSpec, LocalPool
from schedd.settings import Settings
from schedd.state import State
from schedd.store import Store

__all__ = ["Daemon", "parse_listen", "run"]

log = logging.getLogger("schedd")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("listen", f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8330")
    return host or "127.0.0.1", int(port)


class Daemon:
    def __init__(self, settings: Settings, agents: list[AgentSpec] | None = None) -> None:
        self.settings = settings
        self.agents = agents
        self.state_dir = Path(settings.state_dir)
        self.socket_path = self.state_dir / "schedd.sock"
        self.host, self.port = parse_listen(settings.listen)
        self.pipeline = load_pipeline(settings.policies_path())

    async def run(self, stop: asyncio.Event) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        store = Store(self.state_dir / "schedd.db")
        store.start()
        state = State(self.settings, self.pipeline, store, time.time)
        state.load(store.load_active())
        log.info("state loaded: %d jobs in %.2f s", len(state.jobs), time.monotonic() - t0)
        loop = Loop(state)
        app = make_app(state, loop, TokenBook(store))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        pool: LocalPool | None = None
        loop_task = asyncio.create_task(loop.run(), name="scheduling-loop")
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            await web.UnixSite(runner, str(self.socket_path)).start()
            os.chmod(self.socket_path, 0o666)  # identity comes from SO_PEERCRED, not the file mode
            tcp = next((a for a in runner.addresses if isinstance(a, tuple)), (self.host, self.port))
            log.info("schedd listening on http://%s:%d and unix://%s", tcp[0], tcp[1], self.socket_path)
            print(f"schedd ready: SCHEDD_URL=unix://{self.socket_path} or http://{tcp[0]}:{tcp[1]}", flush=True)
            if self.agents:
                pool = LocalPool(f"unix://{self.socket_path}", self.state_dir, self.agents, self.settings.heartbeat_s)
                pool.start()
            await stop.wait()
        finally:
            log.info("schedd stopping")
            if pool is not None:
                await pool.stop()
            await runner.cleanup()
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            store.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            log.info("schedd stopped")


def run(daemon: Daemon) -> None:
    """Run until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        lp = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            lp.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    asyncio.run(main())
