"""Job arrays: a parent that shows its subjobs' state, finishes with the last of
them, and limits how many run at once (``%max``).

A part of :class:`schedd.daemon.state.State` (functions bound as its methods;
see ``state.py``). Subjobs are ordinary jobs in every index; only the parent's
summary and the ``%max`` quota are kept here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schedd.core.model import FinishReason, Job, JobState
from schedd.daemon.records import JobRecord

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["eligible", "members", "refresh_parent", "subjob_finished", "subjob_moved"]


def members(state: State, rec: JobRecord) -> list[JobRecord]:
    if rec.array is None:
        return [rec]
    subs = (state.jobs.get(f"{rec.number}[{i}]") for i in rec.array.indices())
    return [s for s in subs if s is not None]


def refresh_parent(state: State, parent_id: str | None) -> None:
    """An array parent shows its subjobs' state: R while any runs, else the
    earliest of Q, W, H. O(subjobs): for user actions on an array; the
    frequent transitions (a subjob starts, ends) use :meth:`_subjob_moved`."""
    parent = state.jobs.get(parent_id) if parent_id is not None else None
    if parent is None or parent.array is None or parent.job_state is JobState.FINISHED:
        return
    subs = (state.jobs.get(f"{parent.number}[{i}]") for i in parent.array.indices())
    states = {s.job_state for s in subs if s is not None} - {JobState.FINISHED}
    old = parent.state
    if JobState.RUNNING in states or JobState.EXITING in states:
        parent.state = JobState.RUNNING.value
    elif states:
        parent.state = min(states, key=lambda s: "QWH".find(s.letter)).value
    if parent.state != old:
        state._save(parent, "array")


def subjob_moved(state: State, sub: JobRecord) -> None:
    """O(1) upkeep of an array parent when one of its subjobs starts or ends."""
    parent = state.jobs.get(sub.parent) if sub.parent is not None else None
    if parent is None or parent.job_state is JobState.FINISHED:
        return
    old = parent.state
    if state.array_running.get(parent.id, 0) > 0:
        parent.state = JobState.RUNNING.value
        parent.start_time = parent.start_time or state.clock()
    elif parent.state == JobState.RUNNING.value:
        parent.state = JobState.QUEUED.value  # nothing runs now; the rest wait
    if parent.state != old:
        state._save(parent, "array")


def subjob_finished(state: State, sub: JobRecord) -> None:
    """Count a finished subjob; the last one finishes the parent.

    A failed subjob marks the parent's exit status at once (1, as PBS
    reports a failed array), so the verdict survives a restart."""
    parent = state.jobs.get(sub.parent) if sub.parent is not None else None
    if parent is None or parent.job_state is JobState.FINISHED:
        return
    if sub.exit_status not in (0, None) and parent.exit_status is None:
        parent.exit_status = 1
        state._save(parent)
    left = state.array_left[parent.id] = state.array_left.get(parent.id, 1) - 1
    if left > 0:
        return
    failed = parent.exit_status == 1
    parent.exit_status = 1 if failed else 0
    parent.state, parent.end_time = JobState.FINISHED.value, state.clock()
    parent.finish_reason = (FinishReason.FAILED if failed else FinishReason.COMPLETED).value
    state._save(parent, "end", reason=parent.finish_reason, exit_status=parent.exit_status)
    state._retire(parent)
    state._wake_dependents(parent.id)


def eligible(state: State) -> list[Job]:
    """Queued jobs, less subjobs over their array's ``%max`` running."""
    quota: dict[str, int] = {}
    state.array_limited = []
    out = []
    for j in state.pending.values():
        if j.array_index is not None:
            parent = state.jobs[j.id].parent or ""
            spec = state.jobs[parent].array
            if spec is not None and spec.max_running is not None:
                left = quota.get(parent, spec.max_running - state.array_running.get(parent, 0))
                quota[parent] = left - 1
                if left <= 0:
                    state.array_limited.append(j.id)
                    continue
        out.append(j)
    return out
