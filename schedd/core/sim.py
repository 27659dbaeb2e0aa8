"""Discrete-event simulator: the daemon's exact cycle on a virtual clock.

Time is a heap of ``(t, seq, event)``; ``seq`` makes equal times deterministic.
Events are arrivals and job ends; after all events of one instant are applied,
one cycle runs (the daemon coalesces events the same way). Jobs end at their
*actual* runtime, capped at their walltime (the agent kills at walltime),
while the policies only ever see the requested walltime.

Preemption victims leave ``grace_s`` after being chosen and are requeued (same
id, ``attempt + 1``, run again from the start) or cancelled. Usage is charged
to the core's :class:`~schedd.core.usage.UsageLedger` when a job ends, exactly as the
daemon does (same rate and half-life, from the pipeline's usage policy).

No clock, no I/O: for a given input the run is deterministic, so tests can
check invariants after every cycle (pass ``observer``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from schedd.core.context import Plan, Reservation, Snapshot
from schedd.core.model import Job, JobState, Node, QosDef, QueueDef, Running
from schedd.core.profile import Occupancy
from schedd.core.pending import FifoQueue
from schedd.core.scheduler import Pipeline, run_cycle
from schedd.core.usage import UsageLedger

__all__ = ["Outcome", "SimJob", "Simulator"]

_ARRIVE, _END = 0, 1


@dataclass(frozen=True, slots=True)
class SimJob:
    """A job to replay: what is submitted, and how long it really runs."""

    job: Job
    runtime_s: float


@dataclass(slots=True)
class Outcome:
    """What happened to one job."""

    job: Job
    submit: float
    start: float = -1.0  # last start (a requeued job starts again)
    first_start: float = -1.0
    end: float = -1.0
    attempts: int = 0
    preempted: int = 0
    cancelled: bool = False

    @property
    def wait(self) -> float:
        return self.first_start - self.submit


@dataclass
class Simulator:
    """Replays jobs on ``nodes`` with ``pipeline``; see the module docstring."""

    nodes: Sequence[Node]
    pipeline: Pipeline
    queues: dict[str, QueueDef] = field(default_factory=dict)
    qos: dict[str, QosDef] = field(default_factory=dict)
    observer: Callable[[Simulator, Plan], None] | None = None
    now: float = 0.0
    cycles: int = 0
    #: Keep an indexed FCFS queue when the pipeline orders by submission alone.
    indexed: bool = True

    def __post_init__(self) -> None:
        self.pending: dict[str, Job] = {}
        self.running: dict[str, Running] = {}
        self.outcomes: dict[str, Outcome] = {}
        self._runtime: dict[str, float] = {}
        self._ends: dict[str, float] = {}  # when each running job ends on its own
        self._events: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        self.occupancy = Occupancy(self.nodes)
        # FCFS pipelines: keep the queue ordered and indexed instead of sorting per cycle.
        self.queue = FifoQueue() if self.indexed and not self.pipeline.key_hooks else None
        self.reservations: dict[str, Reservation] = {}
        self.ledger = UsageLedger.for_policy(self.pipeline.usage_policy)

    # -- input --------------------------------------------------------------

    def submit(self, sim_job: SimJob) -> None:
        job = sim_job.job
        self._runtime[job.id] = sim_job.runtime_s
        self.outcomes[job.id] = Outcome(job, job.submit_time)
        self._push(job.submit_time, _ARRIVE, job.id, 0)

    def _enqueue(self, job: Job) -> None:
        self.pending[job.id] = job
        if self.queue is not None:
            self.queue.add(job)

    def _push(self, t: float, kind: int, job_id: str, attempt: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, job_id, attempt))

    # -- the loop -----------------------------------------------------------

    def run(self, workload: Iterable[SimJob] = (), until: float | None = None) -> None:
        """Submit ``workload`` and run until no event is left (or ``until``)."""
        for sj in workload:
            self.submit(sj)
        events = self._events
        while events:
            t = events[0][0]
            if until is not None and t > until:
                break
            self.now = t
            while events and events[0][0] == t:
                _, _, kind, job_id, attempt = heapq.heappop(events)
                if kind == _ARRIVE:
                    self._enqueue(self.outcomes[job_id].job)
                else:
                    self._end(job_id, attempt)
            self.cycle()

    def cycle(self) -> Plan:
        """Run one scheduling cycle at ``now`` and apply its plan."""
        usage = self.ledger.at(self.now)
        snap = Snapshot(
            self.now,
            self.queue if self.queue is not None else list(self.pending.values()),
            list(self.running.values()),
            self.nodes,
            self.queues,
            self.qos,
            usage,
            self.occupancy,
            self.reservations,
        )
        plan = run_cycle(snap, self.pipeline)
        self.reservations = plan.reservations
        self.cycles += 1
        self._apply(plan)
        if self.observer is not None:
            self.observer(self, plan)
        return plan

    def _apply(self, plan: Plan) -> None:
        now = self.now
        for job, placement in plan.starts:
            del self.pending[job.id]
            if self.queue is not None:
                self.queue.remove(job)
            job.state = JobState.RUNNING
            r = self.running[job.id] = Running(job, placement, now, now + job.walltime_s)
            self.occupancy.add(r)
            out = self.outcomes[job.id]
            out.start = now
            if out.first_start < 0:
                out.first_start = now
            out.attempts += 1
            ends = now + min(self._runtime[job.id], job.walltime_s)
            self._ends[job.id] = ends
            self._push(ends, _END, job.id, job.attempt)
        for p in plan.preemptions:
            victim = self.running[p.victim]
            victim.preempted_for = p.for_job
            deadline = now + p.grace_s
            if deadline < victim.end_by:
                victim.end_by = deadline
                self.occupancy.set_end(victim)
                self._push(deadline, _END, p.victim, victim.job.attempt)
            self.outcomes[p.victim].preempted += 1
            self.outcomes[p.victim].cancelled = p.mode == "cancel"

    def _end(self, job_id: str, attempt: int) -> None:
        r = self.running.get(job_id)
        if r is None or r.job.attempt != attempt:
            return  # a stale event: the job already ended (preempted earlier)
        del self.running[job_id]
        self.occupancy.remove(r)
        self.ledger.charge_run(r.job, self.now - r.start_time, self.now)
        out = self.outcomes[job_id]
        killed = self.now < self._ends.pop(job_id)  # else it ended on its own in its grace time
        if killed and r.preempted_for is not None and not out.cancelled:
            job = replace(r.job, attempt=r.job.attempt + 1, state=JobState.QUEUED)
            out.job = job
            self._enqueue(job)
            return
        r.job.state = JobState.FINISHED
        out.end = self.now
        out.cancelled = out.cancelled and killed
