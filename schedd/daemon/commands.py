"""User commands on existing jobs: qdel (cancel, purge), qhold, qrls, qsig,
qrerun, qalter — each checking who may act, then changing state through the
State's transitions.

A part of :class:`schedd.daemon.state.State` (functions bound as its methods;
see ``state.py``). Commands on an array act on its subjobs, which are what runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schedd.core.model import FinishReason, JobState
from schedd.daemon.active import PENDING, Outbox
from schedd.daemon.records import Bounds, JobRecord
from schedd.errors import HookRejected, InputError, JobFinished, PermissionDenied, UnknownJob, UnknownQueue, WrongState
from schedd.hooks import Chunk, Submission
from schedd.protocol import Exited, Signal

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["alter", "alter_view", "altered_by_hook", "cancel", "hold", "owned", "purge", "release", "requeue", "signal"]

#: What qalter can change, so all a submit hook may change on an alteration.
_ALTERABLE = ("walltime_s", "priority", "name", "queue")


def owned(state: State, job_id: str, user: str, privileged: bool) -> JobRecord:
    rec = state.lookup(job_id)
    if rec is None:
        raise UnknownJob(f"Unknown Job Id {job_id}")
    if not privileged and rec.owner != user:
        raise PermissionDenied(f"Unauthorized Request: job {job_id} belongs to {rec.owner}")
    return rec


def cancel(state: State, job_id: str, user: str, privileged: bool, force: bool = False) -> Outbox:
    """qdel. ``force`` (qdel -W force) ends a running job at once, without
    waiting for its agent to confirm the kill (e.g. its node is gone)."""
    rec = state.owned(job_id, user, privileged)
    if rec.job_state is JobState.FINISHED:
        raise JobFinished(f"Job has finished {job_id}")
    out: Outbox = []
    for sub in state._members(rec):
        if sub.job_state in PENDING:
            sub.comment = f"cancelled by {user}"
            state._finish(sub, FinishReason.CANCELLED, None)
        elif sub.id in state.active:
            act = state.active[sub.id]
            state._save(sub, "cancel", by=user, force=force)
            out += state.kill_ranks(act, FinishReason.CANCELLED, False, state.settings.kill_delay_s)
            if force:
                now = state.clock()
                for rank, e in enumerate(act.exits):
                    if e is None:
                        act.exits[rank] = Exited(sub.id, sub.attempt, rank, 256 + 9, "killed", now, now,
                                                 comment=f"deleted with -W force by {user}")
                state._close(sub, act)
    state._refresh_parent(rec.id if rec.array is not None else rec.parent)
    state.wake()
    return out


def purge(state: State, job_id: str, user: str, privileged: bool) -> None:
    """qdel -x of a finished job: forget it, history included."""
    rec = state.owned(job_id, user, privileged)
    if rec.job_state is not JobState.FINISHED:
        raise _bad_state(rec, job_id)
    ids = [m.id for m in state._members(rec)] + ([rec.id] if rec.array is not None else [])
    for i in ids:
        state.jobs.pop(i, None)
    if state.store is not None:
        state.store.delete_jobs(ids)


def hold(state: State, job_id: str, types: str, user: str, privileged: bool) -> None:
    rec = state.owned(job_id, user, privileged)
    _check_hold_types(types, privileged)
    for sub in state._members(rec):
        if sub.job_state not in PENDING:
            if rec.array is None:
                raise _bad_state(rec, job_id)
            continue
        sub.holds = "".join(sorted(set(sub.holds) | set(types)))
        state._settle(sub)
        state._save(sub, "hold", types=types, by=user)
    state._refresh_parent(rec.id if rec.array is not None else rec.parent)


def release(state: State, job_id: str, types: str, user: str, privileged: bool) -> None:
    rec = state.owned(job_id, user, privileged)
    _check_hold_types(types, privileged)
    if rec.array is None and rec.job_state is not JobState.HELD:
        raise _bad_state(rec, job_id)
    for sub in state._members(rec):
        if sub.job_state is not JobState.HELD:
            continue
        sub.holds = "".join(sorted(set(sub.holds) - set(types)))
        state._settle(sub)
        state._save(sub, "release", types=types, by=user)
    state._refresh_parent(rec.id if rec.array is not None else rec.parent)
    state.wake()


def signal(state: State, job_id: str, sig: str, user: str, privileged: bool) -> Outbox:
    rec = state.owned(job_id, user, privileged)
    out: Outbox = []
    for sub in state._members(rec):
        act = state.active.get(sub.id)
        if act is None:
            if rec.array is None:
                raise _bad_state(rec, job_id)
            continue
        for rank, cp in enumerate(act.running.placement):
            out.append((cp.node, Signal(sub.id, sub.attempt, rank, sig)))
    return out


def requeue(state: State, job_id: str, user: str, privileged: bool) -> Outbox:
    rec = state.owned(job_id, user, privileged)
    act = state.active.get(rec.id)
    if act is None or rec.job_state is not JobState.RUNNING:
        raise _bad_state(rec, job_id)
    if not rec.rerunnable:
        raise WrongState(f"job {job_id} is not rerunnable (-r n)")
    state._save(rec, "rerun", by=user)
    return state.kill_ranks(act, None, True, state.settings.kill_delay_s)


def alter(state: State, job_id: str, changes: dict[str, object], user: str, privileged: bool) -> JobRecord:
    """Change walltime, priority, name or queue of a job that has not started.

    The job as altered must pass :meth:`check_admission`, as a submission
    does, and nothing changes unless every change is allowed. An array's
    changes reach its pending subjobs too: they are what runs."""
    rec = state.owned(job_id, user, privileged)
    if rec.job_state not in PENDING:
        raise _bad_state(rec, job_id)
    fields = _alterations(changes)
    queue = str(fields.get("queue", rec.queue))
    if queue not in state.settings.queues:  # qalter's own words (PBS: "Unknown queue")
        raise UnknownQueue(f"unknown queue {queue!r}")
    walltime = float(fields.get("walltime_s", rec.walltime_s))  # type: ignore[arg-type]
    if not privileged and walltime > rec.walltime_s:
        raise PermissionDenied("walltime_s: users may only lower their walltime")
    state.check_admission(rec.owner, queue, walltime, rec.chunks)
    subjobs = [m for m in state._members(rec) if m.job_state in PENDING] if rec.array is not None else []
    for target in (rec, *subjobs):
        for key, value in fields.items():
            setattr(target, key, value)
        if target.array is None:
            state._settle(target)
        state._save(target, "alter", **changes)
    state._refresh_parent(rec.id if rec.array is not None else None)
    state.wake()
    return rec


def alter_view(rec: JobRecord, changes: dict[str, object]) -> Submission:
    """The site hook's view of an alteration: the job ``rec`` as ``changes`` would leave it."""
    fields = _alterations(changes)
    return Submission(
        "alter", str(fields.get("queue", rec.queue)), float(fields.get("walltime_s", rec.walltime_s)),  # type: ignore[arg-type]
        [Chunk(c.ncpus, c.mem_mb, c.ngpus, c.count) for c in rec.chunks], account=rec.account,
        name=str(fields.get("name", rec.name)), priority=int(fields.get("priority", rec.priority)),  # type: ignore[call-overload]
        qos=rec.qos, container=rec.container, env=dict(rec.env), job_id=rec.id,
    )


def altered_by_hook(before: Submission, after: Submission, changes: dict[str, object]) -> dict[str, object]:
    """``changes`` with the hook's: only what qalter could change (then checked by :func:`alter`)."""
    others = [f for f in ("chunks", "account", "qos", "container", "env", "array")
              if getattr(after, f) != getattr(before, f)]
    if others:
        raise HookRejected(f"the site's submit hook changed {', '.join(others)} of job {before.job_id}: "
                           f"an alteration may change only {', '.join(_ALTERABLE)}")
    out = dict(changes)
    out.update({f: getattr(after, f) for f in _ALTERABLE if getattr(after, f) != getattr(before, f)})
    return out


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


def _bad_state(rec: JobRecord, job_id: str) -> WrongState:
    """PBS's answer to a request the job's state does not allow (168, or 35 when finished)."""
    if rec.job_state is JobState.FINISHED:
        return JobFinished(f"Job has finished {job_id}")
    return WrongState(f"Request invalid for state of job {job_id}")


def _check_hold_types(types: str, privileged: bool) -> None:
    if not types or set(types) - set("uos"):
        raise InputError(f"hold types: {types!r}: expected some of u, o, s")
    if not privileged and set(types) - {"u"}:
        raise PermissionDenied("only operators may set or release o and s holds")
