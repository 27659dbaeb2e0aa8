"""The daemon's book of job series: ingest, the newest chunks, reads, live feed.

Points arrive on the event loop (an agent's ``Points`` message, the node samples
of a heartbeat, an MLflow ``log-metric``) and are appended to the series'
open chunk in memory — O(1) per point, no I/O. A flusher task hands full chunks
and the grown open chunk to the store's group-commit writer every ``flush_s``
(``sample_flush_s`` for node samples, which trickle) and forgets the full ones
once the writer committed them. Reads merge the store's chunks with those
still in memory, so a point is visible from the moment it arrives.

Memory is bounded per live series by one open chunk plus what arrives during
one commit; a job silent for :data:`IDLE_S` is evicted once written (it is
read back from the store if it reports again). The per-job cap on custom
points (``max_points_per_job``) is enforced here as well as on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from schedd.series.downsample import as_json, from_points, from_summaries
from schedd.series.settings import MetricsSettings
from schedd.store import EventRow, Store
from schedd.store.series import CHUNK, NO_STEP, Chunk, ChunkRow, Point, Summary, pack_points, unpack_points, unpack_summary

__all__ = ["IDLE_S", "LivePoint", "Series", "kind_of"]

log = logging.getLogger("schedd.series")

IDLE_S = 300.0
_RETENTION_EVERY_S = 3600.0

LivePoint = tuple[str, str, float, int | None, float]  # (job, key, time, step, value)


def kind_of(key: str) -> str:
    """``custom``, or ``gpu``/``cpu`` for the node samples' keys.

    >>> kind_of("loss"), kind_of("gpu0.util"), kind_of("rank1.cpu.pct")
    ('custom', 'gpu', 'cpu')
    """
    head = key.split(".", 2)
    name = head[1] if head[0].startswith("rank") and len(head) > 1 else head[0]
    if name.startswith("gpu") and name[3:].isdigit():
        return "gpu"
    return "cpu" if name == "cpu" else "custom"


@dataclass(slots=True)
class _Line:
    """One series in memory: its open chunk and full chunks not yet committed."""

    kind: str
    seq: int = 0
    open: Chunk = field(default_factory=Chunk.empty)
    count: int = 0
    pending: list[tuple[int, Chunk, bool]] = field(default_factory=list)  # (seq, chunk, handed to the store)
    dirty: bool = False
    written: float = 0.0  # monotonic time the open chunk was last handed over

    def last(self) -> Point | None:
        if len(self.open):
            return self.open.point(len(self.open) - 1)
        return self.pending[-1][1].point(CHUNK - 1) if self.pending else None


@dataclass(slots=True)
class _Job:
    lines: dict[str, _Line] = field(default_factory=dict)
    points: int = 0  # custom points taken
    capped: bool = False
    malformed: int = 0  # lines the node skipped (since this daemon started)
    touched: float = 0.0
    last_stored: dict[str, tuple[str, int, Point]] = field(default_factory=dict)  # evicted-safe heads


class Series:
    """See the module docstring. ``store`` None: memory only (unit tests)."""

    def __init__(self, store: Store | None, settings: MetricsSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._jobs: dict[str, _Job] = {}
        self._feeds: dict[str, set[asyncio.Queue[Any]]] = {}
        self.taken = 0  # points ingested since start (bench, /metrics)

    # ------------------------------------------------------------ ingest

    def add(self, job_id: str, points: Mapping[str, Iterable[tuple[float, int, float]]], *, samples: bool = False,
            ) -> int:
        """Append points (``step`` NO_STEP = none); returns how many were taken.
        Custom points past the job's cap are dropped (the first drop is recorded
        as a ``metrics_capped`` event). O(points)."""
        job = self._job(job_id)
        job.touched = time.monotonic()
        cap = self.settings.max_points_per_job
        taken = 0
        feeds = self._feeds.get(job_id)
        for key, pts in points.items():
            line = job.lines.get(key)
            if line is None:
                line = job.lines[key] = _Line(kind_of(key) if samples else "custom")
                if key in job.last_stored:
                    self._reopen(job_id, key, line)
            for t, step, v in pts:
                if not samples:
                    if job.points >= cap:
                        self.capped(job_id, "schedd")
                        break
                    job.points += 1
                if not math.isfinite(v):
                    continue
                op = line.open
                op.times.append(t)
                op.steps.append(step)
                op.values.append(v)
                line.count += 1
                taken += 1
                if len(op) >= CHUNK:
                    line.pending.append((line.seq, op, False))
                    line.seq += 1
                    line.open = Chunk.empty()
                if feeds:
                    self._publish(feeds, (job_id, key, t, None if step == NO_STEP else step, v))
            line.dirty = True
        self.taken += taken
        return taken

    def malformed(self, job_id: str, lines: int) -> None:
        """Count lines of the job's file the node skipped (it warned in the job's stderr)."""
        self._job(job_id).malformed += lines

    def malformed_lines(self, job_id: str) -> int:
        return self._job(job_id).malformed

    def capped(self, job_id: str, who: str) -> None:
        """Record, once per job, that it reached its cap (said by the node or by schedd)."""
        job = self._job(job_id)
        if job.capped:
            return
        job.capped = True
        cap = self.settings.max_points_per_job
        log.info("job %s reached its cap of %d metric points (%s)", job_id, cap, who)
        if self.store is not None:
            data = msgspec.json.encode({"max_points_per_job": cap, "by": who})
            self.store.add_events([EventRow(job_id, self.clock(), "metrics_capped", data)])

    # ------------------------------------------------------------ reads

    def keys(self, job_id: str) -> dict[str, tuple[str, int, Point | None]]:
        """Every series of a job: key -> (kind, points stored, last point)."""
        job = self._job(job_id)
        out: dict[str, tuple[str, int, Point | None]] = {k: v for k, v in job.last_stored.items()}
        for key, line in job.lines.items():
            out[key] = (line.kind, line.count, line.last() or out.get(key, ("", 0, None))[2])
        return out

    def is_capped(self, job_id: str) -> bool:
        job = self._job(job_id)
        return job.capped or job.points >= self.settings.max_points_per_job > 0

    def snapshot(self, job_id: str, key: str) -> dict[int, Chunk]:
        """The series' chunks still in memory, by seq (the open one copied): what
        :meth:`compute` needs from the loop. O(points in the open chunk)."""
        line = self._job(job_id).lines.get(key)
        if line is None:
            return {}
        mem = {seq: c for seq, c, _ in line.pending}  # full chunks never change again
        if len(line.open):
            o = line.open
            mem[line.seq] = Chunk(o.times[:], o.steps[:], o.values[:])
        return mem

    def read(self, job_id: str, key: str, since: float | None, max_points: int) -> list[tuple[float, int | None, float]]:
        """:meth:`compute` over :meth:`snapshot`, on the caller's thread."""
        return self.compute(job_id, key, self.snapshot(job_id, key), since, max_points)

    def compute(self, job_id: str, key: str, mem: dict[int, Chunk], since: float | None,
                max_points: int) -> list[tuple[float, int | None, float]]:
        """One series downsampled to ``max_points`` (see :mod:`schedd.series.downsample`),
        points with ``time >= since`` only. Touches only the store's read connection
        and ``mem``, so it may run in a thread. O(chunks) for a long series (their
        summaries), O(points) for a short one (at most ``max_points / 3`` chunks)."""
        stored = self.store.chunk_summaries(job_id, key, since) if self.store is not None else []
        pieces: dict[int, tuple[int, float, Summary | Chunk]] = {
            seq: (n, t1, unpack_summary(s)) for seq, n, _, t1, s in stored if seq not in mem
        }
        for seq, c in mem.items():
            if len(c) and (since is None or c.times[-1] >= since):
                pieces[seq] = (len(c), c.times[-1], c)
        order = sorted(pieces)
        total = sum(pieces[s][0] for s in order)
        buckets = max(1, (max_points - 1) // 3)
        if total <= max(max_points, buckets * CHUNK):
            return from_points(self._points(job_id, key, order, pieces, since), max_points)
        parts: list[Summary] = []
        for i, seq in enumerate(order):
            n, _, body = pieces[seq]
            if i == 0 and since is not None:  # the first chunk may start before `since`: trim it
                c = body if isinstance(body, Chunk) else self._unpack(job_id, key, seq)
                c = _since(c, since)
                if len(c):
                    parts.append(c.summary())
                continue
            parts.append(body.summary() if isinstance(body, Chunk) else body)
        return from_summaries(parts, max_points)

    def _points(self, job_id: str, key: str, order: list[int], pieces: dict[int, tuple[int, float, Any]],
                since: float | None) -> Chunk:
        out = Chunk.empty()
        need = [s for s in order if not isinstance(pieces[s][2], Chunk)]
        data = dict(self.store.chunk_data(job_id, key, need[0], need[-1])) if need and self.store else {}
        for seq in order:
            body = pieces[seq][2]
            c = body if isinstance(body, Chunk) else unpack_points(data.get(seq, b""))
            out.times.extend(c.times)
            out.steps.extend(c.steps)
            out.values.extend(c.values)
        return _since(out, since) if since is not None else out

    def _unpack(self, job_id: str, key: str, seq: int) -> Chunk:
        rows = self.store.chunk_data(job_id, key, seq, seq) if self.store else []
        return unpack_points(rows[0][1]) if rows else Chunk.empty()

    # ------------------------------------------------------------ live feed

    @contextlib.contextmanager
    def feed(self, job_id: str, q: asyncio.Queue[Any]) -> Iterator[None]:
        """Put the job's new points (:data:`LivePoint`) on ``q`` while the ``with``
        lasts; a full queue gets one ``None`` (the reader lagged: points dropped)."""
        self._feeds.setdefault(job_id, set()).add(q)
        try:
            yield
        finally:
            subs = self._feeds.get(job_id)
            if subs is not None:
                subs.discard(q)
                if not subs:
                    del self._feeds[job_id]

    @staticmethod
    def _publish(feeds: set[asyncio.Queue[Any]], point: LivePoint) -> None:
        for q in feeds:
            if q.full():
                continue
            q.put_nowait(point if q.qsize() < q.maxsize - 1 else None)

    # ------------------------------------------------------------ memory and the store

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = self._load(job_id)
        return job

    def _load(self, job_id: str) -> _Job:
        """A job's series as the store has them (a restart, or an evicted job)."""
        job = _Job()
        if self.store is None:
            return job
        for key, kind, n, seq, summary in self.store.series_heads(job_id):
            job.last_stored[key] = (kind, n, unpack_summary(summary).last)
            if kind == "custom":
                job.points += n
        job.capped = job.points >= self.settings.max_points_per_job > 0
        return job

    def _reopen(self, job_id: str, key: str, line: _Line) -> None:
        """Continue a series the store holds: its newest chunk becomes the open one."""
        if self.store is None:
            return
        heads = {k: (n, seq) for k, _, n, seq, _ in self.store.series_heads(job_id) if k == key}
        if key not in heads:
            return
        n, seq = heads[key]
        last = self._unpack(job_id, key, seq)
        line.count = n
        if len(last) < CHUNK:
            line.seq, line.open = seq, last
        else:
            line.seq = seq + 1

    def flush(self, now: float | None = None, force: bool = False) -> list[tuple[_Line, int]]:
        """Hand what is due to the store's writer; returns the pending chunks handed
        over (to forget once committed). O(series with new points)."""
        now = time.monotonic() if now is None else now
        rows: list[ChunkRow] = []
        handed: list[tuple[_Line, int]] = []
        for job_id, job in self._jobs.items():
            for key, line in job.lines.items():
                for i, (seq, c, done) in enumerate(line.pending):
                    if not done:
                        rows.append(_row(job_id, key, line.kind, seq, c))
                        line.pending[i] = (seq, c, True)
                    handed.append((line, seq))
                every = self.settings.flush_s if line.kind == "custom" else self.settings.sample_flush_s
                if line.dirty and len(line.open) and (force or now - line.written >= every):
                    rows.append(_row(job_id, key, line.kind, line.seq, line.open))
                    line.dirty, line.written = False, now
        if rows and self.store is not None:
            self.store.put_chunks(rows)
        return handed

    def _committed(self, handed: list[tuple[_Line, int]]) -> None:
        for line, seq in handed:
            line.pending = [p for p in line.pending if p[0] != seq]

    def _evict(self, now: float) -> None:
        for job_id in [j for j, job in self._jobs.items() if now - job.touched > IDLE_S and not job.capped
                       and all(not line.pending and not line.dirty for line in job.lines.values())]:
            del self._jobs[job_id]

    def forget(self, job_id: str) -> None:
        """Drop a purged job from memory (the store deletes its rows with the job)."""
        self._jobs.pop(job_id, None)

    async def run(self) -> None:
        """The flusher (every ``flush_s``), eviction and retention (hourly)."""
        next_expiry = 0.0
        failing = False
        while True:
            await asyncio.sleep(min(self.settings.flush_s, self.settings.sample_flush_s))
            now = time.monotonic()
            handed = self.flush(now)
            if self.store is not None and handed:
                try:
                    await self.store.flush()
                except Exception as e:  # the store logged it; the chunks are re-handed next time
                    if not failing:  # once per streak: a full disk fails every flush until space returns
                        log.warning("metric chunks not committed (%s); retrying until they are", e)
                    failing = True
                    for line, seq in handed:
                        line.pending = [(s, c, False if s == seq else d) for s, c, d in line.pending]
                    continue
                failing = False
            self._committed(handed)
            self._evict(now)
            if self.store is not None and now >= next_expiry:
                self.store.expire_series(self.clock() - self.settings.retention_days * 86_400)
                next_expiry = now + _RETENTION_EVERY_S

    async def close(self) -> None:
        """Write everything still in memory (daemon shutdown)."""
        self.flush(force=True)
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.flush()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(), name="series-flusher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.close()


def _row(job_id: str, key: str, kind: str, seq: int, c: Chunk) -> ChunkRow:
    return ChunkRow(job_id, key, seq, kind, len(c), c.times[0], c.times[-1], c.summary().pack(), pack_points(c))


def _since(c: Chunk, since: float) -> Chunk:
    """The points of ``c`` at or after ``since`` (times are in arrival order)."""
    import bisect

    i = bisect.bisect_left(c.times, since)
    return Chunk(c.times[i:], c.steps[i:], c.values[i:]) if i else c
