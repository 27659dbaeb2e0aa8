"""Plan application: the cycle's input (:func:`snapshot`), carrying out its Plan
(:func:`apply`: starts, launches, preemptions, reasons), and every way a
running job ends — its ranks killed or exited, the job closed, requeued,
resumed or finished, its dependents woken.

A part of :class:`schedd.daemon.state.State` (functions bound as its methods;
see ``state.py``). Messages to agents are returned, never sent from here.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from schedd.core.context import Plan, Snapshot
from schedd.core.model import ChunkPlacement, FinishReason, Job, JobState, Placement, Reason, Running
from schedd.daemon.active import PENDING, PREPARING, Active, Outbox
from schedd.daemon.launch import rank_specs
from schedd.daemon.records import ExecChunk, JobRecord, core_job
from schedd.protocol import EXIT_RERUN, Exited, Kill, Launch

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["activate", "apply", "busy_gpus", "close", "finish", "kill_ranks", "next_begin", "preparing",
           "rank_exited", "release_ranks", "resume", "retire", "snapshot", "started", "wake_dependents"]


def snapshot(state: State, now: float) -> Snapshot:
    """The cycle's input: eligible jobs, running jobs, nodes, usage."""
    _wake_begun(state, now)
    pending = state._eligible()
    running = []
    for act in state.active.values():
        r = act.running
        if r.end_by < now:  # overdue: being killed by its agent; not free before then
            r.end_by = now + state.settings.kill_delay_s
            state.occupied.moved(r)
        running.append(r)
    usage = state.ledger.at(now)
    nodes = state.fleet.schedulable()
    return Snapshot(now, pending, running, nodes, state.queues, state.qos, usage,
                    state.occupied.of(nodes, running), state.reservations)


def _wake_begun(state: State, now: float) -> None:
    while state.begin and state.begin[0][0] <= now:
        _, jid = heapq.heappop(state.begin)
        rec = state.jobs.get(jid)
        if rec is not None and rec.job_state is JobState.WAITING and rec.reason == Reason.BEGIN_TIME.value:
            state._settle(rec)
            state._save(rec, "eligible")


def next_begin(state: State) -> float | None:
    return state.begin[0][0] if state.begin else None


def apply(state: State, plan: Plan, now: float) -> Outbox:
    """Carry out a Plan: start jobs, mark victims, store reasons and reservations."""
    out: Outbox = []
    for job, placement in plan.starts:
        rec = state.jobs[job.id]
        rec.exec_nodes = [ExecChunk(c.node, c.ncpus, c.mem_mb, list(c.gpus)) for c in placement]
        rec.state, rec.reason, rec.planned_start, rec.comment = JobState.RUNNING.value, None, None, ""
        rec.start_time = now
        del state.pending[job.id]
        state._activate(rec, now, job, placement)
        state.counters.started += 1
        state.counters.waits.append(now - rec.submit_time)
        state._save(rec, "start", nodes=[c.node for c in placement], attempt=rec.attempt)
        addrs = {c.node: state.fleet.nodes[c.node].address for c in placement}
        launches = [(spec.nodes[rank], Launch(rec.id, rec.attempt, rank, spec))
                    for rank, spec in enumerate(rank_specs(rec, state.settings.server_name, addrs,
                                                           state.settings.kill_delay_s))]
        out.append(launches[0])
        state.active[rec.id].held = launches[1:]
        state._subjob_moved(rec)
    for p in plan.preemptions:
        act = state.active[p.victim]
        rec = state.jobs[p.victim]
        act.running.preempted_for = p.for_job
        act.running.end_by = min(act.running.end_by, now + p.grace_s)
        state.occupied.moved(act.running)
        requeue = p.mode == "requeue" and rec.rerunnable
        rec.comment = f"preempted for {p.for_job}"
        state._save(rec, "preempt", for_job=p.for_job, mode=p.mode)
        out += state.kill_ranks(act, FinishReason.PREEMPTED, requeue, p.grace_s)
    state.reservations = plan.reservations
    _note_reasons(state, plan)
    for jid in state.array_limited:
        state.jobs[jid].reason = "JobArrayTaskLimit"
    return out


#: Each reason's text: ``Reason.X.value`` is a property lookup through the enum
#: machinery, paid per pending job per cycle; a dict hit is a fraction of it.
_REASON_TEXT = {r: r.value for r in Reason}


def _note_reasons(state: State, plan: Plan) -> None:
    """Every pending job's reason and planned start, as the plan says (``Plan.reason``:
    a job it does not name waits on Priority). O(pending) each cycle, so kept lean."""
    jobs, reasons, reservations = state.jobs, plan.reasons, plan.reservations
    priority = _REASON_TEXT[Reason.PRIORITY]
    for jid in state.pending:
        rec = jobs[jid]
        why = reasons.get(jid)
        rec.reason = priority if why is None else _REASON_TEXT[why]
        res = reservations.get(jid)
        rec.planned_start = None if res is None else res.start


def busy_gpus(state: State) -> set[tuple[str, int]]:
    """(node, GPU index) held by a running job. O(running ranks); for the API, not the cycle."""
    return {(cp.node, g) for a in state.active.values() for cp in a.running.placement for g in cp.gpus}


def activate(state: State, rec: JobRecord, start: float, job: Job | None = None,
             placement: Placement | None = None) -> None:
    """``rec`` holds its nodes from ``start``: ``job`` and ``placement`` as the cycle
    decided them (the pending job's own object), else derived from the record."""
    if placement is None:
        placement = tuple(ChunkPlacement(c.node, c.ncpus, c.mem_mb, tuple(c.gpus)) for c in rec.exec_nodes)
    job = core_job(rec) if job is None else job
    job.state = JobState.RUNNING
    act = state.active[rec.id] = Active(Running(job, placement, start, start + rec.walltime_s), [None] * len(placement))
    state.occupied.add(act.running)
    if rec.parent is not None:
        state.array_running[rec.parent] = state.array_running.get(rec.parent, 0) + 1


def kill_ranks(state: State, act: Active, finish: FinishReason | None, requeue: bool, delay_s: float) -> Outbox:
    """Kill every live rank; the job ends when all have reported their exit.
    Ranks still held back were never launched: they end here, unstarted."""
    rec = state.jobs[act.running.job.id]
    act.finish = act.finish or finish
    act.requeue = act.requeue or requeue
    rec.state = JobState.EXITING.value
    status = EXIT_RERUN if act.requeue else None
    _drop_held(state, act, rec)
    out: Outbox = []
    for rank, cp in enumerate(act.running.placement):
        if act.exits[rank] is None:
            out.append((cp.node, Kill(rec.id, rec.attempt, rank, delay_s, status)))
    return out


def release_ranks(state: State, job_id: str, attempt: int) -> Outbox:
    """Rank 0 of a gang has started the job's output files afresh: launch the
    other ranks now. They append to those files; had they been launched with
    rank 0, one rank's truncation could erase another's first lines on a
    shared filesystem (issue #15). Costs the gang one agent round trip."""
    act, rec = state.active.get(job_id), state.jobs.get(job_id)
    if act is None or rec is None or rec.attempt != attempt or not act.held:
        return []
    held, act.held = act.held, []
    return [(node, launch) for node, launch in held if act.exits[launch.rank] is None]


def _drop_held(state: State, act: Active, rec: JobRecord) -> None:
    """The gang ends before rank 0 started it: its held ranks end unstarted."""
    now = state.clock()
    for _, launch in act.held:
        if act.exits[launch.rank] is None:
            act.exits[launch.rank] = Exited(rec.id, rec.attempt, launch.rank, EXIT_RERUN if act.requeue else 256 + 9,
                                            "killed", now, now, comment="not started: the gang ended first")
    act.held = []


def rank_exited(state: State, msg: Exited) -> Outbox:
    """An agent reported a rank's end. Stale reports (an older attempt) are ignored."""
    act = state.active.get(msg.job_id)
    rec = state.jobs.get(msg.job_id)
    if act is None or rec is None or rec.attempt != msg.attempt or act.exits[msg.rank] is not None:
        if rec is not None and msg.attempt < rec.attempt:  # its attempt was requeued and rerun: history only
            state._save(rec, "late_exit", attempt=msg.attempt, rank=msg.rank, exit_status=msg.status, how=msg.how)
        return []
    act.exits[msg.rank] = msg
    out: Outbox = []
    if msg.rank == 0 and act.held and msg.how != "launch_failed":  # it ran (its Started was lost): go on
        out += state.release_ranks(rec.id, rec.attempt)
    if not act.done and msg.status != 0 and rec.job_state is JobState.RUNNING:
        # A gang is all or nothing: one failed rank ends the others.
        out += state.kill_ranks(act, None, False, state.settings.kill_delay_s)
    if act.done:
        state._close(rec, act)
    return out


def close(state: State, rec: JobRecord, act: Active) -> None:
    """Every rank has exited: requeue, or finish with the job's exit status."""
    now = state.clock()
    del state.active[rec.id]
    state.occupied.remove(rec.id)
    if rec.parent is not None:
        state.array_running[rec.parent] -= 1
    exits = [e for e in act.exits if e is not None]
    state._account(rec, act, now)
    if act.requeue:
        rec.attempt += 1
        rec.exec_nodes, rec.start_time = [], None
        why = rec.comment
        state._settle(rec)
        rec.comment = f"requeued: {why}" if why else "requeued"
        state._save(rec, "requeue", attempt=rec.attempt)
    else:
        first = exits[0]
        # The first rank to fail is the cause; the others were killed for it.
        failed = min((e for e in exits if e.status != 0), key=lambda e: e.end_time, default=None)
        status = (failed or first).status
        how = (failed or first).how
        reason = act.finish or _reason_of(status, how)
        if failed is not None and failed.comment:
            rec.comment = failed.comment
        state._finish(rec, reason, status)
    state._subjob_moved(rec)
    state.wake()


def resume(state: State, act: Active, attempt: int, ranks: frozenset[int]) -> bool:
    """Take back an attempt requeued when its node went silent, now that the
    node's agent is back and still runs (or has finished) its ``ranks``:
    running it again would run it twice. Only while the job waits for its
    next attempt; once that started, the old one's reports are stale."""
    rec = state.jobs.get(act.running.job.id)
    if rec is None or rec.job_state not in PENDING or rec.attempt != attempt + 1 or rec.id in state.active:
        return False
    lost_at = max(e.end_time for r, e in enumerate(act.exits) if r in ranks and e is not None)
    state._charge(rec, act, act.running.start_time, lost_at, -1.0)  # charged in full when it ends
    for rank in ranks:
        act.exits[rank] = None
    act.requeue, act.finish = False, None
    state.pending.pop(rec.id, None)
    rec.attempt, rec.start_time = attempt, act.running.start_time
    rec.exec_nodes = [ExecChunk(c.node, c.ncpus, c.mem_mb, list(c.gpus)) for c in act.running.placement]
    rec.state, rec.reason, rec.planned_start, rec.comment = JobState.RUNNING.value, None, None, ""
    state.active[rec.id] = act
    state.occupied.add(act.running)
    if rec.parent is not None:
        state.array_running[rec.parent] = state.array_running.get(rec.parent, 0) + 1
    state._save(rec, "resume", attempt=attempt, ranks=sorted(ranks))
    state._subjob_moved(rec)
    state.wake()
    return True


def finish(state: State, rec: JobRecord, reason: FinishReason, status: int | None) -> None:
    rec.state, rec.reason, rec.planned_start = JobState.FINISHED.value, None, None
    rec.finish_reason, rec.exit_status, rec.end_time = reason.value, status, state.clock()
    state.pending.pop(rec.id, None)
    state.counters.finished[reason.value] = state.counters.finished.get(reason.value, 0) + 1
    # The comment says why (e.g. which output file could not be opened): the events keep it too.
    extra: dict[str, object] = {"comment": rec.comment} if rec.comment else {}
    state._save(rec, "end", reason=reason.value, exit_status=status, **extra)
    state._retire(rec)
    for listener in state.finish_listeners.pop(rec.id, ()):
        listener()
    state._wake_dependents(rec.id)
    if rec.parent is not None:
        state._subjob_finished(rec)


def retire(state: State, rec: JobRecord) -> None:
    state.finished_ids.append(rec.id)
    while len(state.finished_ids) > state.keep_finished:
        old = state.finished_ids.popleft()
        gone = state.jobs.get(old)
        if gone is not None and gone.job_state is JobState.FINISHED:
            del state.jobs[old]


def wake_dependents(state: State, job_id: str) -> None:
    for dep in sorted(state.dependents.get(job_id, ())):
        rec = state.jobs.get(dep)
        if rec is not None and rec.job_state is JobState.WAITING and rec.reason == Reason.DEPENDENCY.value:
            state._settle(rec)
            if rec.state != JobState.FINISHED.value:  # else _finish saved it
                state._save(rec, "dependency")


def started(state: State, job_id: str, attempt: int, rank: int = 0) -> Outbox:
    """A rank started: ``after`` dependents may go; a preparing comment goes;
    rank 0's start launches the rest of its gang."""
    rec = state.jobs.get(job_id)
    if rec is None or rec.attempt != attempt:
        return []
    if rec.comment.startswith(PREPARING):
        rec.comment = ""
        state._save(rec)
    state._wake_dependents(job_id)
    return state.release_ranks(job_id, attempt) if rank == 0 else []


def preparing(state: State, job_id: str, attempt: int, comment: str, rank: int = 0) -> Outbox:
    """A rank's environment is being prepared: say so in the running job's
    comment. Rank 0 prepares after starting the output: its gang may go."""
    rec = state.jobs.get(job_id)
    if rec is None or rec.attempt != attempt or rec.job_state is not JobState.RUNNING:
        return []
    rec.comment = f"{PREPARING}{comment[:300]}"
    state._save(rec, "preparing", comment=rec.comment)
    return state.release_ranks(job_id, attempt) if rank == 0 else []


def _reason_of(status: int, how: str) -> FinishReason:
    if how == "walltime":
        return FinishReason.TIMEOUT
    if how == "memory":
        return FinishReason.OUT_OF_MEMORY
    return FinishReason.COMPLETED if status == 0 else FinishReason.FAILED
