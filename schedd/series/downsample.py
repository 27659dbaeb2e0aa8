"""Downsampling a series to at most ``max_points``: min/max/last per bucket.

The rule: the points are cut into ``b = (max_points - 1) // 3`` buckets of equal
*point count* (consecutive points, in arrival order); each bucket contributes its
lowest, its highest and its last point (each once, in time order), and the
series' very first point is always kept. So at most ``1 + 3b <= max_points``
points come back, every spike and dip survives at any zoom (random sampling
or plain averaging would hide them), and the newest value is always the last
point. A range filter (``since``) is applied *before* bucketing, so a running
and a finished series are sampled the same way over the same range.

Why not LTTB: it needs every point (no precomputed summaries), so a million
points would cost a Python pass over all of them per request; min/max/last
buckets compose from per-chunk summaries (:class:`Summary`), so a long series
is downsampled from ~2,000 summary rows without reading a single point.

Two entry points with the same rule: :func:`from_points` (the points are at
hand: short series, or a zoomed range) and :func:`from_summaries` (consecutive
chunk summaries are grouped whole into buckets — buckets then hold whole
chunks, a slightly coarser but still min/max-exact grouping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from schedd.store.series import NO_STEP, Chunk, Point, Summary, summarize

__all__ = ["as_json", "from_points", "from_summaries", "merge"]

Out = list[tuple[float, int | None, float]]


def as_json(p: Point) -> tuple[float, int | None, float]:
    """``[time, step or null, value]`` as the API sends it."""
    return (p[0], None if p[1] == NO_STEP else p[1], p[2])


def merge(parts: Sequence[Summary]) -> Summary:
    """The summary of consecutive runs of points (non-empty). O(len(parts)).

    >>> a = Summary((1, 0, 5.0), (2, 1, 1.0), (1, 0, 5.0), (2, 1, 1.0))
    >>> b = Summary((3, 2, 9.0), (3, 2, 9.0), (3, 2, 9.0), (3, 2, 9.0))
    >>> merge([a, b]).low, merge([a, b]).high, merge([a, b]).last
    ((2, 1, 1.0), (3, 2, 9.0), (3, 2, 9.0))
    """
    low, high = parts[0].low, parts[0].high
    for s in parts[1:]:
        if s.low[2] < low[2]:
            low = s.low
        if s.high[2] > high[2]:
            high = s.high
    return Summary(parts[0].first, low, high, parts[-1].last)


def _emit(out: Out, summaries: Sequence[Summary], max_points: int) -> Out:
    if not summaries:
        return out
    first = summaries[0].first
    out.append(as_json(first))
    seen = {first}
    for s in summaries:
        for p in sorted({s.low, s.high, s.last}, key=lambda q: q[0]):
            if p not in seen:
                seen.add(p)
                out.append(as_json(p))
    return out[:max_points]


def from_points(chunk: Chunk, max_points: int) -> Out:
    """Downsample points at hand. O(n), in C loops (slices, min, max, index).

    >>> from array import array
    >>> c = Chunk(array("d", range(10)), array("q", range(10)), array("d", [0, 1, 9, 1, 1, 1, -5, 1, 1, 2]))
    >>> [v for _, _, v in from_points(c, 7)]
    [0.0, 9.0, 1.0, -5.0, 2.0]
    >>> len(from_points(c, 100))
    10
    """
    n = len(chunk)
    if n <= max_points:
        return [as_json(chunk.point(i)) for i in range(n)]
    buckets = (max_points - 1) // 3
    if buckets < 1:
        return [as_json(chunk.point(0)), as_json(chunk.point(n - 1))][:max_points]
    size = math.ceil(n / buckets)
    return _emit([], [summarize(chunk, a, min(n, a + size)) for a in range(0, n, size)], max_points)


def from_summaries(parts: Sequence[Summary], max_points: int) -> Out:
    """Downsample from consecutive run summaries, grouped whole. O(len(parts))."""
    buckets = max(1, (max_points - 1) // 3)
    size = math.ceil(len(parts) / buckets) if parts else 1
    return _emit([], [merge(parts[a:a + size]) for a in range(0, len(parts), size)], max_points)
