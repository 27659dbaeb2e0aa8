"""preempt: evict lower-tier jobs for blocked higher-tier ones.

Rules:

1. A job whose victims are already exiting (chosen in an earlier cycle) is
   reserved where it can start and waits with reason Preempting: it never
   chooses a second set of victims.
2. Otherwise, walking blocked jobs in priority order, a job that may preempt
   and does not fit now asks the first policy with a ``victims`` hook.
3. Victims are told to go (SIGTERM, then SIGKILL after ``grace_s``); in this
   cycle's profile their resources come back at that deadline, and the
   preemptor is reserved on them from then on, so nothing else takes them.
4. At most ``max_preemptors`` jobs preempt per cycle.
"""

from __future__ import annotations

from collections import defaultdict

from schedd.context import Context, Preemption
from schedd.model import Job, Reason, Running

__all__ = ["run"]


def run(ctx: Context) -> None:
    policy = ctx.pipeline.victims_policy
    exiting: dict[str, list[Running]] = defaultdict(list)
    for r in ctx.snapshot.running:
        if r.preempted_for is not None:
            exiting[r.preempted_for].append(r)
    budget = getattr(policy, "max_preemptors", 0)
    for job in ctx.pending_after_cursor():
        if job.id in exiting:
            _reserve(ctx, job, None)
            continue
        if policy is None or not policy.may_preempt(job, ctx):
            continue
        if budget <= 0:
            ctx.plan.truncated = True  # a job that may preempt is left for the next cycle
            continue
        if ctx.refusal(job) is not None or ctx.try_now(job) is not None:
            continue  # backfill records the refusal or starts it
        found = policy.victims(job, ctx)
        if found is None:
            continue
        victims, nodes = found
        deadline = ctx.now + policy.grace_s
        for v in victims:
            ctx.plan.preemptions.append(Preemption(v.job.id, job.id, policy.mode, policy.grace_s))
            ctx.profile.end_early(v, deadline)
        _reserve(ctx, job, nodes)
        ctx.forget_fits()
        budget -= 1


def _reserve(ctx: Context, job: Job, nodes: list[str] | None) -> None:
    """Reserve ``job`` at its earliest start (on ``nodes`` if given); reason Preempting."""
    if nodes is not None:
        t = ctx.now + getattr(ctx.pipeline.victims_policy, "grace_s", 0.0)
        placement = ctx.profile.place_at(t, job.shape, job.walltime_s, nodes)
        found = None if placement is None else (t, placement)
    else:
        found = ctx.profile.earliest(job.shape, job.walltime_s)
    if found is not None:
        ctx.reserve(job, found[0], found[1], Reason.PREEMPTING)
    else:
        ctx.refuse(job, Reason.PREEMPTING)
