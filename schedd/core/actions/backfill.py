"""backfill: start jobs behind a blocked one when that delays no reservation.

Rules (see :mod:`policies.backfill` for the modes, read through
:class:`~schedd.core.scheduler.BackfillPolicy`):

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

import heapq
import itertools
import math
from collections.abc import Iterator

from schedd.core.context import Context
from schedd.core.model import Job, Reason
from schedd.core.pending import FifoQueue
from schedd.core.replan import Replan

__all__ = ["run"]


def run(ctx: Context) -> None:
    policy = ctx.pipeline.backfill_policy  # never None when this action is configured
    if policy is None or policy.mode == "none":
        return
    if ctx.replan is not None:  # conservative, FCFS, no limit (see Context._replan)
        _conservative_replan(ctx, ctx.replan)
        return
    mode, limit = policy.mode, policy.max_jobs_tested
    reserved = False
    first = True
    cluster, no_fit, prior = ctx.cluster, ctx.no_fit, ctx.prior
    easy = mode == "easy"
    jobs = ctx.next_after_cursor() if ctx.queue is not None else iter(ctx.pending_after_cursor())
    for n, job in enumerate(jobs):
        if limit is not None and n >= limit:
            ctx.plan.truncated = True
            return
        c, m, g = job.shape[0]
        if easy and reserved and ctx.queue is not None:
            _easy_from_index(ctx, ctx.queue, job.order - 1, limit, n)
            return
        if easy and reserved:  # the fast path: its reservation turn is past; can it start now?
            if g > cluster.max_gpus or c > cluster.max_free_cpus or m > cluster.max_free_mem:
                continue
            failed_w = no_fit.get(job.shape)
            if failed_w is not None and job.walltime_s >= failed_w and job.id not in prior:
                continue
        reserved, first = _decide(ctx, job, mode, reserved, first)


def _decide(ctx: Context, job: Job, mode: str, reserved: bool, first: bool) -> tuple[bool, bool]:
    """Refuse, start or reserve one job (rules 2 and 3); returns the new ``(reserved, first)``."""
    reason = ctx.refusal(job)
    if reason is not None:
        ctx.refuse(job, reason)
        return reserved, first
    placement = ctx.attempt(job)
    if placement is not None:
        ctx.start(job, placement)
        return reserved, first
    if mode == "conservative" or not reserved:
        reserved = True
        if not ctx.reserve_earliest(job, Reason.RESOURCES if first else Reason.PRIORITY):
            ctx.plan.reasons[job.id] = Reason.RESOURCES
    return reserved, False


def _conservative_replan(ctx: Context, replan: Replan) -> None:
    """Conservative backfill over the FCFS queue with the replan log (see
    :mod:`schedd.core.replan`): a job whose reservation nothing could have
    improved keeps it in a few dictionary operations — what :func:`_decide` would
    decide, the count of jobs tested included; the others go through
    :func:`_decide`. Same jobs, same order, same plan."""
    clean, never, now = replan.clean, ctx.never_cache, ctx.now
    priors, lifted, settled = ctx.prior, ctx.lifted, ctx.settled
    reservations, reasons = ctx.plan.reservations, ctx.plan.reasons
    first, kept = True, 0
    for job in itertools.islice(ctx.order, ctx.cursor, None):
        job_id = job.id
        if job_id in settled:
            continue
        prior = priors.get(job_id)
        if (prior is not None and prior.start > now and not lifted and never.get(job.shape) is False
                and clean(job, prior)):
            del priors[job_id]
            reservations[job_id] = prior
            reasons[job_id] = Reason.RESOURCES if first else Reason.PRIORITY
            settled.add(job_id)
            kept += 1  # counted as tested, as its attempt to start now would have been
            first = False
            continue
        _, first = _decide(ctx, job, "conservative", True, first)
    ctx.plan.tested += kept


def _easy_from_index(
    ctx: Context, queue: FifoQueue, after_order: int, limit: int | None, tested: int
) -> None:
    """EASY after the reservation, over the owner's FCFS index (see schedd.core.pending).

    Only jobs that could start now are visited, still in submission order: per
    shape, none if its largest entry exceeds every free slot, else those whose
    walltime fits before the reservations (:meth:`Profile.max_walltime_now`),
    merged by sequence. Every visited job gets the same test as in the plain
    walk, so the starts are the same; the jobs never visited wait on Priority.
    """
    cluster, profile = ctx.cluster, ctx.profile
    heap: list[tuple[int, int, Job, Iterator[Job]]] = []
    for gid, shape in enumerate(queue.shapes()):
        if cluster.quick_reject(shape):
            continue
        w = profile.max_walltime_now(shape)
        if w <= 0:
            continue
        it = queue.after(shape, after_order) if w == float("inf") else iter(queue.short(shape, w, after_order))
        first = next(it, None)
        if first is not None:
            heap.append((first.order, gid, first, it))
    heapq.heapify(heap)
    while heap:
        _, gid, job, it = heapq.heappop(heap)
        if cluster.quick_reject(job.shape):
            continue  # free resources only shrink: this shape is done for the cycle
        failed_w = ctx.no_fit.get(job.shape)
        if failed_w is not None and job.walltime_s >= failed_w and job.id not in ctx.prior:
            # Only shorter jobs of this shape can still fit: look those up instead.
            shorter = math.nextafter(failed_w, 0.0)
            it = iter(queue.short(job.shape, shorter, job.order))
            _push_next(heap, gid, it)
            continue
        _push_next(heap, gid, it)
        if job.id in ctx.settled:
            continue
        if limit is not None and tested >= limit:
            ctx.plan.truncated = True
            return
        tested += 1
        reason = ctx.refusal(job)
        if reason is not None:
            ctx.refuse(job, reason)
            continue
        placement = ctx.attempt(job)
        if placement is not None:
            ctx.start(job, placement)


def _push_next(heap: list[tuple[int, int, Job, Iterator[Job]]], gid: int, it: Iterator[Job]) -> None:
    job = next(it, None)
    if job is not None:
        heapq.heappush(heap, (job.order, gid, job, it))
