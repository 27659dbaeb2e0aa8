"""Shortest expected job first: an example of a schedd policy plugin.

The order key is what a job is expected to cost, less what its wait has earned::

    key = walltime_s x size - aging x (now - eligible time)

where ``size`` is 1 (``by = "walltime"``), the job's GPUs (``by = "gpu_seconds"``,
at least 1) or its CPUs (``by = "cpu_seconds"``). Smaller runs first. Without
aging a steady stream of short jobs starves a long one; ``aging = 1.0`` lets a
job gain one second of key per second waited. O(1) per job per cycle.

Like every policy it is pure: it reads the job and ``ctx.snapshot.now`` and
nothing else — no clock, no I/O — so the simulator, replay and the daemon
decide alike. Enabled by a table in ``policies.toml``, in key order::

    [sjf]
    by = "gpu_seconds"
    aging = 0.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Self

import msgspec

from policies.base import Policy, settings_of
from schedd.core.model import Job

if TYPE_CHECKING:
    from schedd.core.context import Context

__all__ = ["ShortestFirst", "SjfSettings"]


class SjfSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[sjf]`` table."""

    by: Literal["walltime", "gpu_seconds", "cpu_seconds"] = "walltime"
    #: Seconds of key a job gains per second of waiting. Default 0 (pure SJF).
    aging: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0


class ShortestFirst(Policy):
    """Order pending jobs by expected cost, cheapest first (see the module docstring)."""

    name = "sjf"

    def __init__(self, settings: SjfSettings = SjfSettings()) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, table: object) -> Self:
        return cls(settings_of(table, SjfSettings, cls.name))

    def order_key(self, job: Job, ctx: Context) -> float:
        s = self.settings
        size = 1 if s.by == "walltime" else max(1, job.ngpus if s.by == "gpu_seconds" else job.ncpus)
        key = job.walltime_s * size
        if s.aging:
            key -= s.aging * max(0.0, ctx.snapshot.now - job.eligible_at)
        return key
