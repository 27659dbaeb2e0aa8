"""Free resources over time, per node: what backfill and reservations reason about.

A node's :class:`Timeline` is a step function: segment ``i`` covers
``[times[i], times[i+1])`` (the last one runs forever) and holds the CPUs,
memory and GPU bitmask free during it. Segment 0 starts at ``now`` and always
equals the node's free resources now. Running jobs give their resources back at
their expected end (start + walltime — the scheduler never knows the real
runtime); a reservation takes resources over ``[start, start + walltime)``.

Rules this module implements:

* A job may start now on a node iff its request fits in every segment of
  ``[now, now + walltime)``. That single rule is the EASY / conservative
  guarantee: a backfilled job can never take what a reservation was promised.
* A node without reservations only gains resources over time, so "fits now"
  implies "fits for any walltime" there; timelines are built lazily, only for
  nodes that need a look into the future.
* Overdue jobs (past their walltime, not yet reported gone) are assumed to end
  within ``OVERDUE_S``: they still hold their resources now.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import reduce
from itertools import accumulate
from operator import and_, or_, sub
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from schedd.core.cluster import Cluster, NodeFree, chunk_on, lowest_bits
from schedd.core.model import ChunkPlacement, Node, Placement, Running, Shape

if TYPE_CHECKING:
    from schedd.core.replan import Replan

__all__ = ["OVERDUE_S", "NodeReleases", "Occupancy", "Profile", "Releases", "Spans", "Timeline", "add_spans"]

#: Seconds after ``now`` at which an overdue running job is expected to be gone.
OVERDUE_S = 1.0

#: How many candidate start times a gang search tries before giving up.
MAX_GANG_CANDIDATES = 256

_Release = tuple[float, int, int, int]  # (time, cpus, mem_mb, gpu mask)
#: Per node, per running job id: when that job gives back what it holds there.
Releases = dict[str, dict[str, _Release]]

#: Reservations as ``(start, end, cpus, mem)`` spans per node, for :meth:`Profile.reserve_spans`.
Spans = dict[str, list[tuple[float, float, int, int]]]


def add_spans(per_node: Spans, placement: Placement, start: float, walltime_s: float) -> Spans | None:
    """``per_node`` with one reservation's spans added, or None if it cannot be
    merged: a chunk with GPUs, or an empty span (checked against the segment at
    its start, which a merge does not do)."""
    if not walltime_s > 0:
        return None
    end = start + walltime_s
    for cp in placement:
        if cp.gpus:
            return None
        spans = per_node.get(cp.node)
        if spans is None:
            per_node[cp.node] = [(start, end, cp.ncpus, cp.mem_mb)]
        else:
            spans.append((start, end, cp.ncpus, cp.mem_mb))
    return per_node


class Timeline:
    """One node's free resources as a step function of time."""

    __slots__ = ("times", "cpus", "mem", "gpus", "drops", "peaks")

    def __init__(self, now: float, nf: NodeFree, releases: Iterable[_Release]) -> None:
        self.peaks: tuple[list[int], list[int]] | None = None
        rel = sorted(releases)
        #: Times at which free CPUs or memory may fall (None: not tracked, see :meth:`fit_duration`).
        self.drops: set[float] | None = set() if all(c >= 0 and m >= 0 for _, c, m, _ in rel) else None
        if not rel:
            self.times, self.cpus, self.mem, self.gpus = [now], [nf.cpus], [nf.mem_mb], [nf.gpus]
            return
        # Columns by one C-level transpose; cumulative sums in C (accumulate).
        times, rc, rm, rg = zip(*rel)
        ts = list(times)
        overdue = bisect_right(ts, now + OVERDUE_S)
        if overdue:  # overdue jobs are expected to be gone within OVERDUE_S
            ts[:overdue] = [now + OVERDUE_S] * overdue
        cum_c = list(accumulate(rc, initial=nf.cpus))
        cum_m = list(accumulate(rm, initial=nf.mem_mb))
        cum_g = list(accumulate(rg, or_, initial=nf.gpus))
        last = dict(zip(ts, range(1, len(ts) + 1)))  # per distinct time, its last release (+1)
        if len(last) == len(ts):  # all distinct: the sums are the segments
            self.times, self.cpus, self.mem, self.gpus = [now, *ts], cum_c, cum_m, cum_g
            return
        keep = list(last.values())
        self.times = [now, *last]
        self.cpus = [nf.cpus, *[cum_c[k] for k in keep]]
        self.mem = [nf.mem_mb, *[cum_m[k] for k in keep]]
        self.gpus = [nf.gpus, *[cum_g[k] for k in keep]]

    @classmethod
    def of(cls, now: float, nf: NodeFree, rel: NodeReleases) -> Timeline:
        """The same timeline as ``Timeline(now, nf, releases)``, from a sorted index.

        Releases at or before ``now + OVERDUE_S`` count from then, as in the
        constructor; the sums are exact (integers, and OR for the GPU masks).
        """
        tl = cls.__new__(cls)
        tl.peaks = None
        times = rel.times
        tl.drops = set() if not times or (min(rel.cpus) >= 0 and min(rel.mem) >= 0) else None
        if not times:
            tl.times, tl.cpus, tl.mem, tl.gpus = [now], [nf.cpus], [nf.mem_mb], [nf.gpus]
            return tl
        cum_c = list(accumulate(rel.cpus, initial=nf.cpus))
        cum_m = list(accumulate(rel.mem, initial=nf.mem_mb))
        cum_g = list(accumulate(rel.gpus, or_, initial=nf.gpus))
        horizon = now + OVERDUE_S
        j = bisect_right(times, horizon)
        if not j:
            tl.times, tl.cpus, tl.mem, tl.gpus = [now, *times], cum_c, cum_m, cum_g
            return tl
        tl.times = [now, horizon, *times[j:]]
        tl.cpus = [nf.cpus, *cum_c[j:]]
        tl.mem = [nf.mem_mb, *cum_m[j:]]
        tl.gpus = [nf.gpus, *cum_g[j:]]
        return tl

    def add_from(self, t: float, cpus: int, mem_mb: int, mask: int) -> None:
        """A release at ``t`` (``t`` after the overdue horizon): from ``t`` on, forever."""
        i = self._split(t)
        self.peaks = None
        self._note_drop(t, cpus, mem_mb)
        if cpus:
            self.cpus[i:] = [x + cpus for x in self.cpus[i:]]
        if mem_mb:
            self.mem[i:] = [x + mem_mb for x in self.mem[i:]]
        if mask:
            self.gpus[i:] = [x | mask for x in self.gpus[i:]]

    def window(self, i: int, end: float) -> tuple[int, int, int]:
        """Min CPUs, min memory and GPUs free throughout segments ``i..`` before ``end``.

        O(log segments) to find the span, then C-level min and AND over it.
        """
        j = bisect_left(self.times, end, i + 1)
        if j == i + 1:
            return self.cpus[i], self.mem[i], self.gpus[i]
        return min(self.cpus[i:j]), min(self.mem[i:j]), reduce(and_, self.gpus[i:j])

    def fit_at(self, t: float, walltime_s: float, entry: tuple[int, int, int]) -> int:
        """GPU bitmask free throughout ``[t, t + walltime_s)`` if ``entry`` fits, else -1."""
        i = bisect_right(self.times, t) - 1
        cpus, mem, gpus = self.window(max(i, 0), t + walltime_s)
        if cpus < entry[0] or mem < entry[1] or gpus.bit_count() < entry[2]:
            return -1
        return gpus

    def earliest(self, walltime_s: float, entry: tuple[int, int, int]) -> float | None:
        """The first segment start at which ``entry`` fits for ``walltime_s``.

        Without GPUs, one pass (O(segments)): a start that fails at segment ``k``
        fails for every later start up to ``k`` too (their windows hold ``k``),
        so the candidate restarts after ``k``. With GPUs the free set, not only a
        count, must last, so every start is tried (O(segments^2)).
        """
        if entry[2] == 0:
            return self._earliest_counts(walltime_s, entry[0], entry[1])
        for i, t in enumerate(self.times):
            if self.cpus[i] < entry[0] or self.mem[i] < entry[1]:
                continue
            if self.gpus[i].bit_count() < entry[2]:
                continue
            cpus, mem, gpus = self.window(i, t + walltime_s)
            if cpus >= entry[0] and mem >= entry[1] and gpus.bit_count() >= entry[2]:
                return t
        return None

    def _earliest_counts(self, walltime_s: float, c: int, m: int) -> float | None:
        times = self.times
        last = len(times) - 1
        start = -1.0  # the candidate start (-1: none)
        for i, (cc, mm) in enumerate(zip(self.cpus, self.mem)):
            if cc < c or mm < m:
                start = -1.0
                continue
            if start < 0:
                start = times[i]
            if i == last or times[i + 1] >= start + walltime_s:
                return start
        return None

    def fits_before(
        self, t: float, inclusive: bool, walltime_s: float, c: int, m: int, lifted: tuple[float, float] | None
    ) -> bool:
        """Whether ``(c, m)`` fits for ``walltime_s`` from a segment start before ``t``
        (or at it), as :meth:`earliest` would see it with a reservation of the same
        ``(c, m)`` over ``lifted`` (segment bounds) given back first."""
        times = self.times
        last = len(times) - 1
        lo, hi = lifted if lifted is not None else (0.0, 0.0)
        start = -1.0
        for i, (cc, mm) in enumerate(zip(self.cpus, self.mem)):
            if start < 0 and (times[i] > t or (times[i] == t and not inclusive)):
                return False
            if lo <= times[i] < hi:
                cc += c
                mm += m
            if cc < c or mm < m:
                start = -1.0
                continue
            if start < 0:
                start = times[i]
            if i == last or times[i + 1] >= start + walltime_s:
                return True
        return False

    def peak_before(self, t: float, inclusive: bool) -> tuple[int, int]:
        """The most CPUs and memory free in any segment starting before ``t`` (or at it).

        A request larger than that cannot start before ``t``: reserve_earliest's
        test that a prior reservation is still the earliest. Running maxima, built
        in C on first use and dropped by any change.
        """
        peaks = self.peaks
        if peaks is None:
            peaks = self.peaks = (list(accumulate(self.cpus, max)), list(accumulate(self.mem, max)))
        i = (bisect_right if inclusive else bisect_left)(self.times, t)
        if i == 0:
            return -1, -1
        return peaks[0][i - 1], peaks[1][i - 1]

    def fit_duration(self, entry: tuple[int, int, int]) -> float:
        """The longest walltime for which ``entry`` fits from now (0: not now; inf: forever).

        Without GPUs, only segment 0 and the segments where free CPUs or memory
        fall can be the first one short of the request (the one before it had
        enough): with those drops tracked (they are where reservations and
        starts begin), that is a look at each drop instead of a walk over every
        segment.
        """
        c, m, g = entry
        times = self.times
        if g == 0 and self.drops is not None:
            if self.cpus[0] < c or self.mem[0] < m:
                return 0.0
            for t in sorted(self.drops):
                i = bisect_left(times, t)
                if self.cpus[i] < c or self.mem[i] < m:
                    return t - times[0]
            return float("inf")
        if g == 0:  # no GPU bookkeeping: the first segment short of CPUs or memory
            for i, (cc, mm) in enumerate(zip(self.cpus, self.mem)):
                if cc < c or mm < m:
                    return times[i] - times[0]
            return float("inf")
        acc = -1  # all bits: the GPUs free in every segment so far
        for i, (cc, mm, gg) in enumerate(zip(self.cpus, self.mem, self.gpus)):
            acc &= gg
            if cc < c or mm < m or acc.bit_count() < g:
                return times[i] - times[0]
        return float("inf")

    def _note_drop(self, t: float, cpus: int, mem_mb: int) -> None:
        """Free CPUs or memory fall at ``t`` if a change from ``t`` on is negative."""
        if self.drops is not None and (cpus < 0 or mem_mb < 0):
            self.drops.add(t)

    def with_reservations(self, spans: Sequence[tuple[float, float, int, int]]) -> Timeline | None:
        """A new timeline: this one less ``(start, end, cpus, mem)`` over each span
        (starts at or after ``times[0]``) — the segments a :meth:`take` per span
        would leave — or None if free CPUs or memory would go below zero anywhere."""
        starts, ends, cs, ms = zip(*spans) if spans else ((), (), (), ())
        return self.with_columns(starts, ends, cs, ms)

    def with_columns(
        self, starts: Sequence[float], ends: Sequence[float], cs: Sequence[int], ms: Sequence[int]
    ) -> Timeline | None:
        """:meth:`with_reservations` of the spans ``zip(starts, ends, cs, ms)``."""
        # Everything as events sorted by time in C: the segments' steps (base[k] - base[k - 1])
        # and each span's bounds (start: -, end: +); the running sums at each distinct time's
        # last event are the new segments, and a count of the segment steps so far says
        # which old segment (for its GPUs) each new one lies in.
        base, bc, bm, bg = self.times, self.cpus, self.mem, self.gpus
        keys = [*base, *starts, *ends]
        ev_c = [bc[0], *map(sub, bc[1:], bc)]
        ev_c.extend([-c for c in cs])
        ev_c.extend(cs)
        ev_m = [bm[0], *map(sub, bm[1:], bm)]
        ev_m.extend([-m for m in ms])
        ev_m.extend(ms)
        steps = [1] * len(base)
        steps.extend([0] * (2 * len(starts)))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        last = dict(zip(map(keys.__getitem__, order), range(len(order))))  # distinct time -> its last event
        at = list(last.values())
        times = list(last)
        cpus = list(map(list(accumulate(map(ev_c.__getitem__, order))).__getitem__, at))
        mem = list(map(list(accumulate(map(ev_m.__getitem__, order))).__getitem__, at))
        if min(cpus) < 0 or min(mem) < 0:
            return None
        seg = list(accumulate(map(steps.__getitem__, order)))  # old segments begun so far (>= 1)
        gpus = list(map([bg[0], *bg].__getitem__, map(seg.__getitem__, at)))
        tl = Timeline.__new__(Timeline)
        tl.times, tl.cpus, tl.mem, tl.gpus = times, cpus, mem, gpus
        tl.peaks = None
        tl.drops = None
        if self.drops is not None:
            if cs and min(cs) > 0:
                tl.drops = self.drops.union(starts)
            else:
                tl.drops = self.drops | {start for start, c, m in zip(starts, cs, ms) if c > 0 or m > 0}
        return tl

    def take(self, start: float, end: float, cpus: int, mem_mb: int, mask: int) -> None:
        """Subtract resources over ``[start, end)``, splitting segments as needed."""
        self.give(start, end, -cpus, -mem_mb, ~mask, taking=True)

    def give(self, start: float, end: float, cpus: int, mem_mb: int, mask: int, taking: bool = False) -> None:
        """Add resources over ``[start, end)`` (a job that will end earlier than planned).

        With ``taking``, ``mask`` is ANDed instead of ORed (see :meth:`take`).
        """
        i = self._split(start)
        j = self._split(end)
        self.peaks = None
        self._note_drop(start, cpus, mem_mb)  # a take: free falls where it begins
        self._note_drop(end, -cpus, -mem_mb)  # a give: free falls back where it ends
        if cpus:
            self.cpus[i:j] = [x + cpus for x in self.cpus[i:j]]
        if mem_mb:
            self.mem[i:j] = [x + mem_mb for x in self.mem[i:j]]
        if taking and mask != -1:
            self.gpus[i:j] = [x & mask for x in self.gpus[i:j]]
        elif not taking and mask:
            self.gpus[i:j] = [x | mask for x in self.gpus[i:j]]

    def _split(self, t: float) -> int:
        """Index of the segment starting exactly at ``t``, creating it if needed."""
        i = bisect_right(self.times, t) - 1
        if i >= 0 and self.times[i] == t:
            return i
        i = max(i, 0)
        self.times.insert(i + 1, t)
        self.cpus.insert(i + 1, self.cpus[i])
        self.mem.insert(i + 1, self.mem[i])
        self.gpus.insert(i + 1, self.gpus[i])
        return i + 1


class NodeReleases:
    """One node's running-job releases grouped by distinct time, kept sorted.

    The owner of state keeps it as jobs start and end (:class:`Occupancy`), so a
    cycle's :class:`Timeline` is three cumulative sums done in C
    (:meth:`Timeline.of`) instead of a sort of every running job's release: on a
    pool with a thousand running jobs that sort was most of an EASY cycle.
    Per distinct time: the sums of CPUs and memory released, the OR of the GPU
    masks (the masks themselves are kept to undo an OR), and how many releases.
    """

    __slots__ = ("times", "cpus", "mem", "gpus", "count", "masks")

    def __init__(self, releases: Iterable[_Release] = ()) -> None:
        self.times: list[float] = []
        self.cpus: list[int] = []
        self.mem: list[int] = []
        self.gpus: list[int] = []
        self.count: list[int] = []
        self.masks: dict[float, list[int]] = {}
        for rel in sorted(releases):  # sorted: each add appends
            self.add(rel)

    def add(self, rel: _Release) -> None:
        t, c, m, g = rel
        times = self.times
        i = bisect_left(times, t)
        if i < len(times) and times[i] == t:
            self.cpus[i] += c
            self.mem[i] += m
            self.gpus[i] |= g
            self.count[i] += 1
        else:
            times.insert(i, t)
            self.cpus.insert(i, c)
            self.mem.insert(i, m)
            self.gpus.insert(i, g)
            self.count.insert(i, 1)
        if g:
            self.masks.setdefault(t, []).append(g)

    def remove(self, rel: _Release) -> None:
        """Undo :meth:`add` of exactly ``rel``."""
        t, c, m, g = rel
        i = bisect_left(self.times, t)
        if self.count[i] == 1:
            del self.times[i], self.cpus[i], self.mem[i], self.gpus[i], self.count[i]
            self.masks.pop(t, None)
            return
        self.cpus[i] -= c
        self.mem[i] -= m
        self.count[i] -= 1
        if g:
            masks = self.masks[t]
            masks.remove(g)
            self.gpus[i] = reduce(or_, masks, 0)


class Profile:
    """All nodes' timelines, built on demand, kept in step with the :class:`Cluster`."""

    def __init__(
        self, now: float, cluster: Cluster, base: Releases, occupancy: Occupancy | None = None
    ) -> None:
        self.now = now
        self.cluster = cluster
        self.base = base  # running jobs' releases; read-only here
        #: When given, its sorted release index builds timelines (same result, no sort).
        self.occupancy = occupancy
        self.releases: dict[str, list[_Release]] = {}  # this cycle's additions
        self.timelines: dict[str, Timeline] = {}
        self.reserved: set[str] = set()  # nodes carrying a reservation

    def timeline(self, name: str) -> Timeline:
        tl = self.timelines.get(name)
        if tl is None:
            tl = self.timelines[name] = self._build(name)
        return tl

    def _build(self, name: str) -> Timeline:
        """The node's timeline: from the occupancy's sorted index when there is one,
        else (and whenever this cycle added a release inside the overdue horizon,
        which the index does not clamp) by sorting every release."""
        nf = self.cluster.nodes[name]
        added = self.releases.get(name, ())
        horizon = self.now + OVERDUE_S
        if self.occupancy is not None and all(t > horizon for t, _, _, _ in added):
            tl = Timeline.of(self.now, nf, self.occupancy.index(name))
            for t, c, m, g in added:
                tl.add_from(t, c, m, g)
            return tl
        base = self.base.get(name)
        releases = list(base.values()) if base else []
        releases.extend(added)
        return Timeline(self.now, nf, releases)

    # -- now --------------------------------------------------------------

    def fit_now(self, nf: NodeFree, walltime_s: float, entry: tuple[int, int, int]) -> int:
        """GPU bitmask usable by ``entry`` from now for ``walltime_s`` on ``nf``, or -1."""
        if not nf.fits(*entry):
            return -1
        if nf.name not in self.reserved:
            return nf.gpus
        return self.timeline(nf.name).fit_at(self.now, walltime_s, entry)

    def place_now(self, shape: Shape, walltime_s: float, spread: bool) -> Placement | None:
        """Distinct nodes for every entry of ``shape``, usable from now on. O(nodes) worst.

        The hot path of every cycle, so the greedy pass is written out; unequal
        gangs it cannot place go to the exact matching of :meth:`_assign`.
        """
        used: set[str] = set()
        out = []
        for entry in shape:
            for nf in self.cluster.candidates(entry[2], spread):
                if nf.name in used:
                    continue
                mask = self.fit_now(nf, walltime_s, entry)
                if mask >= 0:
                    used.add(nf.name)
                    out.append(chunk_on(nf, entry[0], entry[1], lowest_bits(mask, entry[2])))
                    break
            else:
                if len(set(shape)) == 1:
                    return None
                return self._assign(shape, self._now_options(walltime_s, spread))
        return tuple(out)

    def _now_options(
        self, walltime_s: float, spread: bool
    ) -> Callable[[tuple[int, int, int]], Iterator[tuple[str, int]]]:
        def options(entry: tuple[int, int, int]) -> Iterator[tuple[str, int]]:
            for nf in self.cluster.candidates(entry[2], spread):
                mask = self.fit_now(nf, walltime_s, entry)
                if mask >= 0:
                    yield nf.name, mask

        return options

    def max_walltime_now(self, shape: Shape) -> float:
        """An upper bound on the walltime a job of ``shape`` could start now with.

        Exact for one entry: the best node's :meth:`Timeline.fit_duration` (inf as
        soon as a node without reservations fits). Gangs: inf (no bound).
        """
        if len(shape) > 1:
            return float("inf")
        entry = shape[0]
        best = 0.0
        for nf in self.cluster.candidates(entry[2], False):
            if not nf.fits(*entry):
                continue
            if nf.name not in self.reserved:
                return float("inf")
            best = max(best, self.timeline(nf.name).fit_duration(entry))
        return best

    def start(self, placement: Placement, walltime_s: float) -> None:
        """A job starts now with ``placement``: it holds it until ``now + walltime_s``."""
        self.cluster.take(placement)
        end = self.now + walltime_s
        for cp in placement:
            mask = _mask(cp.gpus)
            self.releases.setdefault(cp.node, []).append((end, cp.ncpus, cp.mem_mb, mask))
            tl = self.timelines.get(cp.node)
            if tl is not None:
                tl.take(self.now, end, cp.ncpus, cp.mem_mb, mask)

    # -- the future -------------------------------------------------------

    def earliest(self, shape: Shape, walltime_s: float) -> tuple[float, Placement] | None:
        """The earliest start and concrete placement for ``shape``, or None if none is found.

        One entry: the minimum over nodes of each timeline's earliest fit, ties going
        to the tightest node (best fit). Gangs: each node's earliest fit for the
        least entry (the minimum of every dimension) bounds when it can host any
        entry; candidate start times are the timelines' breakpoints from the k-th
        smallest such bound on (no earlier time can host k entries); at each,
        entries are assigned largest first to distinct nodes greedily. At most
        ``MAX_GANG_CANDIDATES`` times are tried.
        """
        first = shape[0]
        # The least of every dimension: a node that cannot host this hosts no entry.
        least = (min(e[0] for e in shape), min(e[1] for e in shape), min(e[2] for e in shape))
        ests: list[tuple[float, int, str]] = []
        for name, nf in self.cluster.nodes.items():
            if not nf.up:
                continue
            t = self.timeline(name).earliest(walltime_s, least)
            if t is not None:
                ests.append((t, nf.ngpus, name))
        if len(ests) < len(shape):
            return None
        ests.sort()
        if len(shape) == 1:
            t, _, name = ests[0]
            return t, (self._chunk_at(name, t, walltime_s, first),)
        return self._earliest_gang(shape, walltime_s, ests)

    def still_earliest(self, shape: Shape, placement: Placement, start: float, walltime_s: float) -> bool:
        """Whether :meth:`earliest` would give exactly ``(start, placement)`` once this
        reservation (which is in the profile) is lifted — proven without lifting it.

        Only for one entry without GPUs on its node: there, the entry fits from no
        segment before ``start`` (with the reservation given back), and on no other
        node at or before it, so the earliest start is ``start`` (the reservation itself fits there)
        on the same node, with the same chunk. False means "not proven", never
        "no": the caller then computes.
        """
        if len(shape) != 1 or len(placement) != 1:
            return False
        c, m, g = shape[0]
        cp = placement[0]
        if g or cp.gpus or cp.ncpus != c or cp.mem_mb != m:
            return False
        for name, nf in self.cluster.nodes.items():
            if not nf.up:
                continue
            own = name == cp.node
            tl = self.timeline(name)
            pc, pm = tl.peak_before(start, inclusive=not own)
            if pc < c or pm < m:  # no room at all before: O(log segments)
                continue
            if tl.fits_before(start, not own, walltime_s, c, m, (start, start + walltime_s) if own else None):
                return False
        return cp.node in self.cluster.nodes and self.cluster.nodes[cp.node].up

    def peaks_of(self, placement: Placement) -> list[tuple[Timeline, tuple[list[int], list[int]] | None]]:
        """The running maxima of the placement's timelines, to :meth:`restore_peaks`."""
        return [(tl, tl.peaks) for tl in (self.timeline(cp.node) for cp in placement)]

    @staticmethod
    def restore_peaks(saved: list[tuple[Timeline, tuple[list[int], list[int]] | None]]) -> None:
        """After a reservation was lifted and put back exactly where it was (same
        segments, same values), its timelines' running maxima are valid again."""
        for tl, peaks in saved:
            tl.peaks = peaks

    def fits_anywhere_now(self, shape: Shape) -> bool:
        """False when no node has room now for a one-entry ``shape`` (then
        :meth:`place_now` finds nothing whatever the reservations); True otherwise."""
        if len(shape) != 1:
            return True
        entry = shape[0]
        return any(nf.fits(*entry) for nf in self.cluster.candidates(entry[2], False))

    def _earliest_gang(
        self, shape: Shape, walltime_s: float, ests: list[tuple[float, int, str]]
    ) -> tuple[float, Placement] | None:
        lower = ests[len(shape) - 1][0]
        names = [name for _, _, name in ests]
        times = sorted({t for n in names for t in self.timelines[n].times if t >= lower})
        for t in times[:MAX_GANG_CANDIDATES]:
            placement = self.place_at(t, shape, walltime_s, names)
            if placement is not None:
                return t, placement
        return None

    def place_at(
        self, t: float, shape: Shape, walltime_s: float, names: list[str]
    ) -> Placement | None:
        """Assign every entry of ``shape`` to a distinct node of ``names`` usable from ``t``."""

        def options(entry: tuple[int, int, int]) -> Iterator[tuple[str, int]]:
            for name in names:
                mask = self.timeline(name).fit_at(t, walltime_s, entry)
                if mask >= 0:
                    yield name, mask

        return self._assign(shape, options)

    def _assign(
        self, shape: Shape, options: Callable[[tuple[int, int, int]], Iterator[tuple[str, int]]]
    ) -> Placement | None:
        """Entries to distinct nodes: greedily, largest entry first, each to its first
        option; if that fails for a gang of unequal entries, an exact bipartite
        matching (augmenting paths) over all options, so a chunk that needs fewer
        GPUs but more CPUs cannot strand the gang."""
        chosen: list[tuple[str, int]] = []
        used: set[str] = set()
        for entry in shape:
            pick = next(((n, m) for n, m in options(entry) if n not in used), None)
            if pick is None:
                chosen = []
                break
            used.add(pick[0])
            chosen.append(pick)
        if not chosen and len(set(shape)) > 1:
            chosen = _match([list(options(entry)) for entry in shape]) or []
        if not chosen:
            return None
        nodes = self.cluster.nodes
        return tuple(
            chunk_on(nodes[name], entry[0], entry[1], lowest_bits(mask, entry[2]))
            for entry, (name, mask) in zip(shape, chosen)
        )

    def _chunk_at(
        self, name: str, t: float, walltime_s: float, entry: tuple[int, int, int]
    ) -> ChunkPlacement:
        mask = self.timeline(name).fit_at(t, walltime_s, entry)
        return chunk_on(self.cluster.nodes[name], entry[0], entry[1], lowest_bits(mask, entry[2]))

    def reserve(self, placement: Placement, start: float, walltime_s: float) -> None:
        """Promise ``placement`` from ``start`` for ``walltime_s``: backfill must not take it."""
        for cp in placement:
            self.timeline(cp.node).take(
                start, start + walltime_s, cp.ncpus, cp.mem_mb, _mask(cp.gpus)
            )
            self.reserved.add(cp.node)

    def reserve_all(self, items: Sequence[tuple[Placement, float, float]]) -> bool:
        """:meth:`reserve` every ``(placement, start, walltime)`` at once, if that is
        what reserving them one by one, each after an :meth:`is_free` check, gives.

        It is when no chunk holds GPUs, no span is empty and no node's free CPUs or memory go below
        zero with all of them in: then every check passes, whatever the order, and
        each timeline is one merge of the reservations' bounds (sorted, summed)
        instead of a split and a slice update per reservation. Otherwise nothing
        is reserved and False says so: the caller goes one by one.
        """
        per_node: Spans = {}
        for placement, start, walltime_s in items:
            if add_spans(per_node, placement, start, walltime_s) is None:
                return False
        return self.reserve_spans(per_node)

    def reserve_spans(self, per_node: Spans) -> bool:
        """:meth:`reserve_all` once its reservations are ``(start, end, cpus, mem)`` spans
        per node, all without GPUs and non-empty (the caller made sure)."""
        built: dict[str, Timeline] = {}
        for name, spans in per_node.items():
            tl = self.timeline(name).with_reservations(spans)
            if tl is None:
                return False
            built[name] = tl
        self.timelines.update(built)
        self.reserved.update(built)
        return True

    def is_free(self, placement: Placement, start: float, walltime_s: float) -> bool:
        """Whether exactly these resources are free throughout ``[start, start + walltime_s)``."""
        for cp in placement:
            want = _mask(cp.gpus)
            mask = self.timeline(cp.node).fit_at(start, walltime_s, (cp.ncpus, cp.mem_mb, len(cp.gpus)))
            if mask < 0 or mask & want != want:
                return False
        return True

    def unreserve(self, placement: Placement, start: float, walltime_s: float) -> None:
        """Undo :meth:`reserve` (the job's own reservation, while it looks for better)."""
        for cp in placement:
            self.timeline(cp.node).give(
                start, start + walltime_s, cp.ncpus, cp.mem_mb, _mask(cp.gpus)
            )

    def end_early(self, running: Running, end: float) -> None:
        """A running job will be gone by ``end`` (a preemption victim's kill deadline)."""
        old = max(running.end_by, self.now + OVERDUE_S)
        if end >= old:
            return
        for cp in running.placement:
            mask = _mask(cp.gpus)
            rel = self.releases.setdefault(cp.node, [])
            rel.append((end, cp.ncpus, cp.mem_mb, mask))
            rel.append((old, -cp.ncpus, -cp.mem_mb, 0))
            tl = self.timelines.get(cp.node)
            if tl is not None:
                tl.give(end, old, cp.ncpus, cp.mem_mb, mask)


class Occupancy:
    """Free resources now and the running jobs' releases, kept up to date by whoever
    owns the state (daemon or simulator) as jobs start and end.

    A cycle then copies the free-now index in O(nodes) instead of rebuilding it
    from every running job, and reads the releases without copying them.
    """

    def __init__(self, nodes: Sequence[Node], replannable: bool = True) -> None:
        """``replannable``: whether its running jobs never hold nodes past their
        ``end_by`` (a simulator's), which conservative backfill's cross-cycle plan
        relies on; a daemon's overdue job does, until it is killed."""
        self.cluster = Cluster(nodes, ())
        self.replannable = replannable
        self.releases: Releases = {}
        #: Per node, the releases sorted by time; built on first use, then kept in step.
        self._index: dict[str, NodeReleases] = {}
        #: Conservative backfill's state across cycles (schedd.core.replan), set by the first cycle
        #: that uses it; told here of the room running jobs give back before their planned end.
        self.replan: Replan | None = None

    def index(self, node: str) -> NodeReleases:
        """The node's releases as a sorted :class:`NodeReleases` (built once, then kept)."""
        ix = self._index.get(node)
        if ix is None:
            ix = self._index[node] = NodeReleases(self.releases.get(node, {}).values())
        return ix

    def _put(self, node: str, job_id: str, rel: _Release) -> None:
        per_node = self.releases.setdefault(node, {})
        old = per_node.get(job_id)
        per_node[job_id] = rel
        ix = self._index.get(node)
        if ix is not None:
            if old is not None:
                ix.remove(old)
            ix.add(rel)

    def add(self, r: Running) -> None:
        self.cluster.take(r.placement)
        for cp in r.placement:
            self._put(cp.node, r.job.id, (r.end_by, cp.ncpus, cp.mem_mb, _mask(cp.gpus)))

    def remove(self, r: Running) -> None:
        self.cluster.give(r.placement)
        for cp in r.placement:
            old = self.releases[cp.node].pop(r.job.id, None)
            ix = self._index.get(cp.node)
            if old is not None and ix is not None:
                ix.remove(old)
            if old is not None and self.replan is not None:
                self.replan.freed.append((float("-inf"), old[0]))

    def set_end(self, r: Running) -> None:
        """``r.end_by`` changed (a preemption deadline): move its releases."""
        for cp in r.placement:
            old = self.releases.get(cp.node, {}).get(r.job.id)
            self._put(cp.node, r.job.id, (r.end_by, cp.ncpus, cp.mem_mb, _mask(cp.gpus)))
            if old is not None and self.replan is not None and r.end_by < old[0]:
                self.replan.freed.append((r.end_by, old[0]))

    @classmethod
    def of(cls, nodes: Sequence[Node], running: Iterable[Running]) -> Occupancy:
        occ = cls(nodes)
        for r in running:
            if all(cp.node in occ.cluster.nodes for cp in r.placement):
                occ.add(r)
        return occ


def _match(options: list[list[tuple[str, int]]]) -> list[tuple[str, int]] | None:
    """A distinct node per entry, or None: Kuhn's augmenting paths, O(entries x options)."""
    owner: dict[str, int] = {}  # node -> entry holding it
    pick = [0] * len(options)

    def augment(i: int, seen: set[str]) -> bool:
        for j, (name, _) in enumerate(options[i]):
            if name in seen:
                continue
            seen.add(name)
            if name not in owner or augment(owner[name], seen):
                owner[name], pick[i] = i, j
                return True
        return False

    for i in range(len(options)):
        if not augment(i, set()):
            return None
    return [options[i][pick[i]] for i in range(len(options))]


def _mask(indices: Iterable[int]) -> int:
    m = 0
    for i in indices:
        m |= 1 << i
    return m
