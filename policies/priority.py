"""Multifactor priority, as Slurm's ``priority/multifactor`` defines it.

::

    priority = w_age       * age                  age = min(1, waited / max_age_s)
             + w_fairshare * fairshare            from the fair-share policy, in [0, 1]
             + w_job_size  * job_size             requested GPUs / pool GPUs (CPUs if no GPUs);
                                                  1 - that with favor_small = true
             + w_queue     * queue                queue priority / highest queue priority
             + w_qos       * qos                  QoS priority / highest QoS priority
             + w_user      * user                 (qsub -p + 1024) / 2047
             - nice

Every factor is in [0, 1], so a weight is the most points its factor can add.
``waited`` counts from the job's eligible time. Jobs run in decreasing priority;
equal priorities run in submission order.

Cost: the factors that do not change while a job waits (size, queue, QoS, user,
nice) are computed once per job and cached (recomputed if ``qalter`` changed
them); per cycle a job costs one cache lookup, one fair-share lookup and a few
float operations. Without a fair-share policy the fair-share factor is 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Self

import msgspec

from policies.base import Policy, settings_of
from policies.fairshare import FairShare
from schedd.core.model import Job

if TYPE_CHECKING:
    from schedd.core.context import Context

__all__ = ["Priority", "PrioritySettings", "Weights"]

_Points = Annotated[float, msgspec.Meta(ge=0.0)]


class Weights(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[priority.weights]`` table: points each factor can add at most.

    Out of the box fair-share dominates: a team's recent usage matters more than age.
    """

    age: _Points = 1000.0
    fairshare: _Points = 10000.0
    job_size: _Points = 0.0
    queue: _Points = 1000.0
    qos: _Points = 2000.0
    user: _Points = 1000.0


class PrioritySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[priority]`` table."""

    max_age_s: Annotated[float, msgspec.Meta(ge=1.0)] = 7 * 86400.0
    favor_small: bool = False
    weights: Weights = msgspec.field(default_factory=Weights)


_WEIGHTS = Weights.__struct_fields__
_DEFAULT = PrioritySettings()


class Priority(Policy):
    name = "priority"

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        max_age_s: float = _DEFAULT.max_age_s,
        favor_small: bool = _DEFAULT.favor_small,
    ) -> None:
        w = {k: 0.0 for k in _WEIGHTS} | (weights or {})
        self.weights = w
        self.max_age_s = max_age_s
        self.favor_small = favor_small
        self._static: dict[str, tuple[tuple[object, ...], float]] = {}
        self._pool_size = 0
        self._by_gpus = True
        self._max_queue = 0
        self._max_qos = 0
        self._fs: FairShare | None = None

    @classmethod
    def from_config(cls, table: object) -> Self:
        s = settings_of(table, PrioritySettings, cls.name)
        return cls(msgspec.structs.asdict(s.weights), s.max_age_s, s.favor_small)

    def prepare(self, ctx: Context) -> None:
        nodes = ctx.snapshot.nodes
        gpus = sum(n.ngpus for n in nodes)
        self._by_gpus = gpus > 0
        pool = gpus or sum(n.cpus for n in nodes)
        if pool != self._pool_size or len(self._static) > 4 * len(ctx.snapshot.pending) + 1024:
            self._static.clear()  # pool changed, or the cache outgrew the queue
            self._pool_size = pool
        fs = ctx.pipeline.policies.get(FairShare.name)
        self._fs = fs if isinstance(fs, FairShare) else None
        self._max_queue = max((q.priority for q in ctx.snapshot.queues.values()), default=0)
        self._max_qos = max((q.priority for q in ctx.snapshot.qos.values()), default=0)

    def value(self, job: Job, ctx: Context) -> float:
        """The job's priority now (higher runs first)."""
        stamp = (job.priority, job.nice, job.queue, job.qos, job.shape)
        cached = self._static.get(job.id)
        if cached is None or cached[0] != stamp:  # new, or altered while pending
            cached = self._static[job.id] = (stamp, self._static_part(job, ctx))
        w = self.weights
        age = min(1.0, max(0.0, ctx.now - job.eligible_at) / self.max_age_s)
        # Read at use, not in prepare: fair-share may prepare after us.
        fs = self._fs.factors.get((job.account, job.owner), 1.0) if self._fs is not None else 1.0
        return cached[1] + w["age"] * age + w["fairshare"] * fs

    def order_key(self, job: Job, ctx: Context) -> float:
        return -self.value(job, ctx)

    def _static_part(self, job: Job, ctx: Context) -> float:
        w = self.weights
        size = (job.ngpus if self._by_gpus else job.ncpus) / max(self._pool_size, 1)
        size = min(1.0, size)
        if self.favor_small:
            size = 1.0 - size
        queue = ctx.queue_of(job)
        qf = queue.priority / self._max_queue if queue and self._max_queue > 0 else 0.0
        qos = ctx.qos_of(job)
        sf = qos.priority / self._max_qos if qos and self._max_qos > 0 else 0.0
        user = (min(1023, max(-1024, job.priority)) + 1024) / 2047
        return w["job_size"] * size + w["queue"] * qf + w["qos"] * sf + w["user"] * user - job.nice
