"""Limits: queue and QoS rules that hold a job back whatever the free resources.

Checked in this order, the first that fails is the pending reason:

* the queue's ``allowed_users`` (empty = everyone)          -> QueueLimit
* the queue's ``max_walltime_s``                            -> QueueLimit
* ``max_running_per_user`` of the queue, then of the QoS     -> QOSMaxJobsPerUserLimit
* ``max_gpus_per_user`` of the queue, then of the QoS        -> QOSMaxGRESPerUser

Counts start from the snapshot's running jobs and grow with each start in the
cycle, so a user at the limit is held back even within one cycle. O(1) per job.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from policies.base import Policy
from schedd.core.model import Job, Placement, QosDef, QueueDef, Reason

if TYPE_CHECKING:
    from schedd.core.context import Context

__all__ = ["Limits"]

_Key = tuple[str, str, str]  # (kind "queue"|"qos", name, user)


class Limits(Policy):
    name = "limits"

    def __init__(self) -> None:
        self._jobs: Counter[_Key] = Counter()
        self._gpus: Counter[_Key] = Counter()
        self._counting = True

    def prepare(self, ctx: Context) -> None:
        self._jobs.clear()
        self._gpus.clear()
        # Counting is O(running jobs) a cycle: skipped where no queue or QoS caps a user.
        snap = ctx.snapshot
        self._counting = any(_caps(q) for q in snap.queues.values()) or any(_caps(q) for q in snap.qos.values())
        if self._counting:
            for r in snap.running:
                self._count(r.job)

    def _count(self, job: Job) -> None:
        if not self._counting:
            return
        for key in _keys(job):
            self._jobs[key] += 1
            self._gpus[key] += job.ngpus

    def fits(self, job: Job, ctx: Context) -> Reason | None:
        queue = ctx.queue_of(job)
        if queue is not None:
            if queue.allowed_users and job.owner not in queue.allowed_users:
                return Reason.QUEUE_LIMIT
            if queue.max_walltime_s is not None and job.walltime_s > queue.max_walltime_s:
                return Reason.QUEUE_LIMIT
        qos = ctx.qos_of(job)
        for kind, limits in (("queue", queue), ("qos", qos)):
            if limits is None:
                continue
            key = (kind, limits.name, job.owner)
            cap = limits.max_running_per_user
            if cap is not None and self._jobs[key] >= cap:
                return Reason.QOS_MAX_JOBS_PER_USER
            cap = limits.max_gpus_per_user
            if cap is not None and self._gpus[key] + job.ngpus > cap:
                return Reason.QOS_MAX_GPUS_PER_USER
        return None

    def on_start(self, job: Job, placement: Placement, ctx: Context) -> None:
        self._count(job)


def _caps(limits: QueueDef | QosDef) -> bool:
    """Whether ``limits`` caps a user's running jobs or GPUs: only those need counts."""
    return limits.max_running_per_user is not None or limits.max_gpus_per_user is not None


def _keys(job: Job) -> tuple[_Key, ...]:
    if job.qos:
        return (("queue", job.queue, job.owner), ("qos", job.qos, job.owner))
    return (("queue", job.queue, job.owner),)
