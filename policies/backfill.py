"""Backfill: let lower-priority jobs start now when that delays no reservation.

``easy`` (Mu'alem & Feitelson's EASY): the first job that cannot start gets a
reservation — the *shadow time*, the earliest moment at which running jobs'
walltime ends free enough resources, on concrete nodes and GPUs. Any later job
may start now only if it fits on resources that are free now and stay free for
its whole walltime without touching what the reservation was promised. Here
this is one rule, checked per node on a time profile (see
:mod:`schedd.profile`), so it holds for multi-node jobs and per-node GPUs, CPUs
and memory, not only for a processor count.

``conservative``: every job that cannot start gets a reservation, in priority
order, and a later job may start only if it delays none of them.

``none``: strict priority order; nothing passes a blocked job.

``max_jobs_tested`` bounds the jobs examined per cycle (Slurm's
``bf_max_job_test``, 500 by default there); unset = every pending job. When the
bound stops a cycle the Plan says ``truncated``.
"""

from __future__ import annotations

from typing import Self

from policies.base import Options, Policy

__all__ = ["Backfill"]


class Backfill(Policy):
    name = "backfill"

    def __init__(self, mode: str = "easy", max_jobs_tested: int | None = None) -> None:
        self.mode = mode
        self.max_jobs_tested = max_jobs_tested

    @classmethod
    def configure(cls, opts: Options) -> Self:
        mode = opts.choice("mode", "easy", ("none", "easy", "conservative"))
        return cls(mode, opts.integer("max_jobs_tested", None, min=1))
