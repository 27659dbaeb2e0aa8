"""What schedd does with what agents say, and with their silence.

Reconciliation on ``Register`` goes both ways: a rank the agent runs but schedd
does not know (an older attempt, a cancelled job) is killed; a rank schedd
believes runs on that node but the agent neither runs nor reports finished was
lost (the agent's machine restarted, or the Launch never arrived) and the job is
requeued — or ends NODE_FAIL when it is not rerunnable. Exits are acknowledged
only after they are applied, so an agent resends any exit schedd did not take.

A node declared DOWN for silence may only have been stopped (SIGSTOP, a paused
VM) while its jobs' supervisors went on. The attempts it took with it are
requeued, but remembered on the node; if its agent registers again before they
were restarted elsewhere, still running them or reporting them finished, they
are resumed: the job is RUNNING again, or ends with the status the agent
reports. Nothing that ran is ever run again for a silence that was only a pause.

A pool driver that watches the nodes' pods (Kubernetes) reports their life
through :func:`pod_seen` and :func:`pod_gone`. A pod deleted, evicted,
preempted or lost with its Kubernetes node ends the node's incarnation at
once, from the watch event: its ranks are warned (a Kill with the kill delay,
sent while the dying pod's agent is still connected in its grace period) and
take the agent-lost path (:func:`rank_lost`) without waiting for any heartbeat
timeout. Only what Kubernetes said ends a node; a failed lookup says nothing.
"""

from __future__ import annotations

from schedd.daemon.fleet import LostAttempt, NodeEntry, Pod, Sender
from schedd.core.model import FinishReason, JobState, NodeState
from schedd.protocol import EXIT_RERUN, Ack, Exited, Heartbeat, Kill, Register, RunningJob, Started, Welcome
from schedd.daemon.state import Active, Outbox, State

__all__ = ["check_nodes", "on_heartbeat", "on_register", "on_started", "pod_gone", "pod_seen", "rank_lost"]


def on_register(state: State, msg: Register, send: Sender, address: str) -> tuple[Welcome, Outbox]:
    """A (re)connecting agent: take its node, settle its running and finished ranks.

    Raises ValueError (the socket closes with it) for a session of an ended
    incarnation: an old pod's agent must not take back a name its successor owns.
    """
    fleet = state.fleet
    if fleet.is_retired(msg.name, msg.incarnation):
        raise ValueError(f"refused: incarnation {msg.incarnation} of node {msg.name} has ended "
                         "(its pod is gone or was replaced)")
    out: Outbox = []
    known = fleet.get(msg.name)
    if known is not None and msg.incarnation and known.incarnation not in ("", msg.incarnation) \
            and not fleet.is_retired(msg.name, known.incarnation):
        # A new pod of the same name: the old one's life ended even if no watch said so yet.
        out += _end_incarnation(state, known, "its pod was replaced by a new one of the same name", warn=False)
    now = state.clock()
    entry = fleet.register(msg, send, now, address)
    _resume_lost(state, entry, msg)
    kill: list[RunningJob] = []
    reported: set[tuple[str, int]] = set()
    for r in msg.running:
        if _expected(state, msg.name, r.job_id, r.attempt, r.rank):
            reported.add((r.job_id, r.rank))
            if r.rank == 0:  # its Started may have been lost with the old session
                out += state.release_ranks(r.job_id, r.attempt)
        else:
            kill.append(r)
    for ex in msg.finished:
        reported.add((ex.job_id, ex.rank))
        out += state.rank_exited(ex)
        out.append((msg.name, Ack(ex.job_id, ex.attempt, ex.rank)))
    for jid, act in list(state.active.items()):
        for rank, cp in enumerate(act.running.placement):
            if cp.node == msg.name and act.exits[rank] is None and (jid, rank) not in reported \
                    and not act.is_held(rank):  # not launched yet: rank 0 has not started the gang
                out += rank_lost(state, act, rank, f"rank {rank} was not running on {msg.name} when its agent registered")
    state.wake()
    return Welcome(state.settings.heartbeat_s, kill, heartbeat_timeout_s=state.settings.heartbeat_timeout_s), out


def _resume_lost(state: State, entry: NodeEntry, msg: Register) -> None:
    """Take back each attempt this node took down with it whose every lost rank
    the agent still runs or reports finished; the rest stay requeued (their
    reports are then stale: running ranks are killed, exits recorded as late)."""
    lost, entry.lost = entry.lost, {}
    here = {(r.job_id, r.attempt, r.rank) for r in msg.running}
    here |= {(ex.job_id, ex.attempt, ex.rank) for ex in msg.finished}
    for jid, la in lost.items():
        if all((jid, la.attempt, rank) in here for rank in la.ranks):
            state.resume(la.active, la.attempt, la.ranks)


def _expected(state: State, node: str, job_id: str, attempt: int, rank: int) -> bool:
    act = state.active.get(job_id)
    rec = state.jobs.get(job_id)
    if act is None or rec is None or rec.attempt != attempt or rank >= len(act.running.placement):
        return False
    return act.running.placement[rank].node == node and act.exits[rank] is None


def rank_lost(state: State, act: Active, rank: int, comment: str) -> Outbox:
    """A rank vanished with its node: record it as killed, end or requeue the job."""
    rec = state.jobs[act.running.job.id]
    now = state.clock()
    rerun = rec.rerunnable
    status = EXIT_RERUN if rerun else 256 + 9
    lost = Exited(rec.id, rec.attempt, rank, status, "killed", rec.start_time or now, now, comment=comment)
    if rec.job_state is JobState.RUNNING:
        rec.comment = comment
        act.requeue = act.requeue or rerun
        act.finish = act.finish or (None if rerun else FinishReason.NODE_FAIL)
    out = state.rank_exited(lost)
    if rec.id in state.active and rec.job_state is JobState.RUNNING:
        out += state.kill_ranks(act, None, rerun, state.settings.kill_delay_s)
    return out


def on_heartbeat(state: State, entry: NodeEntry, msg: Heartbeat) -> None:
    """Telemetry: node readings, per-job samples, GPU utilisation for each job's GPUs."""
    entry.last_seen = state.clock()
    entry.cpu_pct, entry.mem_used_mb, entry.gpu_samples = msg.cpu_pct, msg.mem_used_mb, msg.gpus
    entry.job_samples = {(s.job_id, s.rank): s for s in msg.jobs}
    util = {g.index: g.util_pct for g in msg.gpus}
    for s in msg.jobs:
        act = state.active.get(s.job_id)
        if act is None or s.rank >= len(act.running.placement):
            continue
        gpus = act.running.placement[s.rank].gpus
        if gpus:
            act.gpu_util_sum += sum(util.get(g, 0.0) for g in gpus) / len(gpus)
            act.gpu_util_n += 1


def on_started(state: State, msg: Started) -> Outbox:
    """A rank started; rank 0's start launches the rest of its gang."""
    return state.started(msg.job_id, msg.attempt, msg.rank)


def check_nodes(state: State, now: float, since_start: float) -> Outbox:
    """Nodes silent past ``heartbeat_timeout_s`` go DOWN and lose their ranks.

    After a restart, ranks on nodes that never re-registered within
    ``reconnect_grace_s`` are lost too.
    """
    out: Outbox = []
    timeout = state.settings.heartbeat_timeout_s
    for entry in state.fleet:
        if entry.node.state is NodeState.UP and now - entry.last_seen > timeout:
            state.fleet.mark_down(entry, f"no heartbeat for {now - entry.last_seen:.0f} s")
            out += _lose_node(state, entry, f"node {entry.node.name} went down (no heartbeat for {timeout:g} s)")
    if since_start > state.settings.reconnect_grace_s:
        for jid, act in list(state.active.items()):
            for rank, cp in enumerate(act.running.placement):
                if state.fleet.get(cp.node) is None and act.exits[rank] is None and jid in state.active:
                    out += rank_lost(state, act, rank, f"node {cp.node} did not come back after the restart")
    return out


def _lose_node(state: State, entry: NodeEntry, comment: str) -> Outbox:
    """Lose every live rank on a silent node; remember the attempts it took whole."""
    name = entry.node.name
    out: Outbox = []
    for act in list(state.active.values()):
        rec = state.jobs[act.running.job.id]
        jid, attempt, running = rec.id, rec.attempt, rec.job_state is JobState.RUNNING  # not being killed
        live = frozenset(r for r, e in enumerate(act.exits) if e is None)
        whole = running and all(act.running.placement[r].node == name for r in live)
        for rank, cp in enumerate(act.running.placement):
            if cp.node == name and act.exits[rank] is None and jid in state.active:
                out += rank_lost(state, act, rank, comment)
        if whole and live and jid not in state.active:  # requeued or ended by the loss alone
            entry.lost[jid] = LostAttempt(act, attempt, live)
    return out


def _end_incarnation(state: State, entry: NodeEntry, reason: str, *, warn: bool) -> Outbox:
    """This life of the node is over: it goes DOWN, its ranks are lost (rerunnable
    jobs requeued with ``attempt + 1``, the others NODE_FAIL), nothing is resumed.

    With ``warn`` the node's agent (still connected while its pod terminates) is
    first told to kill each rank (SIGTERM, SIGKILL after ``kill_delay_s``): the
    jobs' warning within the pod's grace period. Their late exits are history.
    """
    name = entry.node.name
    comment = f"node {name} lost: {reason}"
    out: Outbox = []
    for act in list(state.active.values()):
        rec = state.jobs[act.running.job.id]
        for rank, cp in enumerate(act.running.placement):
            if cp.node != name or act.exits[rank] is not None or rec.id not in state.active:
                continue
            if warn and not act.is_held(rank):
                out.append((name, Kill(rec.id, rec.attempt, rank, state.settings.kill_delay_s,
                                       EXIT_RERUN if rec.rerunnable else None)))
            out += rank_lost(state, act, rank, comment)
    state.fleet.end_incarnation(entry, reason)
    state.wake()
    return out


def pod_seen(state: State, name: str, uid: str, phase: str, reason: str, *, final: bool = False,
             code: str = "", group: str = "") -> Outbox:
    """The pool driver saw node ``name``'s pod ``uid`` in ``phase`` (reserving, ready, down).

    ``final``: the pod can never run again (being deleted, Failed, Succeeded):
    the incarnation ends now. A DOWN that may pass (its Kubernetes node
    unreachable, the agent container crash-looping) is a silence: the node goes
    DOWN and its attempts are kept for a resume should the same agent come back.
    """
    pool = state.fleet.pool
    if pool is not None:
        pool.pods[name] = Pod(uid, phase, reason, code, group)
    entry = state.fleet.get(name)
    if entry is None:
        return []
    if entry.incarnation not in ("", uid):  # the node's agent belongs to an earlier pod
        if state.fleet.is_retired(name, entry.incarnation):
            return []
        return _end_incarnation(state, entry, "its pod was replaced by a new one of the same name", warn=False)
    if phase != "down":
        return []
    if final:
        if state.fleet.is_retired(name, uid):  # ended already; keep the newest words
            entry.comment = reason
            return []
        return _end_incarnation(state, entry, reason, warn=True)
    if entry.node.state is not NodeState.UP:
        return []
    state.fleet.mark_down(entry, reason)
    out = _lose_node(state, entry, f"node {name} went down: {reason}")
    state.wake()
    return out


def pod_gone(state: State, name: str, uid: str, reason: str) -> Outbox:
    """Node ``name``'s pod ``uid`` no longer exists: that incarnation has ended."""
    pool = state.fleet.pool
    if pool is not None and (pod := pool.pods.get(name)) is not None and pod.uid == uid:
        del pool.pods[name]
    entry = state.fleet.get(name)
    out: Outbox = []
    if entry is not None and entry.incarnation in ("", uid) and not state.fleet.is_retired(name, uid):
        out = _end_incarnation(state, entry, reason, warn=True)
    state.fleet.retire(name, uid)
    return out
