"""Job metric series in the store: chunks of points, their summaries, and params.

A series is one metric of one job (``loss``, ``gpu0.util``). Its points are kept
in **chunks** of up to :data:`CHUNK` points, one row each, keyed by
``(job_id, key, seq)``: the row holds the points packed (``data``: times, steps,
values as three little-endian arrays, 24 bytes a point) and a fixed 96-byte
``summary`` — the first, lowest, highest and last point of the chunk. Why
chunks and not a row per point: ingest writes one row per 512 points (the
writer's cost is per row), and a downsampled read of a long series reads only
the summaries (1,000,000 points are ~2,000 summary rows), never the points.

The newest chunk of a live series is rewritten (an upsert of the same key) as
it grows; the daemon holds it in memory meanwhile (:mod:`schedd.series.book`).

Steps are integers >= 0; a point without a step stores :data:`NO_STEP`.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass

__all__ = [
    "CHUNK",
    "NO_STEP",
    "Chunk",
    "ChunkRow",
    "ParamRow",
    "Point",
    "Summary",
    "pack_points",
    "summarize",
    "unpack_points",
    "unpack_summary",
]

#: Points per chunk row.
CHUNK = 512
#: The stored step of a point reported without one.
NO_STEP = -1

Point = tuple[float, int, float]  # (time, step or NO_STEP, value)
_SUMMARY = struct.Struct("<" + "dqd" * 4)
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True, slots=True)
class Summary:
    """First, min, max and last point of a run of points (ties: the earliest)."""

    first: Point
    low: Point
    high: Point
    last: Point

    def pack(self) -> bytes:
        return _SUMMARY.pack(*self.first, *self.low, *self.high, *self.last)


@dataclass(slots=True)
class Chunk:
    """Points of one chunk as three parallel arrays (what ``data`` packs)."""

    times: array[float]
    steps: array[int]
    values: array[float]

    @classmethod
    def empty(cls) -> Chunk:
        return cls(array("d"), array("q"), array("d"))

    def __len__(self) -> int:
        return len(self.values)

    def point(self, i: int) -> Point:
        return (self.times[i], self.steps[i], self.values[i])

    def summary(self) -> Summary:
        return summarize(self, 0, len(self.values))


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One row of ``chunks``: written by the store's writer thread."""

    job_id: str
    key: str
    seq: int
    kind: str  # custom | gpu | cpu
    n: int
    t0: float
    t1: float
    summary: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class ParamRow:
    """An MLflow-style param or tag of a job (``kind`` "param" or "tag")."""

    job_id: str
    kind: str
    key: str
    value: str
    time: float


def summarize(chunk: Chunk, start: int, stop: int) -> Summary:
    """Summary of ``chunk[start:stop]`` (non-empty). O(stop - start), in C loops."""
    vals = chunk.values[start:stop]
    lo, hi = min(vals), max(vals)
    return Summary(chunk.point(start), chunk.point(start + vals.index(lo)),
                   chunk.point(start + vals.index(hi)), chunk.point(stop - 1))


def pack_points(chunk: Chunk) -> bytes:
    """``data`` of a row: times, steps, values, little-endian. O(n), a copy."""
    if _LITTLE:
        return chunk.times.tobytes() + chunk.steps.tobytes() + chunk.values.tobytes()
    parts = [array(a.typecode, a) for a in (chunk.times, chunk.steps, chunk.values)]
    for part in parts:
        part.byteswap()
    return b"".join(p.tobytes() for p in parts)


def unpack_points(data: bytes) -> Chunk:
    """The inverse of :func:`pack_points`. O(n), three copies (memcpy)."""
    n = len(data) // 24
    times, steps, values = array("d"), array("q"), array("d")
    times.frombytes(data[: 8 * n])
    steps.frombytes(data[8 * n : 16 * n])
    values.frombytes(data[16 * n :])
    if not _LITTLE:
        for part in (times, steps, values):
            part.byteswap()
    return Chunk(times, steps, values)


def unpack_summary(data: bytes) -> Summary:
    f = _SUMMARY.unpack(data)
    return Summary((f[0], f[1], f[2]), (f[3], f[4], f[5]), (f[6], f[7], f[8]), (f[9], f[10], f[11]))
