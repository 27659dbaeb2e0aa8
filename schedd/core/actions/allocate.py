"""allocate: start jobs in priority order until the first one that does not fit.

Strict order is the point: the first job that cannot start (reason Resources)
stops the walk, and everything behind it waits on Priority unless a later
action (backfill) proves it can pass without delaying anyone. Jobs refused by a
limit or that can never run do not block the jobs behind them.
"""

from __future__ import annotations

from schedd.core.context import Context
from schedd.core.model import Reason

__all__ = ["run"]


def run(ctx: Context) -> None:
    for i, job in enumerate(ctx.order):
        if job.id in ctx.settled:
            continue
        reason = ctx.refusal(job)
        if reason is not None:
            ctx.refuse(job, reason)
            continue
        placement = ctx.attempt(job)
        if placement is None:
            ctx.cursor = i
            ctx.plan.reasons[job.id] = Reason.RESOURCES
            return
        ctx.start(job, placement)
    ctx.cursor = len(ctx.order)
