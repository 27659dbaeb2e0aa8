"""The daemon's authoritative state: every job, every node, and their transitions.

One object, owned by the event loop (no locks): the API calls its methods, the
scheduling loop takes a :meth:`State.snapshot` and hands back the Plan to
:meth:`State.apply`, and agent messages arrive through :mod:`schedd.daemon.reconcile`.
Every transition of a job is written to the store (the record and an event),
so a restart reloads exactly what was decided. Messages to agents are
*returned* (``Outbox``), never sent from here: the loop sends them only after
the store has committed the decision, so a crash can never launch a job that
the store does not know is running.

Job lifecycle (PBS letters)::

    submit -> H (held) | W (dependency, begin time) | Q (queued)
    Q -> R (a cycle started it) -> E (killed: cancel, preemption) -> F | Q (requeued)

This module keeps the indexes and their persistence; the transitions live in
one module per seam, as functions whose first argument is the State, bound
here as its methods under the names they always had:

- :mod:`schedd.daemon.admission`: validate, check_admission, submit; H, W or Q;
- :mod:`schedd.daemon.arrays`: an array's subjobs, its parent's state, ``%max``;
- :mod:`schedd.daemon.commands`: cancel, purge, hold, release, signal, requeue, alter;
- :mod:`schedd.daemon.plans`: snapshot, apply, launches, held gang ranks, rank
  exits, close, resume, finish;
- :mod:`schedd.daemon.accounting`: a run charged to its job and to the usage ledger.

Why functions bound as methods rather than mixins: a mixin cannot be typed
against the State it is mixed into (mypy refuses ``self: State`` in a class
that State derives from, and a Protocol would repeat every signature), while a
function ``f(state: State, ...)`` is checked under ``--strict`` against the
whole State, every other seam's methods included. Bound in the class body,
each is an ordinary method at run time: callers (the API, the loop,
reconcile, tests) see one object with the same names and signatures, the hot
path pays no extra call, and no seam imports another — each reaches the
others through ``state``, as the methods did through ``self``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from schedd.config import Settings
from schedd.core.cluster import Cluster
from schedd.core.context import Reservation
from schedd.core.model import FinishReason, Job, JobState, Shape
from schedd.core.scheduler import Pipeline
from schedd.core.usage import UsageLedger
from schedd.daemon import accounting, admission, arrays, commands, plans
from schedd.daemon.active import PREPARING, Active, Outbox
from schedd.daemon.fleet import Fleet
from schedd.daemon.occupied import Occupied
from schedd.daemon.records import JobRecord, core_job
from schedd.store import EventRow, JobRow, Store

__all__ = ["PREPARING", "Active", "Outbox", "State"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobRecord)


@dataclass(slots=True)
class Counters:
    """What /metrics exports beyond gauges derived from the state."""

    submitted: int = 0
    started: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    #: Drained by /metrics; bounded so a daemon nobody scrapes does not grow.
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


class State:
    """See the module docstring."""

    def __init__(self, settings: Settings, pipeline: Pipeline, store: Store | None, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.clock = clock
        self.queues = settings.queue_defs()
        self.qos = settings.qos_defs()
        self.jobs: dict[str, JobRecord] = {}
        self.pending: dict[str, Job] = {}  # QUEUED jobs, for the cycle
        self.active: dict[str, Active] = {}
        self.occupied = Occupied()  # the cycle's view of what self.active holds
        self.dependents: dict[str, set[str]] = {}
        self.array_running: dict[str, int] = {}
        self.array_left: dict[str, int] = {}  # per array parent: subjobs not finished
        #: (node sizes, a Cluster of them, shape -> can ever fit), for submissions.
        self._fits_cache: tuple[frozenset[tuple[int, int, int]], Cluster | None, dict[Shape, bool]] = (frozenset(), None, {})
        self.begin: list[tuple[float, str]] = []  # (eligible time, id) of W jobs
        self.array_limited: list[str] = []  # subjobs the last snapshot left out (%max)
        self.finished_ids: deque[str] = deque()
        self.keep_finished = 100_000
        self.fleet = Fleet()
        self.reservations: dict[str, Reservation] = {}
        #: The policy that reads usage (fair-share), if any: the API's /usage reports its factors.
        self.fairshare = pipeline.usage_policy
        self.ledger = UsageLedger.for_policy(pipeline.usage_policy)  # the same code path and defaults as the simulator
        self.number = 0
        self.order = 0
        self.counters = Counters()
        self.wake: Callable[[], None] = lambda: None
        #: Called once when a job finishes (the API's long-poll ``/wait``).
        self.finish_listeners: dict[str, list[Callable[[], None]]] = {}

    # ------------------------------------------------------------ persistence

    def _save(self, rec: JobRecord, kind: str | None = None, **data: object) -> None:
        if self.store is None:
            return
        finished = rec.state == JobState.FINISHED.value
        self.store.put_jobs([JobRow(rec.id, rec.order, rec.state, rec.owner, rec.account, rec.queue,
                                    rec.submit_time, rec.end_time if finished else None, _encoder.encode(rec))])
        if kind is not None:
            self.store.add_events([EventRow(rec.id, self.clock(), kind, _encoder.encode(data))])

    def load(self, rows: Iterable[JobRow]) -> None:
        """Rebuild from the store's non-terminal jobs after a restart."""
        recs = [_decoder.decode(r.data) for r in rows]
        for rec in recs:
            self.jobs[rec.id] = rec
            self.number = max(self.number, rec.number)
            self.order = max(self.order, rec.order)
        meta = self.store.get_meta("number") if self.store else None
        self.number = max(self.number, int(meta or 0))
        for rec in recs:
            if rec.parent is not None and rec.job_state is not JobState.FINISHED:
                self.array_left[rec.parent] = self.array_left.get(rec.parent, 0) + 1
            for d in rec.depend:
                for i in d.ids:
                    self.dependents.setdefault(i, set()).add(rec.id)
            st = rec.job_state
            if st is JobState.QUEUED:
                self.pending[rec.id] = core_job(rec)
            elif st is JobState.WAITING and rec.eligible_time is not None:
                heapq.heappush(self.begin, (rec.eligible_time, rec.id))
            elif st in (JobState.RUNNING, JobState.EXITING):
                self._activate(rec, rec.start_time or self.clock())
                if st is JobState.EXITING:
                    self.active[rec.id].finish = FinishReason.CANCELLED

    def lookup(self, job_id: str) -> JobRecord | None:
        """A job in memory, else a finished one from the store."""
        rec = self.jobs.get(job_id)
        if rec is None and self.store is not None:
            rows = self.store.load_jobs(ids=[job_id])
            rec = _decoder.decode(rows[0].data) if rows else None
        return rec

    def forget(self, ids: Iterable[str]) -> None:
        """Drop finished jobs the store no longer has (the history pruned them:
        :mod:`schedd.daemon.housekeeping`) from every index, so that memory
        follows the history window, not the daemon's age. O(len(ids))."""
        for job_id in ids:
            rec = self.jobs.get(job_id)
            if rec is not None and rec.job_state is JobState.FINISHED:
                del self.jobs[job_id]
            self.dependents.pop(job_id, None)
            self.array_left.pop(job_id, None)  # a finished array parent's counters (0 by now)
            self.array_running.pop(job_id, None)
        finished = self.finished_ids
        while finished and finished[0] not in self.jobs:  # in end order, as pruning goes
            finished.popleft()

    # ------------------------------------------------------------ admission

    validate = admission.validate
    check_admission = admission.check_admission
    submit = admission.submit
    _settle = admission.settle

    # ------------------------------------------------------------ arrays

    _members = arrays.members
    _refresh_parent = arrays.refresh_parent
    _subjob_moved = arrays.subjob_moved
    _subjob_finished = arrays.subjob_finished
    _eligible = arrays.eligible

    # ------------------------------------------------------------ user commands

    owned = commands.owned
    cancel = commands.cancel
    purge = commands.purge
    hold = commands.hold
    release = commands.release
    signal = commands.signal
    requeue = commands.requeue
    alter = commands.alter

    # ------------------------------------------------------------ the cycle and its plans

    snapshot = plans.snapshot
    next_begin = plans.next_begin
    apply = plans.apply
    busy_gpus = plans.busy_gpus
    _activate = plans.activate

    # ------------------------------------------------------------ endings

    kill_ranks = plans.kill_ranks
    release_ranks = plans.release_ranks
    rank_exited = plans.rank_exited
    started = plans.started
    preparing = plans.preparing
    resume = plans.resume
    _close = plans.close
    _finish = plans.finish
    _retire = plans.retire
    _wake_dependents = plans.wake_dependents

    # ------------------------------------------------------------ accounting

    _charge = accounting.charge
    _account = accounting.account
