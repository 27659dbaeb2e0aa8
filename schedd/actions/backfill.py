"""backfill: start jobs behind a blocked one when that delays no reservation.

Rules (see :mod:`policies.backfill` for the modes):

1. Walk the jobs allocate did not settle, in priority order.
2. A job that fits now for its whole walltime without touching any
   reservation starts now.
3. Otherwise it gets a reservation at its earliest start if the mode gives it
   one (EASY: only the first such job; conservative: every one), else it waits
   on Priority.
4. At most ``max_jobs_tested`` jobs are examined; the Plan says when that
   bound stopped the walk.

Most of a long queue cannot start now: in EASY mode, once the reservation is
made, a job whose largest chunk exceeds the largest free slot, or whose shape
already failed this cycle with a walltime no longer than its own, is passed
over in O(1) without asking the limit policies (its reason stays Priority).
"""

from __future__ import annotations

from schedd.context import Context
from schedd.model import Reason

__all__ = ["run"]


def run(ctx: Context) -> None:
    policy = ctx.pipeline.policies.get("backfill")
    mode = getattr(policy, "mode", "none")
    if mode == "none":
        return
    limit: int | None = getattr(policy, "max_jobs_tested", None)
    reserved = False
    first = True
    cluster, no_fit, prior = ctx.cluster, ctx.no_fit, ctx.prior
    easy = mode == "easy"
    for n, job in enumerate(ctx.pending_after_cursor()):
        if limit is not None and n >= limit:
            ctx.plan.truncated = True
            return
        c, m, g = job.shape[0]
        if easy and reserved:  # the fast path: its reservation turn is past; can it start now?
            if g > cluster.max_gpus or c > cluster.max_free_cpus or m > cluster.max_free_mem:
                continue
            failed_w = no_fit.get(job.shape)
            if failed_w is not None and job.walltime_s >= failed_w and job.id not in prior:
                continue
        reason = ctx.refusal(job)
        if reason is not None:
            ctx.refuse(job, reason)
            continue
        placement = ctx.attempt(job)
        if placement is not None:
            ctx.start(job, placement)
            continue
        if mode == "conservative" or not reserved:
            reserved = True
            if not ctx.reserve_earliest(job, Reason.RESOURCES if first else Reason.PRIORITY):
                ctx.plan.reasons[job.id] = Reason.RESOURCES
        first = False
