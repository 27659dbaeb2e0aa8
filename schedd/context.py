"""What one scheduling cycle reads (Snapshot), writes (Plan) and works in (Context).

The Snapshot is frozen input; the Plan is data for ``state.py`` to apply and for
the API to turn into messages. The Context is the cycle's scratch space: the
free-now :class:`~schedd.cluster.Cluster`, the future :class:`~schedd.profile.Profile`,
and the bookkeeping of which jobs are settled. Actions and policies work through
it; nothing in here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schedd.model import Job, JobState, Node, Placement, QosDef, QueueDef, Reason, Running, Shape
from schedd.profile import Occupancy, Profile

if TYPE_CHECKING:
    from schedd.scheduler import Pipeline

__all__ = ["Context", "Plan", "Preemption", "Reservation", "Snapshot"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a cycle may look at, as of ``now``.

    ``usage`` is each (account, user)'s decayed resource usage as of ``now`` (the
    unit is the fair-share policy's: GPU-seconds by default), not counting the
    running jobs, which the fair-share policy adds itself.
    """

    now: float
    pending: Sequence[Job]
    running: Sequence[Running]
    nodes: Sequence[Node]
    queues: Mapping[str, QueueDef] = field(default_factory=dict)
    qos: Mapping[str, QosDef] = field(default_factory=dict)
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: The running jobs' occupancy, if the caller maintains one incrementally;
    #: otherwise the cycle derives it from ``running`` (O(running jobs)).
    occupancy: Occupancy | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A blocked job's planned start: when, and on which resources."""

    start: float
    placement: Placement


@dataclass(frozen=True, slots=True)
class Preemption:
    """Kill (``mode="cancel"``) or requeue ``victim`` to make room for ``for_job``.

    The victim gets SIGTERM now and SIGKILL after ``grace_s``; it keeps its
    resources until it has really exited.
    """

    victim: str
    for_job: str
    mode: str
    grace_s: float


@dataclass(slots=True)
class Plan:
    """A cycle's decisions. Pending jobs absent from ``reasons`` wait on ``Priority``."""

    starts: list[tuple[Job, Placement]] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    reasons: dict[str, Reason] = field(default_factory=dict)
    truncated: bool = False  # a work bound (max_jobs_tested…) stopped a loop early
    tested: int = 0  # jobs tested for a start this cycle

    def reason(self, job_id: str) -> Reason:
        return self.reasons.get(job_id, Reason.PRIORITY)


class Context:
    """One cycle's working state. Created by :func:`schedd.scheduler.run_cycle`."""

    def __init__(self, snapshot: Snapshot, pipeline: Pipeline) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.pipeline = pipeline
        self.plan = Plan()
        occ = snapshot.occupancy or Occupancy.of(snapshot.nodes, snapshot.running)
        self.cluster = occ.cluster.copy() if snapshot.occupancy else occ.cluster
        self.profile = Profile(snapshot.now, self.cluster, occ.releases)
        self.order: list[Job] = []  # eligible pending jobs, best first
        self.cursor = 0  # index in ``order`` of the first job allocate could not start
        self.settled: set[str] = set()  # started, refused or reserved this cycle
        self.spread = False  # set by the placement policy
        self.never_cache = pipeline.never_cache(self.cluster.capacity)
        self._no_fit: dict[Shape, float] = {}  # shape -> shortest walltime that did not fit

    # -- queries ----------------------------------------------------------

    def queue_of(self, job: Job) -> QueueDef | None:
        return self.snapshot.queues.get(job.queue)

    def qos_of(self, job: Job) -> QosDef | None:
        return self.snapshot.qos.get(job.qos) if job.qos else None

    def never(self, job: Job) -> bool:
        """Whether no node of the pool could ever hold the job. O(1), cached per shape."""
        never = self.never_cache.get(job.shape)
        if never is None:
            never = self.never_cache[job.shape] = not self.cluster.can_ever_fit(job.shape)
        return never

    def refusal(self, job: Job) -> Reason | None:
        """Why ``job`` may not start whatever the free resources, or None.

        The first policy whose ``fits`` hook refuses, in config order. ("Can never
        run" is settled before any action, see :meth:`never`.)
        """
        for fits in self.pipeline.fits_hooks:
            reason = fits(job, self)
            if reason is not None:
                return reason
        return None

    def try_now(self, job: Job) -> Placement | None:
        """A placement usable from now for the job's walltime, or None.

        Within a cycle free resources only shrink and reservations only grow, so a
        shape that failed for walltime ``w`` fails for any walltime >= ``w``:
        remembered, that answers the common case in O(1).
        """
        self.plan.tested += 1
        shape = job.shape
        if self.cluster.quick_reject(shape):
            return None
        failed_w = self._no_fit.get(shape)
        if failed_w is not None and job.walltime_s >= failed_w:
            return None
        placement = self.profile.place_now(shape, job.walltime_s, self.spread)
        if placement is None:
            self._no_fit[shape] = job.walltime_s if failed_w is None else min(job.walltime_s, failed_w)
        return placement

    def forget_fits(self) -> None:
        """Drop cached "does not fit" answers after the future changed (a preemption)."""
        self._no_fit.clear()

    # -- decisions --------------------------------------------------------

    def start(self, job: Job, placement: Placement) -> None:
        self.profile.start(placement, job.walltime_s)
        self.plan.starts.append((job, placement))
        self.plan.reasons.pop(job.id, None)
        self.settled.add(job.id)
        for hook in self.pipeline.start_hooks:
            hook(job, placement, self)

    def reserve(self, job: Job, start: float, placement: Placement, reason: Reason) -> None:
        self.profile.reserve(placement, start, job.walltime_s)
        self.plan.reservations[job.id] = Reservation(start, placement)
        self.plan.reasons[job.id] = reason
        self.settled.add(job.id)

    def refuse(self, job: Job, reason: Reason) -> None:
        self.plan.reasons[job.id] = reason
        self.settled.add(job.id)

    def pending_after_cursor(self) -> list[Job]:
        """Jobs from the cursor on that no action has settled yet, best first."""
        settled = self.settled
        return [j for j in self.order[self.cursor :] if j.id not in settled]


def waiting_reason(job: Job, now: float) -> Reason | None:
    """The reason a pending job is not even eligible, or None if it is."""
    if job.state is JobState.QUEUED and (job.eligible_time is None or job.eligible_time <= now):
        return None
    if job.state is JobState.HELD:
        return Reason.HELD
    if job.state is JobState.WAITING:
        return Reason.DEPENDENCY if job.depends_on else Reason.BEGIN_TIME
    if job.eligible_at > now:
        return Reason.BEGIN_TIME
    return None
