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
``max_preemptors`` preemptors per cycle; a request shape that found no victims
is not searched again in the same cycle.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Annotated, Literal, Self

import msgspec

from policies.base import Policy, settings_of
from policies.priority import Priority
from schedd.core.cluster import NodeFree
from schedd.core.model import ChunkPlacement, Job, Running

if TYPE_CHECKING:
    from schedd.core.context import Context

__all__ = ["Preemption", "PreemptionSettings", "Victims"]

#: What victim selection returns: victims, and the node for each request entry.
Victims = tuple[list[Running], list[str]]
_Cost = tuple[int, float, float]  # (victims, summed priority, run time lost)
_Cand = tuple[Running, ChunkPlacement, tuple[float, float]]  # victim, its chunk here, (priority, run time)


Mode = Literal["requeue", "cancel"]
_Seconds = Annotated[float, msgspec.Meta(ge=0.0)]


class PreemptionSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[preemption]`` table."""

    mode: Mode = "requeue"
    exempt_s: _Seconds = 300.0
    grace_s: _Seconds = 30.0  # victims' SIGTERM->SIGKILL; schedd.toml's kill_delay_s is every other kill's
    max_preemptors: Annotated[int, msgspec.Meta(ge=1)] = 16


_DEFAULT = PreemptionSettings()


class Preemption(Policy):
    name = "preemption"

    def __init__(
        self,
        mode: Mode = _DEFAULT.mode,
        exempt_s: float = _DEFAULT.exempt_s,
        grace_s: float = _DEFAULT.grace_s,
        max_preemptors: int = _DEFAULT.max_preemptors,
    ) -> None:
        self.mode = mode
        self.exempt_s = exempt_s
        self.grace_s = grace_s
        self.max_preemptors = max_preemptors
        self._taken: set[str] = set()
        self._hopeless: set[tuple[object, ...]] = set()
        self._classes: dict[tuple[int, frozenset[str]], dict[str, list[_Cand]]] = {}
        self._tiers: dict[tuple[str, str], tuple[int, frozenset[str]]] = {}  # (queue, QoS) -> tier(), this cycle
        self._running: list[Running] = []
        self._priority: Priority | None = None

    @classmethod
    def from_config(cls, table: object) -> Self:
        s = settings_of(table, PreemptionSettings, cls.name)
        return cls(s.mode, s.exempt_s, s.grace_s, s.max_preemptors)

    def tier(self, job: Job, ctx: Context) -> tuple[int, frozenset[str]]:
        """The job's tier and the queue/QoS names it may preempt: asked per pending
        job per cycle, so worked out once per (queue, QoS) pair a cycle."""
        pair = (job.queue, job.qos)
        known = self._tiers.get(pair)
        if known is None:
            queue, qos = ctx.queue_of(job), ctx.qos_of(job)
            tier = max(queue.tier if queue else 0, qos.tier if qos else 0)
            preempts = (queue.preempts if queue else ()) + (qos.preempts if qos else ())
            known = self._tiers[pair] = (tier, frozenset(preempts))
        return known

    def may_preempt(self, job: Job, ctx: Context) -> bool:
        return bool(self.tier(job, ctx)[1])

    def prepare(self, ctx: Context) -> None:
        prio = ctx.pipeline.policies.get(Priority.name)
        self._priority = prio if isinstance(prio, Priority) else None
        self._taken = set()
        self._hopeless = set()
        self._classes = {}
        self._tiers = {}
        self._running = [
            r
            for r in ctx.snapshot.running
            if r.preempted_for is None and ctx.now - r.start_time >= self.exempt_s
        ]

    def _candidates(self, tier: int, preempts: frozenset[str], ctx: Context) -> dict[str, list[_Cand]]:
        """Per node, the running jobs a job of this tier may evict: built once per cycle
        per (tier, preempts) class, biggest first, then cheapest."""
        key = (tier, preempts)
        by_node = self._classes.get(key)
        if by_node is None:
            by_node = defaultdict(list)
            for r in self._running:
                if ({r.job.queue, r.job.qos} & preempts) and self.tier(r.job, ctx)[0] < tier:
                    cost = (self._prio(r.job, ctx), ctx.now - r.start_time)
                    for cp in r.placement:
                        by_node[cp.node].append((r, cp, cost))
            for cands in by_node.values():
                cands.sort(key=lambda c: (-len(c[1].gpus), -c[1].ncpus, -c[1].mem_mb, c[2]))
            self._classes[key] = by_node
        return by_node

    def victims(self, job: Job, ctx: Context) -> Victims | None:
        """A minimal victim set for ``job``, or None when preemption cannot help."""
        tier, preempts = self.tier(job, ctx)
        if not preempts:
            return None
        hopeless_key = (job.shape, tier, preempts)
        if hopeless_key in self._hopeless:
            return None  # victims only get scarcer within a cycle
        cands = self._candidates(tier, preempts, ctx)
        chosen_nodes: list[str] = []
        victims: list[Running] = []
        for entry in job.shape:
            best = self._best_node(entry, ctx, cands, set(chosen_nodes))
            if best is None:
                self._hopeless.add(hopeless_key)
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
        cands: dict[str, list[_Cand]],
        used: set[str],
    ) -> tuple[str, list[Running]] | None:
        reserved = ctx.profile.reserved
        for nf in ctx.cluster.candidates(entry[2], ctx.spread):
            if nf.name not in used and nf.name not in reserved and nf.fits(*entry):
                return nf.name, []  # fits with no victim: costs nothing
        best: tuple[_Cost, str, list[Running]] | None = None
        for name, node_cands in cands.items():
            node = ctx.cluster.nodes.get(name)
            if node is None or not node.up or name in used or name in reserved:
                continue
            found = self._on_node(node, entry, node_cands)
            if found is None:
                continue
            cost, vs = found
            if best is None or cost < best[0]:
                best = (cost, name, vs)
        return None if best is None else (best[1], best[2])

    def _on_node(
        self, nf: NodeFree, entry: tuple[int, int, int], cands: list[_Cand]
    ) -> tuple[_Cost, list[Running]] | None:
        """Fewest victims on one node that make ``entry`` fit, with their cost."""
        cpus, mem, gpus = nf.cpus, nf.mem_mb, nf.ngpus
        need_c, need_m, need_g = entry
        live = [c for c in cands if c[0].job.id not in self._taken]
        # One victim that is enough on its own: the cheapest such.
        singles = [
            c
            for c in live
            if cpus + c[1].ncpus >= need_c and mem + c[1].mem_mb >= need_m and gpus + len(c[1].gpus) >= need_g
        ]
        if singles:
            r, _, cost = min(singles, key=lambda c: c[2])
            return (1, *cost), [r]
        chosen: list[_Cand] = []
        for c in live:  # biggest first: the fewest victims for the request
            chosen.append(c)
            cpus += c[1].ncpus
            mem += c[1].mem_mb
            gpus += len(c[1].gpus)
            if cpus >= need_c and mem >= need_m and gpus >= need_g:
                prio = sum(c[2][0] for c in chosen)
                lost = sum(c[2][1] for c in chosen)
                return (len(chosen), prio, lost), [c[0] for c in chosen]
        return None

    def _prio(self, job: Job, ctx: Context) -> float:
        """A victim's priority: the multifactor value if configured, else ``qsub -p``."""
        return self._priority.value(job, ctx) if self._priority is not None else float(job.priority)
