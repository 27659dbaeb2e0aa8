"""preempt: evict lower-tier jobs for blocked higher-tier ones.

Rules:

1. A job holding a claim (victims chosen in an earlier cycle) starts as soon as
   it fits — before backfill can hand the freed resources to anyone else. While
   its victims are still exiting it keeps its claim, with reason Preempting,
   and never chooses a second set of victims.
2. Otherwise, walking blocked jobs in priority order, a job that may preempt
   and does not fit now asks the first policy with a ``victims`` hook.
3. Victims are told to go (SIGTERM, then SIGKILL after ``grace_s``); in this
   cycle's profile their resources come back at that deadline, and the
   preemptor claims them from then on (a reservation kept across cycles), so
   nothing else takes them.
4. At most ``max_preemptors`` jobs preempt per cycle.
"""

from __future__ import annotations

from collections import defaultdict

from schedd.core.context import Context, Preemption
from schedd.core.model import Job, Reason, Running, Shape

__all__ = ["run"]


def run(ctx: Context) -> None:
    policy = ctx.pipeline.victims_policy
    exiting: dict[str, list[Running]] = defaultdict(list)
    for r in ctx.snapshot.running:
        if r.preempted_for is not None:
            exiting[r.preempted_for].append(r)
    budget = policy.max_preemptors if policy is not None else 0
    fits_now: dict[Shape, float] = {}  # shape -> longest walltime seen to fit now
    for job in ctx.pending_after_cursor():
        prior = ctx.prior.get(job.id)
        if job.id in exiting or (prior is not None and prior.claim):
            if _honour_claim(ctx, job, waiting=job.id in exiting):
                continue
        if policy is None or not policy.may_preempt(job, ctx):
            continue
        if budget <= 0:
            ctx.plan.truncated = True  # a job that may preempt is left for the next cycle
            continue
        if job.walltime_s <= fits_now.get(job.shape, -1.0) or ctx.refusal(job) is not None:
            continue  # backfill starts it or records the refusal
        if ctx.try_now(job) is not None:
            fits_now[job.shape] = max(job.walltime_s, fits_now.get(job.shape, -1.0))
            continue
        found = policy.victims(job, ctx)
        if found is None:
            continue
        victims, nodes = found
        deadline = ctx.now + policy.grace_s
        for v in victims:
            ctx.plan.preemptions.append(Preemption(v.job.id, job.id, policy.mode, policy.grace_s))
            ctx.profile.end_early(v, deadline)
        _claim(ctx, job, deadline, nodes)
        ctx.forget_fits()
        fits_now.clear()
        budget -= 1


def _honour_claim(ctx: Context, job: Job, waiting: bool) -> bool:
    """A job holding a claim starts as soon as it fits; while its victims are still
    exiting it keeps the claim. True when the job is settled for this cycle."""
    placement = ctx.attempt(job)
    if placement is not None:
        ctx.start(job, placement)
        return True
    if waiting:
        if not ctx.reserve_earliest(job, Reason.PREEMPTING, claim=True):
            ctx.refuse(job, Reason.PREEMPTING)
        return True
    ctx.drop_prior(job)  # victims gone and still no room: it may choose again
    return False


def _claim(ctx: Context, job: Job, deadline: float, nodes: list[str]) -> None:
    """Claim the victims' nodes for ``job`` from their kill deadline on."""
    placement = ctx.profile.place_at(deadline, job.shape, job.walltime_s, nodes)
    if placement is not None:
        ctx.reserve(job, deadline, placement, Reason.PREEMPTING, claim=True)
    else:
        ctx.refuse(job, Reason.PREEMPTING)
