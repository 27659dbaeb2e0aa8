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
"""

from __future__ import annotations

import heapq
import os
import pwd
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from schedd.core.cluster import Cluster
from schedd.core.context import Plan, Reservation, Snapshot
from schedd.daemon.deps import Verdict, verdict
from schedd.errors import InputError, JobFinished, NeverFits, PermissionDenied, UnknownJob, UnknownQueue, WrongState
from schedd.daemon.fleet import Fleet
from schedd.daemon.launch import rank_specs
from schedd.core.model import Chunk, ChunkPlacement, FinishReason, Job, JobState, Reason, Running, Shape, shape_of
from schedd.protocol import EXIT_RERUN, Exited, Kill, Launch, Signal
from schedd.daemon.records import Bounds, ChunkSpec, ExecChunk, JobRecord, SubmitRequest, check_submit, core_job, parse_array
from schedd.core.scheduler import Pipeline
from schedd.config import QueueSettings, Settings
from schedd.store import EventRow, JobRow, Store
from schedd.core.usage import UsageLedger

__all__ = ["PREPARING", "Active", "Outbox", "State"]

#: Start of the comment of a running job whose environment is being prepared.
PREPARING = "Preparing: "

#: Messages to send once the store has committed: (node name, message).
Outbox = list[tuple[str, msgspec.Struct]]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobRecord)
PENDING = (JobState.QUEUED, JobState.WAITING, JobState.HELD)


@dataclass(slots=True)
class Active:
    """A job holding nodes: RUNNING, or EXITING while its ranks are being killed."""

    running: Running
    exits: list[Exited | None]
    finish: FinishReason | None = None  # decided by a kill (cancel, preempt, node fail)
    requeue: bool = False  # back to Q when every rank has exited
    gpu_util_sum: float = 0.0
    gpu_util_n: int = 0
    #: A gang's ranks 1.. wait here until rank 0 has started the job's output
    #: afresh (said it started or is preparing): see :meth:`State.release_ranks`
    held: list[tuple[str, Launch]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(e is not None for e in self.exits)

    def is_held(self, rank: int) -> bool:
        return any(launch.rank == rank for _, launch in self.held)


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

    # ------------------------------------------------------------ submission

    def validate(self, req: SubmitRequest, user: str, privileged: bool = False) -> tuple[str, float, list[ChunkSpec]]:
        """Every check of a submission, with no side effect: (queue, walltime, chunks)."""
        check_submit(req)
        if req.nice < 0 and not privileged:
            raise PermissionDenied(f"nice: {req.nice}: only operators may give a negative nice (a priority boost)")
        qname = req.queue or self.settings.default_queue
        qs = self._queue(qname)
        walltime = req.walltime_s if req.walltime_s is not None else qs.default_walltime_s
        chunks = [c.resolve(qs.default_chunk) for c in req.chunks] if req.chunks is not None else [qs.default_chunk]
        self.check_admission(user, qname, walltime, chunks)
        if req.array:
            parse_array(req.array, self.settings.max_array_size)
        if req.qos and req.qos not in self.settings.qos:
            raise InputError(f"qos: unknown QoS {req.qos!r}")
        for d in req.depend:
            for i in d.ids:
                if self.lookup(i) is None:
                    raise UnknownJob(f"depend: unknown job {i}")
        return qname, walltime, chunks

    def check_admission(self, owner: str, qname: str, walltime_s: float, chunks: list[ChunkSpec]) -> None:
        """What a job must meet to be in queue ``qname``: its users, its and the
        server's walltime limits, a request some node can hold. One check for a
        submission and for every alteration (qalter -q, -l walltime), so that
        moving a job can never reach what submitting it could not."""
        qs = self._queue(qname)
        if qs.allowed_users and owner not in qs.allowed_users:
            raise PermissionDenied(f"user {owner!r} may not submit to queue {qname!r}")
        if not 0 < walltime_s < float("inf"):
            raise InputError(f"walltime_s: {walltime_s:g}: must be > 0 and finite")
        if qs.max_walltime_s is not None and walltime_s > qs.max_walltime_s:
            raise InputError(f"walltime_s: {walltime_s:g} s is over queue {qname!r}'s maximum of {qs.max_walltime_s:g} s")
        if walltime_s > self.settings.max_walltime_s:
            raise InputError(f"walltime_s: {walltime_s:g} s is over the server's max_walltime_s of "
                             f"{self.settings.max_walltime_s:g} s")
        self._check_fits(chunks)

    def _queue(self, qname: str) -> QueueSettings:
        qs = self.settings.queues.get(qname)
        if qs is None:
            raise UnknownQueue(f"unknown queue {qname!r}; queues are: {', '.join(sorted(self.settings.queues))}")
        return qs

    def submit(self, req: SubmitRequest, user: str, checked: tuple[str, float, list[ChunkSpec]] | None = None,
               privileged: bool = False) -> JobRecord:
        """Validate (unless ``checked`` is :meth:`validate`'s answer) and queue one
        job (or an array); returns the job (or the parent)."""
        qname, walltime, chunks = checked or self.validate(req, user, privileged)
        workdir = req.workdir or _home(user)
        name = req.name or (os.path.basename(req.argv[0]) if req.argv else "STDIN")
        self.number += 1
        now = self.clock()
        rec = JobRecord(
            id=str(self.number), number=self.number, order=self._next_order(), name=name, owner=user,
            account=req.account or "default", queue=qname, chunks=chunks, walltime_s=walltime,
            submit_time=now, workdir=workdir, stdout_path="", stderr_path="", qos=req.qos,
            priority=req.priority, nice=req.nice, script=req.script, argv=req.argv, shell=req.shell,
            env=req.env, join=req.join, depend=req.depend, holds="u" if req.hold else "",
            eligible_time=req.eligible_time, rerunnable=req.rerunnable, warn_signal=req.warn_signal,
            warn_before_s=req.warn_before_s, env_spec=req.env_spec, env_hash=req.env_hash, container=req.container,
        )
        if self.store is not None:
            self.store.put_meta("number", str(self.number))
        if req.array:
            spec = parse_array(req.array)
            rec.id, rec.array = f"{rec.number}[]", spec
            self._paths(rec, req)
            self.jobs[rec.id] = rec
            self.array_left[rec.id] = len(spec.indices())
            for idx in spec.indices():
                sub = msgspec.structs.replace(rec, id=f"{rec.number}[{idx}]", order=self._next_order(),
                                              array=None, array_index=idx, parent=rec.id)
                self._paths(sub, req)
                self._admit(sub, "submit")
            self._refresh_parent(rec.id)
        else:
            self._paths(rec, req)
            self._admit(rec, "submit")
        self.counters.submitted += 1
        self.wake()
        return rec

    def _next_order(self) -> int:
        self.order += 1
        return self.order

    def _check_fits(self, chunks: list[ChunkSpec]) -> None:
        """Refuse a request no node could ever hold. The answer per shape is cached
        while the pool's node sizes stay the same (a batch of 10k jobs asks once).
        The node count is checked before the request is expanded to one entry
        per node: a gang wants distinct nodes, so more than the pool has never fits."""
        count = sum(c.count for c in chunks)
        if count > Bounds.NODES:
            raise InputError(f"chunks: {count} nodes in all, over the {Bounds.NODES} one job may ask for")
        sizes = self.fleet.sizes()
        if not sizes:
            return  # no node has registered yet: the cycle will say "Can never run" if so
        if count > len(self.fleet):
            raise NeverFits(f"the request asks for {count} nodes; the pool has {len(self.fleet)}")
        shape = shape_of(tuple(Chunk(c.ncpus, c.mem_mb, c.ngpus, c.count) for c in chunks))
        if self._fits_cache[0] != sizes:
            self._fits_cache = (sizes, Cluster([e.node for e in self.fleet], ()), {})
        _, cluster, answers = self._fits_cache
        fits = answers.get(shape)
        if fits is None and cluster is not None:
            fits = answers[shape] = cluster.can_ever_fit(shape)
        if not fits:
            nodes = [e.node for e in self.fleet]
            biggest = max(nodes, key=lambda n: (n.ngpus, n.cpus, n.mem_mb))
            raise NeverFits(
                f"the request (per node: {', '.join(f'ncpus={c} mem={m}mb ngpus={g}' for c, m, g in shape)}) "
                f"exceeds every node; the largest has ncpus={biggest.cpus} mem={biggest.mem_mb}mb ngpus={biggest.ngpus}"
            )

    def _paths(self, rec: JobRecord, req: SubmitRequest) -> None:
        """PBS's default output files: NAME.oNUMBER[.INDEX] in the submit directory.
        A path given (-o/-e) is kept as given: whether it is a directory, for the
        default name to go inside it, is asked on the node as the job's owner
        (``launch.output_names``); asked here, as root, it would tell users what
        exists in directories they cannot read."""
        suffix = f"{rec.number}" + (f".{rec.array_index}" if rec.array_index is not None else "")
        out = req.stdout_path or os.path.join(rec.workdir, f"{rec.name}.o{suffix}")
        err = req.stderr_path or os.path.join(rec.workdir, f"{rec.name}.e{suffix}")
        rec.stdout_path = out
        rec.stderr_path = out if req.join == "oe" else err
        if req.join == "eo":
            rec.stdout_path = err

    def _admit(self, rec: JobRecord, event: str) -> None:
        """Place a new or released job in H, W or Q and record it."""
        self.jobs[rec.id] = rec
        for d in rec.depend:
            for i in d.ids:
                self.dependents.setdefault(i, set()).add(rec.id)
        self._settle(rec)
        self._save(rec, event)

    def _settle(self, rec: JobRecord) -> None:
        """Decide H / W / Q for a job that is not running (no store write)."""
        self.pending.pop(rec.id, None)
        if rec.holds:
            rec.state, rec.reason = JobState.HELD.value, Reason.HELD.value
            return
        v, why = verdict(rec.depend, _Lookup(self)) if rec.depend else (Verdict.OK, "")
        if v is Verdict.NEVER:
            if self.settings.cancel_on_failed_dependency:
                rec.comment = f"cancelled: {why}"
                self._finish(rec, FinishReason.CANCELLED, None)
            else:
                rec.holds, rec.comment = "s", f"held: {why}"
                rec.state, rec.reason = JobState.HELD.value, Reason.DEPENDENCY.value
            return
        if v is Verdict.WAIT:
            rec.state, rec.reason, rec.comment = JobState.WAITING.value, Reason.DEPENDENCY.value, why
            return
        if rec.eligible_time is not None and rec.eligible_time > self.clock():
            rec.state, rec.reason = JobState.WAITING.value, Reason.BEGIN_TIME.value
            heapq.heappush(self.begin, (rec.eligible_time, rec.id))
            return
        rec.state, rec.reason, rec.comment = JobState.QUEUED.value, None, ""
        self.pending[rec.id] = core_job(rec)

    # ------------------------------------------------------------ the cycle

    def snapshot(self, now: float) -> Snapshot:
        """The cycle's input: eligible jobs, running jobs, nodes, usage."""
        self._wake_begun(now)
        pending = self._eligible()
        running = []
        for act in self.active.values():
            r = act.running
            if r.end_by < now:  # overdue: being killed by its agent; not free before then
                r.end_by = now + self.settings.kill_delay_s
            running.append(r)
        usage = self.ledger.at(now)
        return Snapshot(now, pending, running, self.fleet.schedulable(), self.queues, self.qos, usage,
                        None, self.reservations)

    def _eligible(self) -> list[Job]:
        """Queued jobs, less subjobs over their array's ``%max`` running."""
        quota: dict[str, int] = {}
        self.array_limited = []
        out = []
        for j in self.pending.values():
            if j.array_index is not None:
                parent = self.jobs[j.id].parent or ""
                spec = self.jobs[parent].array
                if spec is not None and spec.max_running is not None:
                    left = quota.get(parent, spec.max_running - self.array_running.get(parent, 0))
                    quota[parent] = left - 1
                    if left <= 0:
                        self.array_limited.append(j.id)
                        continue
            out.append(j)
        return out

    def _wake_begun(self, now: float) -> None:
        while self.begin and self.begin[0][0] <= now:
            _, jid = heapq.heappop(self.begin)
            rec = self.jobs.get(jid)
            if rec is not None and rec.job_state is JobState.WAITING and rec.reason == Reason.BEGIN_TIME.value:
                self._settle(rec)
                self._save(rec, "eligible")

    def next_begin(self) -> float | None:
        return self.begin[0][0] if self.begin else None

    def apply(self, plan: Plan, now: float) -> Outbox:
        """Carry out a Plan: start jobs, mark victims, store reasons and reservations."""
        out: Outbox = []
        for job, placement in plan.starts:
            rec = self.jobs[job.id]
            rec.exec_nodes = [ExecChunk(c.node, c.ncpus, c.mem_mb, list(c.gpus)) for c in placement]
            rec.state, rec.reason, rec.planned_start, rec.comment = JobState.RUNNING.value, None, None, ""
            rec.start_time = now
            del self.pending[job.id]
            self._activate(rec, now)
            self.counters.started += 1
            self.counters.waits.append(now - rec.submit_time)
            self._save(rec, "start", nodes=[c.node for c in placement], attempt=rec.attempt)
            addrs = {c.node: self.fleet.nodes[c.node].address for c in placement}
            launches = [(spec.nodes[rank], Launch(rec.id, rec.attempt, rank, spec))
                        for rank, spec in enumerate(rank_specs(rec, self.settings.server_name, addrs,
                                                               self.settings.kill_delay_s))]
            out.append(launches[0])
            self.active[rec.id].held = launches[1:]
            self._subjob_moved(rec)
        for p in plan.preemptions:
            act = self.active[p.victim]
            rec = self.jobs[p.victim]
            act.running.preempted_for = p.for_job
            act.running.end_by = min(act.running.end_by, now + p.grace_s)
            requeue = p.mode == "requeue" and rec.rerunnable
            rec.comment = f"preempted for {p.for_job}"
            self._save(rec, "preempt", for_job=p.for_job, mode=p.mode)
            out += self.kill_ranks(act, FinishReason.PREEMPTED, requeue, p.grace_s)
        self.reservations = plan.reservations
        for jid, job in self.pending.items():
            rec = self.jobs[jid]
            rec.reason = plan.reason(jid).value
            res = plan.reservations.get(jid)
            rec.planned_start = res.start if res is not None else None
        for jid in self.array_limited:
            self.jobs[jid].reason = "JobArrayTaskLimit"
        return out

    def busy_gpus(self) -> set[tuple[str, int]]:
        """(node, GPU index) held by a running job. O(running ranks); for the API, not the cycle."""
        return {(cp.node, g) for a in self.active.values() for cp in a.running.placement for g in cp.gpus}

    def _activate(self, rec: JobRecord, start: float) -> None:
        placement = tuple(ChunkPlacement(c.node, c.ncpus, c.mem_mb, tuple(c.gpus)) for c in rec.exec_nodes)
        job = core_job(rec)
        job.state = JobState.RUNNING
        self.active[rec.id] = Active(Running(job, placement, start, start + rec.walltime_s), [None] * len(placement))
        if rec.parent is not None:
            self.array_running[rec.parent] = self.array_running.get(rec.parent, 0) + 1

    # ------------------------------------------------------------ endings

    def kill_ranks(self, act: Active, finish: FinishReason | None, requeue: bool, delay_s: float) -> Outbox:
        """Kill every live rank; the job ends when all have reported their exit.
        Ranks still held back were never launched: they end here, unstarted."""
        rec = self.jobs[act.running.job.id]
        act.finish = act.finish or finish
        act.requeue = act.requeue or requeue
        rec.state = JobState.EXITING.value
        status = EXIT_RERUN if act.requeue else None
        self._drop_held(act, rec)
        out: Outbox = []
        for rank, cp in enumerate(act.running.placement):
            if act.exits[rank] is None:
                out.append((cp.node, Kill(rec.id, rec.attempt, rank, delay_s, status)))
        return out

    def release_ranks(self, job_id: str, attempt: int) -> Outbox:
        """Rank 0 of a gang has started the job's output files afresh: launch the
        other ranks now. They append to those files; had they been launched with
        rank 0, one rank's truncation could erase another's first lines on a
        shared filesystem (issue #15). Costs the gang one agent round trip."""
        act, rec = self.active.get(job_id), self.jobs.get(job_id)
        if act is None or rec is None or rec.attempt != attempt or not act.held:
            return []
        held, act.held = act.held, []
        return [(node, launch) for node, launch in held if act.exits[launch.rank] is None]

    def _drop_held(self, act: Active, rec: JobRecord) -> None:
        """The gang ends before rank 0 started it: its held ranks end unstarted."""
        now = self.clock()
        for _, launch in act.held:
            if act.exits[launch.rank] is None:
                act.exits[launch.rank] = Exited(rec.id, rec.attempt, launch.rank, EXIT_RERUN if act.requeue else 256 + 9,
                                                "killed", now, now, comment="not started: the gang ended first")
        act.held = []

    def rank_exited(self, msg: Exited) -> Outbox:
        """An agent reported a rank's end. Stale reports (an older attempt) are ignored."""
        act = self.active.get(msg.job_id)
        rec = self.jobs.get(msg.job_id)
        if act is None or rec is None or rec.attempt != msg.attempt or act.exits[msg.rank] is not None:
            if rec is not None and msg.attempt < rec.attempt:  # its attempt was requeued and rerun: history only
                self._save(rec, "late_exit", attempt=msg.attempt, rank=msg.rank, exit_status=msg.status, how=msg.how)
            return []
        act.exits[msg.rank] = msg
        out: Outbox = []
        if msg.rank == 0 and act.held and msg.how != "launch_failed":  # it ran (its Started was lost): go on
            out += self.release_ranks(rec.id, rec.attempt)
        if not act.done and msg.status != 0 and rec.job_state is JobState.RUNNING:
            # A gang is all or nothing: one failed rank ends the others.
            out += self.kill_ranks(act, None, False, self.settings.kill_delay_s)
        if act.done:
            self._close(rec, act)
        return out

    def _close(self, rec: JobRecord, act: Active) -> None:
        """Every rank has exited: requeue, or finish with the job's exit status."""
        now = self.clock()
        del self.active[rec.id]
        if rec.parent is not None:
            self.array_running[rec.parent] -= 1
        exits = [e for e in act.exits if e is not None]
        self._charge(rec, act, rec.start_time or now, now, 1.0)
        rec.used.peak_rss_mb = max([rec.used.peak_rss_mb, *(e.peak_rss_mb for e in exits)])
        if act.gpu_util_n:
            rec.used.gpu_util_pct = act.gpu_util_sum / act.gpu_util_n
        if act.requeue:
            rec.attempt += 1
            rec.exec_nodes, rec.start_time = [], None
            why = rec.comment
            self._settle(rec)
            rec.comment = f"requeued: {why}" if why else "requeued"
            self._save(rec, "requeue", attempt=rec.attempt)
        else:
            first = exits[0]
            # The first rank to fail is the cause; the others were killed for it.
            failed = min((e for e in exits if e.status != 0), key=lambda e: e.end_time, default=None)
            status = (failed or first).status
            how = (failed or first).how
            reason = act.finish or _reason_of(status, how)
            if failed is not None and failed.comment:
                rec.comment = failed.comment
            self._finish(rec, reason, status)
        self._subjob_moved(rec)
        self.wake()

    def _charge(self, rec: JobRecord, act: Active, start: float, end: float, sign: float) -> None:
        """Charge the job and its fair share for an attempt's run (``sign`` -1 takes it back)."""
        elapsed = max(0.0, end - start)
        rec.used.cpu_s += sign * sum(e.cpu_s for e in act.exits if e is not None)
        rec.used.gpu_s += sign * rec.ngpus * elapsed
        self.ledger.charge_run(act.running.job, sign * elapsed, end)

    def resume(self, act: Active, attempt: int, ranks: frozenset[int]) -> bool:
        """Take back an attempt requeued when its node went silent, now that the
        node's agent is back and still runs (or has finished) its ``ranks``:
        running it again would run it twice. Only while the job waits for its
        next attempt; once that started, the old one's reports are stale."""
        rec = self.jobs.get(act.running.job.id)
        if rec is None or rec.job_state not in PENDING or rec.attempt != attempt + 1 or rec.id in self.active:
            return False
        lost_at = max(e.end_time for r, e in enumerate(act.exits) if r in ranks and e is not None)
        self._charge(rec, act, act.running.start_time, lost_at, -1.0)  # charged in full when it ends
        for rank in ranks:
            act.exits[rank] = None
        act.requeue, act.finish = False, None
        self.pending.pop(rec.id, None)
        rec.attempt, rec.start_time = attempt, act.running.start_time
        rec.exec_nodes = [ExecChunk(c.node, c.ncpus, c.mem_mb, list(c.gpus)) for c in act.running.placement]
        rec.state, rec.reason, rec.planned_start, rec.comment = JobState.RUNNING.value, None, None, ""
        self.active[rec.id] = act
        if rec.parent is not None:
            self.array_running[rec.parent] = self.array_running.get(rec.parent, 0) + 1
        self._save(rec, "resume", attempt=attempt, ranks=sorted(ranks))
        self._subjob_moved(rec)
        self.wake()
        return True

    def _finish(self, rec: JobRecord, reason: FinishReason, status: int | None) -> None:
        rec.state, rec.reason, rec.planned_start = JobState.FINISHED.value, None, None
        rec.finish_reason, rec.exit_status, rec.end_time = reason.value, status, self.clock()
        self.pending.pop(rec.id, None)
        self.counters.finished[reason.value] = self.counters.finished.get(reason.value, 0) + 1
        self._save(rec, "end", reason=reason.value, exit_status=status)
        self._retire(rec)
        for listener in self.finish_listeners.pop(rec.id, ()):
            listener()
        self._wake_dependents(rec.id)
        if rec.parent is not None:
            self._subjob_finished(rec)

    def _retire(self, rec: JobRecord) -> None:
        self.finished_ids.append(rec.id)
        while len(self.finished_ids) > self.keep_finished:
            old = self.finished_ids.popleft()
            gone = self.jobs.get(old)
            if gone is not None and gone.job_state is JobState.FINISHED:
                del self.jobs[old]

    def _wake_dependents(self, job_id: str) -> None:
        for dep in sorted(self.dependents.get(job_id, ())):
            rec = self.jobs.get(dep)
            if rec is not None and rec.job_state is JobState.WAITING and rec.reason == Reason.DEPENDENCY.value:
                self._settle(rec)
                if rec.state != JobState.FINISHED.value:  # else _finish saved it
                    self._save(rec, "dependency")

    def started(self, job_id: str, attempt: int, rank: int = 0) -> Outbox:
        """A rank started: ``after`` dependents may go; a preparing comment goes;
        rank 0's start launches the rest of its gang."""
        rec = self.jobs.get(job_id)
        if rec is None or rec.attempt != attempt:
            return []
        if rec.comment.startswith(PREPARING):
            rec.comment = ""
            self._save(rec)
        self._wake_dependents(job_id)
        return self.release_ranks(job_id, attempt) if rank == 0 else []

    def preparing(self, job_id: str, attempt: int, comment: str, rank: int = 0) -> Outbox:
        """A rank's environment is being prepared: say so in the running job's
        comment. Rank 0 prepares after starting the output: its gang may go."""
        rec = self.jobs.get(job_id)
        if rec is None or rec.attempt != attempt or rec.job_state is not JobState.RUNNING:
            return []
        rec.comment = f"{PREPARING}{comment[:300]}"
        self._save(rec, "preparing", comment=rec.comment)
        return self.release_ranks(job_id, attempt) if rank == 0 else []

    def _refresh_parent(self, parent_id: str | None) -> None:
        """An array parent shows its subjobs' state: R while any runs, else the
        earliest of Q, W, H. O(subjobs): for user actions on an array; the
        frequent transitions (a subjob starts, ends) use :meth:`_subjob_moved`."""
        parent = self.jobs.get(parent_id) if parent_id is not None else None
        if parent is None or parent.array is None or parent.job_state is JobState.FINISHED:
            return
        subs = (self.jobs.get(f"{parent.number}[{i}]") for i in parent.array.indices())
        states = {s.job_state for s in subs if s is not None} - {JobState.FINISHED}
        old = parent.state
        if JobState.RUNNING in states or JobState.EXITING in states:
            parent.state = JobState.RUNNING.value
        elif states:
            parent.state = min(states, key=lambda s: "QWH".find(s.letter)).value
        if parent.state != old:
            self._save(parent, "array")

    def _subjob_moved(self, sub: JobRecord) -> None:
        """O(1) upkeep of an array parent when one of its subjobs starts or ends."""
        parent = self.jobs.get(sub.parent) if sub.parent is not None else None
        if parent is None or parent.job_state is JobState.FINISHED:
            return
        old = parent.state
        if self.array_running.get(parent.id, 0) > 0:
            parent.state = JobState.RUNNING.value
            parent.start_time = parent.start_time or self.clock()
        elif parent.state == JobState.RUNNING.value:
            parent.state = JobState.QUEUED.value  # nothing runs now; the rest wait
        if parent.state != old:
            self._save(parent, "array")

    def _subjob_finished(self, sub: JobRecord) -> None:
        """Count a finished subjob; the last one finishes the parent.

        A failed subjob marks the parent's exit status at once (1, as PBS
        reports a failed array), so the verdict survives a restart."""
        parent = self.jobs.get(sub.parent) if sub.parent is not None else None
        if parent is None or parent.job_state is JobState.FINISHED:
            return
        if sub.exit_status not in (0, None) and parent.exit_status is None:
            parent.exit_status = 1
            self._save(parent)
        left = self.array_left[parent.id] = self.array_left.get(parent.id, 1) - 1
        if left > 0:
            return
        failed = parent.exit_status == 1
        parent.exit_status = 1 if failed else 0
        parent.state, parent.end_time = JobState.FINISHED.value, self.clock()
        parent.finish_reason = (FinishReason.FAILED if failed else FinishReason.COMPLETED).value
        self._save(parent, "end", reason=parent.finish_reason, exit_status=parent.exit_status)
        self._retire(parent)
        self._wake_dependents(parent.id)

    # ------------------------------------------------------------ user actions

    def owned(self, job_id: str, user: str, privileged: bool) -> JobRecord:
        rec = self.lookup(job_id)
        if rec is None:
            raise UnknownJob(f"Unknown Job Id {job_id}")
        if not privileged and rec.owner != user:
            raise PermissionDenied(f"Unauthorized Request: job {job_id} belongs to {rec.owner}")
        return rec

    def _members(self, rec: JobRecord) -> list[JobRecord]:
        if rec.array is None:
            return [rec]
        subs = (self.jobs.get(f"{rec.number}[{i}]") for i in rec.array.indices())
        return [s for s in subs if s is not None]

    def cancel(self, job_id: str, user: str, privileged: bool, force: bool = False) -> Outbox:
        """qdel. ``force`` (qdel -W force) ends a running job at once, without
        waiting for its agent to confirm the kill (e.g. its node is gone)."""
        rec = self.owned(job_id, user, privileged)
        if rec.job_state is JobState.FINISHED:
            raise JobFinished(f"Job has finished {job_id}")
        out: Outbox = []
        for sub in self._members(rec):
            if sub.job_state in PENDING:
                sub.comment = f"cancelled by {user}"
                self._finish(sub, FinishReason.CANCELLED, None)
            elif sub.id in self.active:
                act = self.active[sub.id]
                self._save(sub, "cancel", by=user, force=force)
                out += self.kill_ranks(act, FinishReason.CANCELLED, False, self.settings.kill_delay_s)
                if force:
                    now = self.clock()
                    for rank, e in enumerate(act.exits):
                        if e is None:
                            act.exits[rank] = Exited(sub.id, sub.attempt, rank, 256 + 9, "killed", now, now,
                                                     comment=f"deleted with -W force by {user}")
                    self._close(sub, act)
        self._refresh_parent(rec.id if rec.array is not None else rec.parent)
        self.wake()
        return out

    def purge(self, job_id: str, user: str, privileged: bool) -> None:
        """qdel -x of a finished job: forget it, history included."""
        rec = self.owned(job_id, user, privileged)
        if rec.job_state is not JobState.FINISHED:
            raise _bad_state(rec, job_id)
        ids = [m.id for m in self._members(rec)] + ([rec.id] if rec.array is not None else [])
        for i in ids:
            self.jobs.pop(i, None)
        if self.store is not None:
            self.store.delete_jobs(ids)

    def hold(self, job_id: str, types: str, user: str, privileged: bool) -> None:
        rec = self.owned(job_id, user, privileged)
        _check_hold_types(types, privileged)
        for sub in self._members(rec):
            if sub.job_state not in PENDING:
                if rec.array is None:
                    raise _bad_state(rec, job_id)
                continue
            sub.holds = "".join(sorted(set(sub.holds) | set(types)))
            self._settle(sub)
            self._save(sub, "hold", types=types, by=user)
        self._refresh_parent(rec.id if rec.array is not None else rec.parent)

    def release(self, job_id: str, types: str, user: str, privileged: bool) -> None:
        rec = self.owned(job_id, user, privileged)
        _check_hold_types(types, privileged)
        if rec.array is None and rec.job_state is not JobState.HELD:
            raise _bad_state(rec, job_id)
        for sub in self._members(rec):
            if sub.job_state is not JobState.HELD:
                continue
            sub.holds = "".join(sorted(set(sub.holds) - set(types)))
            self._settle(sub)
            self._save(sub, "release", types=types, by=user)
        self._refresh_parent(rec.id if rec.array is not None else rec.parent)
        self.wake()

    def signal(self, job_id: str, sig: str, user: str, privileged: bool) -> Outbox:
        rec = self.owned(job_id, user, privileged)
        out: Outbox = []
        for sub in self._members(rec):
            act = self.active.get(sub.id)
            if act is None:
                if rec.array is None:
                    raise _bad_state(rec, job_id)
                continue
            for rank, cp in enumerate(act.running.placement):
                out.append((cp.node, Signal(sub.id, sub.attempt, rank, sig)))
        return out

    def requeue(self, job_id: str, user: str, privileged: bool) -> Outbox:
        rec = self.owned(job_id, user, privileged)
        act = self.active.get(rec.id)
        if act is None or rec.job_state is not JobState.RUNNING:
            raise _bad_state(rec, job_id)
        if not rec.rerunnable:
            raise WrongState(f"job {job_id} is not rerunnable (-r n)")
        self._save(rec, "rerun", by=user)
        return self.kill_ranks(act, None, True, self.settings.kill_delay_s)

    def alter(self, job_id: str, changes: dict[str, object], user: str, privileged: bool) -> JobRecord:
        """Change walltime, priority, name or queue of a job that has not started.

        The job as altered must pass :meth:`check_admission`, as a submission
        does, and nothing changes unless every change is allowed. An array's
        changes reach its pending subjobs too: they are what runs."""
        rec = self.owned(job_id, user, privileged)
        if rec.job_state not in PENDING:
            raise _bad_state(rec, job_id)
        fields = _alterations(changes)
        queue = str(fields.get("queue", rec.queue))
        if queue not in self.settings.queues:  # qalter's own words (PBS: "Unknown queue")
            raise UnknownQueue(f"unknown queue {queue!r}")
        walltime = float(fields.get("walltime_s", rec.walltime_s))  # type: ignore[arg-type]
        if not privileged and walltime > rec.walltime_s:
            raise PermissionDenied("walltime_s: users may only lower their walltime")
        self.check_admission(rec.owner, queue, walltime, rec.chunks)
        subjobs = [m for m in self._members(rec) if m.job_state in PENDING] if rec.array is not None else []
        for target in (rec, *subjobs):
            for key, value in fields.items():
                setattr(target, key, value)
            if target.array is None:
                self._settle(target)
            self._save(target, "alter", **changes)
        self._refresh_parent(rec.id if rec.array is not None else None)
        self.wake()
        return rec


def _alterations(changes: dict[str, object]) -> dict[str, object]:
    """The record fields ``changes`` set, each checked for its type and range
    (the API's AlterBody has checked them already; other callers have not)."""
    out: dict[str, object] = {}
    for key, value in changes.items():
        if key == "walltime_s" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            out[key] = float(value)
        elif key == "priority" and isinstance(value, int) and not isinstance(value, bool) and -1024 <= value <= 1023:
            out[key] = value
        elif key == "name" and isinstance(value, str) and value and len(value) <= Bounds.NAME \
                and value.isprintable() and "/" not in value:
            out[key] = value
        elif key == "queue" and isinstance(value, str):
            out[key] = value
        else:
            raise InputError(f"{key}: cannot alter to {value!r} (walltime_s > 0, priority -1024..1023, name, queue)")
    return out


class _Lookup:
    """A Mapping-like view for :func:`schedd.daemon.deps.verdict` that falls back to the store."""

    def __init__(self, state: State) -> None:
        self.state = state

    def get(self, key: str, /) -> JobRecord | None:
        return self.state.lookup(key)


def _bad_state(rec: JobRecord, job_id: str) -> WrongState:
    """PBS's answer to a request the job's state does not allow (168, or 35 when finished)."""
    if rec.job_state is JobState.FINISHED:
        return JobFinished(f"Job has finished {job_id}")
    return WrongState(f"Request invalid for state of job {job_id}")


def _reason_of(status: int, how: str) -> FinishReason:
    if how == "walltime":
        return FinishReason.TIMEOUT
    if how == "memory":
        return FinishReason.OUT_OF_MEMORY
    return FinishReason.COMPLETED if status == 0 else FinishReason.FAILED


def _check_hold_types(types: str, privileged: bool) -> None:
    if not types or set(types) - set("uos"):
        raise InputError(f"hold types: {types!r}: expected some of u, o, s")
    if not privileged and set(types) - {"u"}:
        raise PermissionDenied("only operators may set or release o and s holds")


def _home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return "/tmp"
