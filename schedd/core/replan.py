"""Conservative backfill across cycles: which reservations need a fresh look.

Under conservative backfill every blocked job holds a reservation, and a cycle
asks of each one whether it can start now or earlier than promised. On a deep
queue the answer is almost always "no, nothing changed for it", yet proving it
cost a scan of the timeline per job per cycle. This module keeps, across
cycles, what proves it without a scan.

The argument. Let a job of one entry be placed at ``(s, placement)`` by the
plain computation (:meth:`Context.reserve_earliest`) in some profile ``P``, its
own reservation lifted. Later, in profile ``P'`` (again with it lifted), the
plain computation gives the same answer if ``P'`` has nowhere *more* room than
``P`` over ``[now, s + walltime)``: a fit in ``P'`` at a time ``t <= s`` is a fit
in ``P`` at the segment start holding ``t`` (less room fits less), so the
earliest fit is not earlier, no other node fits at ``s`` that did not then, the
GPUs are the lowest free ones as before, and the prior itself still fits. It
cannot start now either (``s > now``: a start now would be an earlier fit).
Room only grows through *gains*, all of which are logged here with an
increasing stamp and the earliest time at which they give room:

* a running job gone before its planned end, or whose end moved earlier (the
  owner's :class:`~schedd.core.profile.Occupancy` records those);
* a reservation the cycle did not put back (its job gone, started too late, on
  a node now down, no longer free), dropped, or replaced by a start or a
  reservation elsewhere (the part of it the new one does not cover).

A job is *clean* when every gain logged since its reservation was last shown
to be right begins at or after ``s + walltime``; it then keeps its reservation
as the plain computation would, in O(gains since). Losses of room (new
reservations, starts, ``now`` moving on, an overdue job's end clamped later)
never need a look. Gangs, claims, pools with GPU nodes (ties between nodes
go to the one with fewer GPUs free now, which no gain explains), and pipelines
with limits, priorities or preemption always take the plain path; so does the first cycle after anything
this state did not see (another owner, other nodes, other reservations).

``tests/sim/test_reservation_shortcuts.py`` compares every plan with the plain
computation's, cycle by cycle, on random workloads.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from schedd.core.model import Job, Node, Placement, Shape

if TYPE_CHECKING:
    from schedd.core.context import Reservation

__all__ = ["Replan"]

#: Seconds after ``now`` at which an overdue job is assumed gone (profile.OVERDUE_S; not imported: no cycle).
_OVERDUE_S = 1.0


class Replan:
    """The gains log and, per reserved job, the stamp at which its reservation was last right."""

    def __init__(self) -> None:
        self.stamp = 0
        self._stamps: list[int] = []
        self._los: list[float] = []
        #: Per job reserved by the last plan: (stamp, its reservation, walltime, shape) when it was last right.
        self._checked: dict[str, tuple[int, Reservation, float, Shape]] = {}
        self._next: dict[str, tuple[int, Reservation, float, Shape]] = {}
        #: What the state describes: the last plan's reservations (by identity), pipeline, nodes, now.
        self._last: Mapping[str, Reservation] | None = None
        self._pipeline: object = None
        self._nodes: Sequence[Node] | None = None
        self._up: tuple[bool, ...] = ()
        self._now = float("-inf")
        self._begun = 0  # the stamp when the cycle's walk began
        #: (from, until) of room given back by running jobs since the last cycle, from the owner's occupancy;
        #: ``from`` = -inf: from whenever the cycle runs.
        self.freed: list[tuple[float, float]] = []

    def begin(
        self, now: float, reservations: Mapping[str, Reservation], pipeline: object,
        nodes: Sequence[Node], up: tuple[bool, ...],
    ) -> None:
        """Start a cycle: forget everything unless it continues the last one seen."""
        same = (reservations is self._last and pipeline is self._pipeline and nodes is self._nodes
                and up == self._up and now >= self._now)
        if not same:
            self._checked = {}
            self._stamps, self._los = [], []
        else:
            horizon = self._now + _OVERDUE_S  # where the last cycle counted overdue releases from
            for lo, hi in self.freed:
                lo = max(lo, now)
                if lo < max(hi, horizon):
                    self.gain(lo)
        self.freed.clear()
        self._next = {}
        self._begun = self.stamp
        self._pipeline, self._nodes, self._up, self._now = pipeline, nodes, up, now

    def finish(self, reservations: Mapping[str, Reservation]) -> None:
        """End a cycle whose plan reserved ``reservations``; drop the gains no job needs."""
        self._last = reservations
        self._checked = self._next
        # Every job checked now was checked after this cycle's begin: older gains concern none.
        cut = bisect_right(self._stamps, self._begun)
        if cut:
            del self._stamps[:cut], self._los[:cut]

    def gain(self, lo: float) -> None:
        """Room grew somewhere, from ``lo`` on."""
        self.stamp += 1
        self._stamps.append(self.stamp)
        self._los.append(lo)

    def moved(self, old: Reservation, walltime_s: float, start: float, placement: Placement) -> None:
        """``old`` was replaced by ``placement`` from ``start`` (a start or another
        reservation): the part of ``old`` the new one does not hold is a gain."""
        end = old.start + walltime_s
        lo = max(old.start, start + walltime_s) if placement == old.placement and start <= old.start else old.start
        if lo < end:
            self.gain(lo)

    def clean(self, job: Job, prior: Reservation) -> bool:
        """Whether ``prior`` is provably what the plain computation keeps (see the module
        doc); if so, it is recorded as right as of now. O(1) when nothing was gained since."""
        rec = self._checked.get(job.id)
        if rec is None or rec[1] is not prior or rec[2] != job.walltime_s or rec[3] != job.shape:
            return False
        stamps = self._stamps
        if stamps and stamps[-1] > rec[0]:
            i = bisect_right(stamps, rec[0])
            if min(self._los[i:]) < prior.start + rec[2]:
                return False
            rec = (self.stamp, prior, rec[2], rec[3])
        elif rec[0] != self.stamp:
            rec = (self.stamp, prior, rec[2], rec[3])
        self._next[job.id] = rec
        return True

    def checked(self, job: Job, reservation: Reservation) -> None:
        """``reservation`` is what the plain computation gives ``job`` in the profile as it is now."""
        if len(job.shape) == 1 and len(reservation.placement) == 1 and not reservation.claim:
            self._next[job.id] = (self.stamp, reservation, job.walltime_s, job.shape)
