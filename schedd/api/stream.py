"""``GET /api/v1/stream?job=ID``: server-sent events for the web page and ``qpeek``-like tools.

Events (``text/event-stream``), one connection carrying every kind::

    event: job      data: {"id", "state", "exit_status", "comment"}   every change of a
                    job's state, exit status or comment (only job ID's with ``job=``)
    event: point    data: {"job", "key", "time", "step", "value"}    new points of job ID
                    (with ``job=`` only): its own metrics and the node's samples
    event: lagged   data: {"job"}     this reader fell behind: points were dropped
    : keepalive     every 15 s

Job changes are taken from the store's feed of job rows (``Store.job_watchers``:
every change the state persists passes there), so nothing in the state had to
learn about streams. Each reader has a bounded queue (a slow page loses points,
told by ``lagged``, and never grows the daemon's memory); the queues are closed
on shutdown, or the runner's cleanup would wait on a connected page forever.
Same authentication as the rest of the API (the middleware did it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web

from schedd.api.jobs import normalize_id, who
from schedd.api.keys import STATE, TOKENS
from schedd.api.metrics_api import SERIES
from schedd.daemon.state import State
from schedd.errors import UnknownJob
from schedd.store import JobRow

__all__ = ["KEEPALIVE_S", "Hub", "add_routes"]

KEEPALIVE_S = 15.0
_QUEUE = 10_000
_BATCH = 500  # events written per write()
_CLOSE = object()
_encoder = msgspec.json.Encoder()


class Hub:
    """Readers' queues and the job-change feed (deduplicated per job)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.readers: dict[asyncio.Queue[Any], str | None] = {}
        self._sent: dict[str, tuple[str, int | None, str]] = {}

    def on_rows(self, rows: Sequence[JobRow]) -> None:
        """Store watcher: runs on the loop for every put_jobs; O(rows) when nobody listens."""
        if not self.readers:
            self._sent.clear()
            return
        for row in rows:
            rec = self.state.jobs.get(row.id)
            if rec is None:
                continue
            now = (rec.state, rec.exit_status, rec.comment)
            if self._sent.get(rec.id) == now:
                continue
            if rec.state == "finished":
                self._sent.pop(rec.id, None)
            else:
                self._sent[rec.id] = now
            event = {"id": rec.id, "state": rec.state, "exit_status": rec.exit_status, "comment": rec.comment}
            for q, job in self.readers.items():
                if (job is None or job == rec.id) and not q.full():
                    q.put_nowait(event)

    async def close(self, app: web.Application) -> None:
        for q in list(self.readers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(_CLOSE)


HUB = web.AppKey("stream_hub", Hub)


def _frame(item: Any, job: str | None) -> bytes:
    if isinstance(item, dict):
        return b"event: job\ndata: " + _encoder.encode(item) + b"\n\n"
    if item is None:
        return b"event: lagged\ndata: " + _encoder.encode({"job": job}) + b"\n\n"
    jid, key, t, step, value = item
    data = {"job": jid, "key": key, "time": t, "step": step, "value": value}
    return b"event: point\ndata: " + _encoder.encode(data) + b"\n\n"


async def stream(request: web.Request) -> web.StreamResponse:
    ident, tokens = who(request), request.app[TOKENS]
    state, hub = request.app[STATE], request.app[HUB]
    job: str | None = None
    if request.query.get("job"):
        job = normalize_id(request.query["job"], state.settings.server_name)
        if state.lookup(job) is None:
            raise UnknownJob(f"Unknown Job Id {job}")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    q: asyncio.Queue[Any] = asyncio.Queue(_QUEUE)
    hub.readers[q] = job
    feed = request.app[SERIES].feed(job, q) if job else contextlib.nullcontext()
    try:
        with feed:
            first = b"retry: 2000\n\n"
            rec = state.lookup(job) if job else None
            if rec is not None:
                first += _frame({"id": rec.id, "state": rec.state, "exit_status": rec.exit_status,
                                 "comment": rec.comment}, job)
            await resp.write(first)
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    item = None
                if not tokens.holds(ident):  # its token revoked or expired since: no more of it
                    break
                if item is None:
                    await resp.write(b": keepalive\n\n")
                    continue
                chunks: list[bytes] = []
                while item is not _CLOSE:
                    chunks.append(_frame(item, job))
                    if len(chunks) >= _BATCH or q.empty():
                        break
                    item = q.get_nowait()
                if chunks:
                    await resp.write(b"".join(chunks))
                if item is _CLOSE:
                    break
    except ConnectionResetError:
        pass
    finally:
        hub.readers.pop(q, None)
    return resp


def add_routes(app: web.Application, state: State) -> None:
    hub = app[HUB] = Hub(state)
    if state.store is not None:
        state.store.job_watchers.append(hub.on_rows)
    app.on_shutdown.append(hub.close)
    app.router.add_get("/api/v1/stream", stream)
