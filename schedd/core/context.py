"""What one scheduling cycle reads (Snapshot), writes (Plan) and works in (Context).

The Snapshot is frozen input; the Plan is data for ``state.py`` to apply and for
the API to turn into messages. The Context is the cycle's scratch space: the
free-now :class:`~schedd.core.cluster.Cluster`, the future :class:`~schedd.core.profile.Profile`,
and the bookkeeping of which jobs are settled. Actions and policies work through
it; nothing in here reads a clock or does I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from operator import add, attrgetter, itemgetter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schedd.core.model import Job, JobState, Node, Placement, QosDef, QueueDef, Reason, Running, Shape
from schedd.core.profile import Occupancy, Profile, Spans, add_spans
from schedd.core.pending import FifoQueue
from schedd.core.replan import Replan

if TYPE_CHECKING:
    from schedd.core.scheduler import Pipeline

__all__ = ["Context", "Plan", "Preemption", "Reservation", "Snapshot"]

_START, _PLACEMENT, _FIRST = attrgetter("start"), attrgetter("placement"), itemgetter(0)
_NODE, _GPUS, _NCPUS, _MEM = attrgetter("node"), attrgetter("gpus"), attrgetter("ncpus"), attrgetter("mem_mb")
_ID, _WALLTIME = attrgetter("id"), attrgetter("walltime_s")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a cycle may look at, as of ``now``.

    ``usage`` is each (account, user)'s decayed usage of ended runs as of ``now``,
    read from the owner's :class:`~schedd.core.usage.UsageLedger` (the unit and decay
    are the pipeline's usage policy's: GPU-seconds and 7 days by default); the
    running jobs are not in it: a policy that reads usage adds them itself.
    """

    now: float
    #: Pending jobs; a :class:`FifoQueue` when the owner keeps one (FCFS pipelines).
    pending: Collection[Job]
    running: Sequence[Running]
    nodes: Sequence[Node]
    queues: Mapping[str, QueueDef] = field(default_factory=dict)
    qos: Mapping[str, QosDef] = field(default_factory=dict)
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)
    #: The running jobs' occupancy, if the caller maintains one incrementally;
    #: otherwise the cycle derives it from ``running`` (O(running jobs)).
    occupancy: Occupancy | None = None
    #: The previous plan's reservations. Claims are always honoured; with
    #: conservative backfill every reservation is, so none is ever pushed later.
    reservations: Mapping[str, Reservation] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A blocked job's planned start: when, and on which resources.

    ``claim`` marks a preemptor's hold on what its victims free: it is kept from
    cycle to cycle (the owner of state passes it back in the next Snapshot)
    until the job starts, so nothing else takes those resources meanwhile.
    """

    start: float
    placement: Placement
    claim: bool = False


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
    """One cycle's working state. Created by :func:`schedd.core.scheduler.run_cycle`."""

    def __init__(self, snapshot: Snapshot, pipeline: Pipeline) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.pipeline = pipeline
        self.plan = Plan()
        occ = snapshot.occupancy or Occupancy.of(snapshot.nodes, snapshot.running)
        self.cluster = occ.cluster.copy() if snapshot.occupancy else occ.cluster
        self.profile = Profile(snapshot.now, self.cluster, occ.releases, occ)
        self.order: Sequence[Job] = []  # eligible pending jobs, best first
        #: The owner's FCFS index of the pending jobs, when it keeps one (see schedd.core.pending).
        self.queue: FifoQueue | None = None
        self.cursor = 0  # index in ``order`` of the first job allocate could not start
        self.settled: set[str] = set()  # started, refused or reserved this cycle
        self.spread = False  # set by the placement policy
        self.never_cache = pipeline.never_cache(self.cluster.capacity)
        self.no_fit: dict[Shape, float] = {}  # shape -> shortest walltime that did not fit
        self.prior: dict[str, Reservation] = {}  # honoured reservations not yet decided on
        self.lifted: set[str] = set()  # priors taken out of the profile right now (none between two jobs)
        #: Conservative backfill's state across cycles, when this cycle may use it (see schedd.core.replan).
        self.replan = self._replan(snapshot, pipeline)
        if snapshot.reservations:
            self._load_priors()

    def _replan(self, snapshot: Snapshot, pipeline: Pipeline) -> Replan | None:
        """The owner's :class:`Replan`, begun for this cycle, if the pipeline is one it
        knows to be exact for: FCFS conservative backfill without limits, priorities,
        preemption or a bound on the jobs tested, on nodes without GPUs, with an
        occupancy kept across cycles."""
        occ = snapshot.occupancy
        backfill = pipeline.backfill_policy
        if (occ is None or not occ.replannable or backfill is None or backfill.mode != "conservative" or backfill.max_jobs_tested is not None
                or pipeline.key_hooks or pipeline.fits_hooks or pipeline.victims_policy is not None
                or "backfill" not in pipeline.actions or not isinstance(snapshot.pending, FifoQueue)):
            return None
        nodes = self.cluster.nodes.values()
        if any(nf.total[2] for nf in nodes):
            # Ties between nodes at the same earliest start go to the one with fewer GPUs
            # free now: that changes as GPU jobs come and go, whatever the gains.
            return None
        if occ.replan is None:
            occ.replan = Replan()
        up = tuple(nf.up for nf in nodes)
        occ.replan.begin(self.now, snapshot.reservations, pipeline, snapshot.nodes, up)
        return occ.replan

    def _load_priors(self) -> None:
        """Put the previous cycle's honoured reservations back into the profile."""
        backfill = self.pipeline.backfill_policy
        conservative = backfill is not None and backfill.mode == "conservative"
        if conservative and self._load_on_one_node():
            return
        now = self.now
        honoured = [
            (job_id, res) for job_id, res in self.snapshot.reservations.items()
            if (res.claim or conservative) and res.start >= now  # (one not started when promised is planned afresh)
        ]
        if honoured:  # (EASY's one reservation is not: no need to index a deep queue to find that)
            self._load_honoured(honoured)
        if self.replan is not None and len(self.prior) != len(self.snapshot.reservations):
            for job_id, res in self.snapshot.reservations.items():
                if job_id not in self.prior:  # not put back: its room is free again
                    self.replan.gain(res.start)

    def _load_honoured(self, honoured: list[tuple[str, Reservation]]) -> None:
        """Those whose job is still pending, on up nodes: in one merge, else one by one."""
        pending = {j.id: j for j in self.snapshot.pending}
        up = {name for name, nf in self.cluster.nodes.items() if nf.up}
        usable: dict[str, tuple[Reservation, Job]] = {}
        # The spans per node for Profile.reserve_spans, while every one can be merged.
        per_node: Spans | None = {}
        for job_id, res in honoured:
            job = pending.get(job_id)
            p = res.placement
            if job is None or not (p[0].node in up if len(p) == 1 else all(cp.node in up for cp in p)):
                continue
            usable[job_id] = (res, job)
            if per_node is not None:
                per_node = add_spans(per_node, p, res.start, job.walltime_s)
        if per_node is not None and self.profile.reserve_spans(per_node):
            self.prior = {job_id: res for job_id, (res, _) in usable.items()}
        else:
            for job_id, (res, job) in usable.items():
                if not self.profile.is_free(res.placement, res.start, job.walltime_s):
                    continue  # the world moved (a job overran): plan afresh
                self.profile.reserve(res.placement, res.start, job.walltime_s)
                self.prior[job_id] = res

    def _load_on_one_node(self) -> bool:
        """Conservative backfill's common case, in C-level passes over the priors
        instead of a Python loop: every prior honoured (none started late), its job
        pending, one chunk without GPUs, all on one up node, walltimes above zero.
        Then every prior is usable and the loop below would merge them all at once:
        this does exactly that and says True. False, with nothing done, when the
        case does not hold or the merge refuses (the loop then decides)."""
        reservations = self.snapshot.reservations
        ress = list(reservations.values())
        starts = list(map(_START, ress))
        if min(starts) < self.now:
            return False
        placements = list(map(_PLACEMENT, ress))
        if set(map(len, placements)) != {1}:
            return False
        chunks = list(map(_FIRST, placements))
        nodes = set(map(_NODE, chunks))
        if len(nodes) != 1 or any(map(_GPUS, chunks)):
            return False
        (name,) = nodes
        nf = self.cluster.nodes.get(name)
        pending = self.snapshot.pending
        by_id = dict(zip(map(_ID, pending), pending))
        if nf is None or not nf.up or not by_id.keys() >= reservations.keys():
            return False
        walls = list(map(_WALLTIME, map(by_id.__getitem__, reservations)))
        if not min(walls) > 0:
            return False
        tl = self.profile.timeline(name).with_columns(
            starts, list(map(add, starts, walls)), list(map(_NCPUS, chunks)), list(map(_MEM, chunks))
        )
        if tl is None:
            return False
        self.profile.timelines[name] = tl
        self.profile.reserved.add(name)
        self.prior = dict(reservations)
        return True

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

        "Can never run" first (cached per shape), then the first policy whose
        ``fits`` hook refuses, in config order.
        """
        if self.never(job):
            return Reason.NEVER
        for fits in self.pipeline.fits_hooks:
            reason = fits(job, self)
            if reason is not None:
                return reason
        return None

    def attempt(self, job: Job) -> Placement | None:
        """:meth:`try_now`, with the job's own prior reservation out of the way.

        Without a start the prior is put back, to be kept or improved on by
        :meth:`reserve_earliest`.
        """
        prior = self.prior.get(job.id)
        if prior is None:
            return self.try_now(job)
        if not self.profile.fits_anywhere_now(job.shape):  # no room now: no need to lift
            self.plan.tested += 1
            return None
        saved = self.profile.peaks_of(prior.placement) if job.id not in self.lifted else None
        self._lift(job, prior)
        placement = self.profile.place_now(job.shape, job.walltime_s, self.spread)
        self.plan.tested += 1
        if placement is None:
            self._put_back(job, prior)
            if saved is not None:
                self.profile.restore_peaks(saved)
        return placement

    def reserve_earliest(self, job: Job, reason: Reason, claim: bool = False) -> bool:
        """Reserve the job at its earliest start — never later than its prior reservation.

        A prior that is provably still the earliest (:meth:`Profile.still_earliest`)
        is kept as it is, without lifting it and searching: on a deep queue under
        conservative backfill most reservations do not move from cycle to cycle.
        """
        prior = self.prior.get(job.id)
        if (prior is not None and job.id not in self.lifted
                and self.profile.still_earliest(job.shape, prior.placement, prior.start, job.walltime_s)):
            del self.prior[job.id]
            kept = self.plan.reservations[job.id] = Reservation(prior.start, prior.placement, claim or prior.claim)
            self.plan.reasons[job.id] = reason
            self.settled.add(job.id)
            if self.replan is not None:
                self.replan.checked(job, kept)
            return True
        prior = self.prior.pop(job.id, None)
        saved = None
        if prior is not None:
            if job.id not in self.lifted:
                saved = self.profile.peaks_of(prior.placement)
            self._lift(job, prior)
        found = self.profile.earliest(job.shape, job.walltime_s)
        if prior is not None and (found is None or found[0] > prior.start):
            found = (prior.start, prior.placement)
        self.lifted.discard(job.id)
        if found is None:
            return False
        claim = claim or (prior is not None and prior.claim)
        self.reserve(job, found[0], found[1], reason, claim)
        if saved is not None and prior is not None and found == (prior.start, prior.placement):
            self.profile.restore_peaks(saved)  # put back where it was: nothing moved
        if self.replan is not None:
            if prior is not None and found != (prior.start, prior.placement):
                self.replan.moved(prior, job.walltime_s, found[0], found[1])
            self.replan.checked(job, self.plan.reservations[job.id])
        return True

    def drop_prior(self, job: Job) -> None:
        """Forget the job's prior reservation (a claim whose victims are long gone)."""
        prior = self.prior.pop(job.id, None)
        if prior is not None and job.id not in self.lifted:
            self._lift(job, prior)
        self.lifted.discard(job.id)
        if prior is not None and self.replan is not None:
            self.replan.gain(prior.start)

    def _lift(self, job: Job, prior: Reservation) -> None:
        if job.id not in self.lifted:
            self.profile.unreserve(prior.placement, prior.start, job.walltime_s)
            self.lifted.add(job.id)

    def _put_back(self, job: Job, prior: Reservation) -> None:
        if job.id in self.lifted:
            self.profile.reserve(prior.placement, prior.start, job.walltime_s)
            self.lifted.discard(job.id)

    def carry_priors(self) -> None:
        """Priors no action decided on stay as they were (end of the cycle)."""
        for job_id, prior in self.prior.items():
            if job_id not in self.lifted:
                self.plan.reservations.setdefault(job_id, prior)

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
        failed_w = self.no_fit.get(shape)
        if failed_w is not None and job.walltime_s >= failed_w:
            return None
        placement = self.profile.place_now(shape, job.walltime_s, self.spread)
        if placement is None:
            self.no_fit[shape] = job.walltime_s if failed_w is None else min(job.walltime_s, failed_w)
        return placement

    def forget_fits(self) -> None:
        """Drop cached "does not fit" answers after the future changed (a preemption)."""
        self.no_fit.clear()

    # -- decisions --------------------------------------------------------

    def finish(self) -> None:
        """End of the cycle: priors no action decided on stay; the replan state moves on."""
        self.carry_priors()
        if self.replan is not None:
            self.replan.finish(self.plan.reservations)

    def start(self, job: Job, placement: Placement) -> None:
        prior = self.prior.pop(job.id, None)
        if prior is not None and self.replan is not None:
            self.replan.moved(prior, job.walltime_s, self.now, placement)
        self.lifted.discard(job.id)
        self.profile.start(placement, job.walltime_s)
        self.plan.starts.append((job, placement))
        self.plan.reasons.pop(job.id, None)
        self.settled.add(job.id)
        for hook in self.pipeline.start_hooks:
            hook(job, placement, self)

    def reserve(
        self, job: Job, start: float, placement: Placement, reason: Reason, claim: bool = False
    ) -> None:
        self.profile.reserve(placement, start, job.walltime_s)
        self.plan.reservations[job.id] = Reservation(start, placement, claim)
        self.plan.reasons[job.id] = reason
        self.settled.add(job.id)

    def refuse(self, job: Job, reason: Reason) -> None:
        self.drop_prior(job)  # a job held back by a limit holds nothing for later
        self.plan.reasons[job.id] = reason
        self.settled.add(job.id)

    def pending_after_cursor(self) -> list[Job]:
        """Jobs from the cursor on that no action has settled yet, best first."""
        settled = self.settled
        return [j for j in self.order[self.cursor :] if j.id not in settled]

    def next_after_cursor(self) -> Iterator[Job]:
        """Like :meth:`pending_after_cursor`, lazily."""
        settled = self.settled
        return (j for j in itertools.islice(self.order, self.cursor, None) if j.id not in settled)



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
