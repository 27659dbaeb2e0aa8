"""Job dependencies (``-W depend=afterok:12:13``): when is one satisfied, when never.

Pure functions over job records, so the rule is written once and tested as a
table. A dependency on an array parent (``12[]``) waits for the whole array.
"""

from __future__ import annotations

import enum
from typing import Protocol

from schedd.core.model import JobState
from schedd.daemon.records import Dependency, JobRecord

__all__ = ["JobGetter", "Verdict", "verdict"]


class JobGetter(Protocol):
    """Where records are looked up: a dict, or the state falling back to the store."""

    def get(self, key: str, /) -> JobRecord | None: ...


class Verdict(enum.Enum):
    WAIT = "wait"  # not decided yet
    OK = "ok"  # satisfied
    NEVER = "never"  # can never be satisfied (afterok on a failed job...)


def _one(kind: str, dep: JobRecord | None) -> Verdict:
    """The verdict of one ``kind`` dependency on ``dep`` (None = unknown or purged)."""
    if dep is None:
        return Verdict.NEVER
    state = dep.job_state
    if kind == "after":
        started = dep.start_time is not None or state in (JobState.RUNNING, JobState.EXITING)
        if started:
            return Verdict.OK
        return Verdict.NEVER if state is JobState.FINISHED else Verdict.WAIT
    if state is not JobState.FINISHED:
        return Verdict.WAIT
    ok = dep.exit_status == 0
    if kind == "afterany":
        return Verdict.OK
    if kind == "afterok":
        return Verdict.OK if ok else Verdict.NEVER
    return Verdict.NEVER if ok else Verdict.OK  # afternotok


def verdict(deps: list[Dependency], jobs: JobGetter) -> tuple[Verdict, str]:
    """All of ``deps`` together, and a comment naming what decided it.

    >>> from schedd.daemon.records import JobRecord, Dependency
    >>> done = JobRecord("12", 12, 1, "a", "ann", "", "q", [], 1.0, 0.0, "/", "", "", state="finished", exit_status=1)
    >>> verdict([Dependency("afterok", ["12"])], {"12": done})
    (<Verdict.NEVER: 'never'>, 'dependency afterok:12 can never be satisfied (12 exit status 1)')
    >>> verdict([Dependency("afternotok", ["12"])], {"12": done})[0]
    <Verdict.OK: 'ok'>
    """
    waiting = ""
    for d in deps:
        for i in d.ids:
            dep = jobs.get(i)
            v = _one(d.kind, dep)
            if v is Verdict.NEVER:
                why = "unknown job" if dep is None else f"{i} exit status {dep.exit_status}" if dep.exit_status is not None else f"{i} ended without starting"
                return Verdict.NEVER, f"dependency {d.kind}:{i} can never be satisfied ({why})"
            if v is Verdict.WAIT and not waiting:
                waiting = f"waiting for {d.kind}:{i}"
    return (Verdict.WAIT, waiting) if waiting else (Verdict.OK, "")
