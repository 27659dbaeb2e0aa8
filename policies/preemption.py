"""Preemption: evict lower-tier jobs so that a blocked higher-tier job can run.

Tiers come from queues and QoS: a job's tier is the higher of its queue's and its
QoS's ``tier``; it may preempt a running job only when that job's queue or QoS
is named in its ``preempts`` list **and** the victim's tier is strictly lower.
Never a job of the same or a higher tier.

Choosing victims, for each node entry of the blocked job's request:

1. On each node (up, not already promised to a reservation), candidate victims
   are the preemptable jobs that have run at least ``exempt_s``.
2. Take them largest-first (GPUs, then CPUs, then memory) until the free
   resources plus theirs fit the entry; largest-first gives the fewest victims.
   Equal sizes go lowest priority first, then least run time lost.
3. Across nodes pick the cheapest: (fewest victims, lowest summed priority,
   least run time lost); nodes that fit with no victim cost nothing.

Victims get SIGTERM and ``grace_s`` seconds before SIGKILL, then are requeued
(``mode = "requeue"``) or cancelled (``"cancel"``). They keep their resources
until they really exit; the preemptor is reserved on them meanwhile, so backfill
cannot take what was freed for it.

Cost: O(nodes x victims per node) per preemptor, at most
``max_preemptors`` preemptors per cycle.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Self

from policies.base import Options, Policy
from schedd.model import ChunkPlacement, Job, Running

if TYPE_CHECKING:
    from schedd.context import Context

__all__ = ["Preemption", "Victims"]

#: What victim selection returns: victims, and the node for each request entry.
Victims = tuple[list[Running], list[str]]
_Cost = tuple[int, float, float]


class Preemption(Policy):
    name = "preemption"

    def __init__(
        self,
        mode: str = "requeue",
        exempt_s: float = 300.0,
        grace_s: float = 30.0,
        max_preemptors: int = 16,
    ) -> None:
        self.mode = mode
        self.exempt_s = exempt_s
        self.grace_s = grace_s
        self.max_preemptors = max_preemptors
        self._by_node: dict[str, list[tuple[Running, ChunkPlacement]]] = {}
        self._taken: set[str] = set()

    @classmethod
    def configure(cls, opts: Options) -> Self:
        return cls(
            opts.choice("mode", "requeue", ("requeue", "cancel")),
            opts.number("exempt_s", 300.0),
            opts.number("grace_s", 30.0),
            opts.integer("max_preemptors", 16, min=1) or 16,
        )

    def tier(self, job: Job, ctx: Context) -> tuple[int, frozenset[str]]:
        """The job's tier and the queue/QoS names it may preempt."""
        queue, qos = ctx.queue_of(job), ctx.qos_of(job)
        tier = max(queue.tier if queue else 0, qos.tier if qos else 0)
        preempts = (queue.preempts if queue else ()) + (qos.preempts if qos else ())
        return tier, frozenset(preempts)

    def may_preempt(self, job: Job, ctx: Context) -> bool:
        return bool(self.tier(job, ctx)[1])

    def prepare(self, ctx: Context) -> None:
        self._taken = set()
        by_node: dict[str, list[tuple[Running, ChunkPlacement]]] = defaultdict(list)
        for r in ctx.snapshot.running:
            if r.preempted_for is None and ctx.now - r.start_time >= self.exempt_s:
                for cp in r.placement:
                    by_node[cp.node].append((r, cp))
        self._by_node = by_node

    def victims(self, job: Job, ctx: Context) -> Victims | None:
        """A minimal victim set for ``job``, or None when preemption cannot help."""
        tier, preempts = self.tier(job, ctx)
        if not preempts:
            return None

        def eligible(r: Running) -> bool:
            if r.job.id in self._taken:
                return False
            names = {r.job.queue, r.job.qos}
            return bool(names & preempts) and self.tier(r.job, ctx)[0] < tier

        chosen_nodes: list[str] = []
        victims: list[Running] = []
        for entry in job.shape:
            best = self._best_node(entry, ctx, eligible, set(chosen_nodes))
            if best is None:
                return None
            node, vs = best
            chosen_nodes.append(node)
            victims.extend(v for v in vs if v not in victims)
        if not victims:
            return None
        self._taken.update(v.job.id for v in victims)
        return victims, chosen_nodes

    def _best_node(
        self,
        entry: tuple[int, int, int],
        ctx: Context,
        eligible: object,
        used: set[str],
    ) -> tuple[str, list[Running]] | None:
        best: tuple[_Cost, str, list[Running]] | None = None
        for name, nf in ctx.cluster.nodes.items():
            if not nf.up or name in used or name in ctx.profile.reserved:
                continue
            vs = self._on_node(name, entry, ctx, eligible)
            if vs is None:
                continue
            cost = (len(vs), sum(_prio(v.job, ctx) for v in vs), sum(ctx.now - v.start_time for v in vs))
            if best is None or cost < best[0]:
                best = (cost, name, vs)
                if cost[0] == 0:
                    break
        return None if best is None else (best[1], best[2])

    def _on_node(
        self, name: str, entry: tuple[int, int, int], ctx: Context, eligible: object
    ) -> list[Running] | None:
        nf = ctx.cluster.nodes[name]
        cpus, mem, gpus = nf.cpus, nf.mem_mb, nf.ngpus
        need_c, need_m, need_g = entry
        if cpus >= need_c and mem >= need_m and gpus >= need_g:
            return []
        cands = [(r, cp) for r, cp in self._by_node.get(name, ()) if eligible(r)]  # type: ignore[operator]
        cost = {id(r): (_prio(r.job, ctx), ctx.now - r.start_time) for r, _ in cands}
        # One victim that is enough on its own: the cheapest such.
        singles = [
            (cost[id(r)], r)
            for r, cp in cands
            if cpus + cp.ncpus >= need_c and mem + cp.mem_mb >= need_m and gpus + len(cp.gpus) >= need_g
        ]
        if singles:
            return [min(singles, key=lambda cr: cr[0])[1]]
        cands.sort(key=lambda rc: (-len(rc[1].gpus), -rc[1].ncpus, -rc[1].mem_mb, cost[id(rc[0])]))
        chosen: list[Running] = []
        for r, cp in cands:
            chosen.append(r)
            cpus += cp.ncpus
            mem += cp.mem_mb
            gpus += len(cp.gpus)
            if cpus >= need_c and mem >= need_m and gpus >= need_g:
                return chosen
        return None


def _prio(job: Job, ctx: Context) -> float:
    prio = ctx.pipeline.policies.get("priority")
    value = getattr(prio, "value", None)
    return float(value(job, ctx)) if value is not None else float(job.priority)
