"""Assembling the daemon: store, state, scheduling loop, HTTP sites, pool.

Every long-lived part is entered on one :class:`contextlib.AsyncExitStack` as
it starts, so whatever started is stopped in reverse order on any exit — a
clean SIGTERM, or a failure half-way through start-up (a port in use, a bad
certificate) that must not leak the store's writer thread::

    store (flushed last) -> state (reloaded) -> loop -> HTTP runner -> TCP/TLS and Unix sites -> pool

The HTTP runner's connections are bounded, per listener, and its errors are
JSON like the API's (:mod:`schedd.daemon.http_limits`, ``[http]`` in schedd.toml).

The pool is the local agents (``schedd up``) or, for a pool.toml with
``driver = "kubernetes"``, the driver that applies the groups and watches their
pods (:mod:`schedd.pool.kube.driver`). On SIGTERM/SIGINT the pool stops first
(local agents leave their jobs running under their supervisors; the driver
stops watching, and the pods live on), the sites close, the loop stops, and the
store flushes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, Literal
from pathlib import Path

from aiohttp import web

from schedd.api import admin, make_app
from schedd.api.auth import TokenBook
from schedd.api.mlflow import MLFLOW
from schedd.config import PoolSettings, Settings, load_pipeline
from schedd.errors import ConfigError
from schedd.daemon import housekeeping
from schedd.daemon.http_limits import LimitedRunner, Limits, fit_open_files
from schedd.daemon.loop import Loop
from schedd.daemon.reload import Reloader, Sources, guard_removed_queues, mark_removed_queues
from schedd.pool.local import AgentSpec, LocalPool
from schedd.daemon.state import State
from schedd.store import Store, StoreError
from schedd.store.prune import HistoryPruner

__all__ = ["Daemon", "parse_listen", "run", "tls_context"]

log = logging.getLogger("schedd")
#: Connections the kernel queues for each listener before the daemon accepts them (capped by somaxconn).
BACKLOG = 1024


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("listen", f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8330")
    return host or "127.0.0.1", int(port)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP; a bad file is a ConfigError naming it."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.path.expanduser(cert), os.path.expanduser(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_cert", f"cannot load {cert} / {key}: {exc}") from None
    return ctx


class Daemon:
    def __init__(self, settings: Settings, agents: list[AgentSpec] | None = None,
                 pool: PoolSettings | None = None) -> None:
        self.settings = settings
        self.agents = agents
        #: pool.toml: a driver = "kubernetes" pool is run by the daemon; with ``agents``
        #: (``schedd up``) it is what a reload compares counts with; other drivers bring their own agents
        self.pool = pool
        self.state_dir = Path(settings.state_dir)
        self.socket_path = self.state_dir / "schedd.sock"
        self.host, self.port = parse_listen(settings.listen)
        self.pipeline = guard_removed_queues(load_pipeline(settings.policies_path()))
        #: Where the configuration came from: SIGHUP and ``schedd reload`` re-read it (schedd.daemon.reload).
        self.sources = Sources()
        self.reloader: Reloader | None = None
        self.tls = tls_context(settings.tls_cert, settings.tls_key)

    async def run(self, stop: asyncio.Event) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(log.info, "schedd stopped")
            store = stack.enter_context(_store(self.state_dir / "schedd.db", self.settings.store_synchronous))
            t0 = time.monotonic()
            state = State(self.settings, self.pipeline, store, time.time)
            state.load(store.load_active())
            log.info("state loaded: %d jobs in %.2f s", len(state.jobs), time.monotonic() - t0)
            _tune_gc()
            loop = Loop(state)
            await stack.enter_async_context(_task(loop.run(), "scheduling-loop"))
            pruner = HistoryPruner(store.path)  # history_days: schedd.daemon.housekeeping
            await stack.enter_async_context(_task(housekeeping.run(state, pruner), "housekeeping"))
            app = make_app(state, loop, TokenBook(store))
            mark_removed_queues(state)
            self.reloader = Reloader(state, self.sources, self.pool, loop.trigger)
            admin.setup(app, self.reloader)  # reload, tokens, plugin metrics
            runner = await stack.enter_async_context(_runner(app, Limits.of(self.settings)))
            await self._sites(runner, stack)
            if self.agents:
                pool = LocalPool(f"unix://{self.socket_path}", self.state_dir, self.agents, self.settings.heartbeat_s)
                pool.start()
                pool.attach(state, loop.trigger)  # resizable: reload and POST /pool/GROUP/scale
                stack.push_async_callback(pool.stop)
            if self.pool is not None and self.pool.driver == "kubernetes" and not self.agents:
                from schedd.pool.kube.driver import KubeDriver

                await stack.enter_async_context(KubeDriver(self.pool, self.settings, state, loop))
            await stop.wait()
            log.info("schedd stopping")

    def hangup(self) -> None:
        """SIGHUP: reload the configuration; a bad file is logged and changes nothing."""
        if self.reloader is not None:
            with contextlib.suppress(ConfigError):  # logged by the reloader
                self.reloader.reload()

    async def _sites(self, runner: web.AppRunner, stack: contextlib.AsyncExitStack) -> None:
        """The TCP (or TLS) site and the Unix socket; says where it listens."""
        # a listen backlog for bursts of connections (aiohttp's 128 turns a local client away with EAGAIN)
        await web.TCPSite(runner, self.host, self.port, reuse_address=True, ssl_context=self.tls,
                          backlog=BACKLOG).start()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        await web.UnixSite(runner, str(self.socket_path), backlog=BACKLOG).start()
        stack.callback(_unlink, self.socket_path)
        os.chmod(self.socket_path, 0o666)  # identity comes from SO_PEERCRED, not the file mode
        tcp = next((a for a in runner.addresses if isinstance(a, tuple)), (self.host, self.port))
        scheme = "https" if self.tls else "http"
        local = "127.0.0.1" if tcp[0] in ("0.0.0.0", "::", "") else tcp[0]
        runner.app[MLFLOW].base_url = f"{scheme}://{local}:{tcp[1]}"  # jobs' MLflow tracking URIs
        log.info("schedd listening on %s://%s:%d and unix://%s", scheme, tcp[0], tcp[1], self.socket_path)
        print(f"schedd ready: SCHEDD_URL=unix://{self.socket_path} or {scheme}://{tcp[0]}:{tcp[1]}", flush=True)


#: Allocations (net, of objects the cyclic collector tracks) between two young
#: collections; Python's 700 made a 10,000-job batch request run ~220 young,
#: ~20 middle and 1-2 full collections (a full one walks the whole heap: 50-130 ms
#: with 20,000-40,000 held jobs); at 20,000: ~6 young, 0-1 middle and no full one,
#: 10-50 ms of collection in all (bench/RESULTS.md, "Batch submission after the
#: end-to-end runs"). Cyclic garbage lives a little longer: a few MB at most.
GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    """Collect less often, and never walk what start-up left: everything alive
    now (modules, classes, the reloaded jobs' lists) is moved out of the
    collector's reach (``gc.freeze``); with 100,000 reloaded jobs a full
    collection walked them all each time, and they live as long as the daemon
    or are freed by reference counting, which freezing does not stop. The
    garbage of start-up is collected first, so that none of it is kept for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@contextlib.contextmanager
def _store(path: Path, synchronous: Literal["NORMAL", "FULL"]) -> Iterator[Store]:
    store = Store(path, synchronous=synchronous)
    store.start()
    try:
        yield store
    finally:
        try:
            store.close()
        except StoreError as e:  # e.g. stopped while the disk was full: what was held is lost
            log.error("store closed with unwritten changes (never acknowledged: agents report "
                      "unacknowledged job ends again): %s", e)


@contextlib.asynccontextmanager
async def _task(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """A background task, cancelled (and awaited) on the way out."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _runner(app: web.Application, limits: Limits) -> AsyncIterator[web.AppRunner]:
    """The app behind the HTTP layer's limits and JSON errors (:mod:`schedd.daemon.http_limits`)."""
    fit_open_files(limits.max_connections)
    runner = LimitedRunner(app, limits, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        yield runner
    finally:
        await runner.cleanup()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def run(daemon: Daemon) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration."""

    async def main() -> None:
        stop = asyncio.Event()
        lp = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            lp.add_signal_handler(sig, stop.set)
        lp.add_signal_handler(signal.SIGHUP, daemon.hangup)
        await daemon.run(stop)

    asyncio.run(main())
