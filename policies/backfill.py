"""Backfill: let lower-priority jobs start now when that delays no reservation.

``easy`` (Mu'alem & Feitelson's EASY): the first job that cannot start gets a
reservation — the *shadow time*, the earliest moment at which running jobs'
walltime ends free enough resources, on concrete nodes and GPUs. Any later job
may start now only if it fits on resources that are free now and stay free for
its whole walltime without touching what the reservation was promised. Here
this is one rule, checked per node on a time profile (see
:mod:`schedd.core.profile`), so it holds for multi-node jobs and per-node GPUs, CPUs
and memory, not only for a processor count.

``conservative``: every job that cannot start gets a reservation, in priority
order, and a later job may start only if it delays none of them.

``none``: strict priority order; nothing passes a blocked job.

``max_jobs_tested`` bounds the jobs examined per cycle (Slurm's
``bf_max_job_test``, 500 by default there); unset = every pending job. When the
bound stops a cycle the Plan says ``truncated``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

import msgspec

from policies.base import Policy, settings_of

__all__ = ["Backfill", "BackfillSettings", "Mode"]

Mode = Literal["none", "easy", "conservative"]


class BackfillSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[backfill]`` table."""

    mode: Mode = "easy"
    #: Unset: every pending job is examined.
    max_jobs_tested: Annotated[int, msgspec.Meta(ge=1)] | None = None


_DEFAULT = BackfillSettings()


class Backfill(Policy):
    name = "backfill"

    def __init__(self, mode: Mode = _DEFAULT.mode, max_jobs_tested: int | None = _DEFAULT.max_jobs_tested) -> None:
        self.mode = mode
        self.max_jobs_tested = max_jobs_tested

    @classmethod
    def from_config(cls, table: object) -> Self:
        s = settings_of(table, BackfillSettings, cls.name)
        return cls(s.mode, s.max_jobs_tested)
