"""Resizing a node group without killing work: drain the highest ordinals, shrink once they are empty.

A StatefulSet scaled from N to M replicas removes pods ``M .. N-1``, highest
first; Kubernetes knows nothing of the jobs on them. So lowering a group's
count from N to M goes:

1. nodes ``<group>-M .. <group>-(N-1)`` are drained at once (the fleet's
   ``draining``: they run what they have and take nothing new; a node whose
   agent registers only later, its pod having been Pending, is drained as it
   registers), in the same step as the decision, so no cycle can place a job
   between the two;
2. the StatefulSet's replicas go down only as far as their work allows: to
   one more than the highest removed ordinal that still holds a job. Empty top
   ordinals go at once; a pod with a running job is never removed. A job
   holds its node until it exits, or until its walltime and the kill delay
   are over (the agent kills it at its walltime; a node whose agent stopped
   answering must not hold the pool up for ever);
3. once a removed pod is gone, its node's drain is lifted: the node is down,
   ``removed by scale-down``, and comes back free if the group grows again.

Raising the count lifts the drain of every ordinal wanted again and scales up
at once. Pure bookkeeping over the fleet: :class:`~.driver.KubeDriver` asks
:meth:`Resizer.plan` what each StatefulSet may have now and applies it.
"""

from __future__ import annotations

from schedd.core.model import NodeState
from schedd.daemon.fleet import Fleet

__all__ = ["REMOVED", "Resizer"]

REMOVED = "removed by scale-down"


class Resizer:
    """Wanted counts by group, the StatefulSets' replicas, and the drains between them."""

    def __init__(self, fleet: Fleet, counts: dict[str, int]) -> None:
        self.fleet = fleet
        #: What the operator wants (pool.toml, then the scale command).
        self.target = dict(counts)
        #: What each StatefulSet has: read at start, then as last applied.
        self.replicas: dict[str, int] = {}

    def node(self, name: str) -> tuple[str, int] | None:
        """``gpu8-3`` -> (``gpu8``, 3) for a group of this pool (names may contain ``-``)."""
        group, _, ordinal = name.rpartition("-")
        return (group, int(ordinal)) if group in self.target and ordinal.isdigit() else None

    def want(self, group: str, count: int) -> None:
        self.target[group] = count
        if self.fleet.pool is not None:
            self.fleet.pool.size[group] = count

    def draining(self, group: str) -> list[str]:
        pool = self.fleet.pool
        names = pool.draining if pool is not None else {}
        return sorted((n for n in names if (g := self.node(n)) and g[0] == group), key=lambda n: self.node(n) or ("", 0))

    def plan(self, held: frozenset[str]) -> dict[str, int]:
        """Drain what must go and lift drains no longer needed, now; return the
        replicas each group's StatefulSet may have now (never fewer than one
        more than a removed ordinal that holds work)."""
        out: dict[str, int] = {}
        for group, target in self.target.items():
            live = self.replicas.get(group, target)
            keep = target
            for i in range(target, live):
                name = f"{group}-{i}"
                self._drain(name, f"scale-down of {group} to {target}: draining, removed once its jobs end")
                if name in held:
                    keep = i + 1
            out[group] = keep
        pool = self.fleet.pool
        for name in list(pool.draining if pool is not None else ()):
            group, i = self.node(name) or ("", 0)
            if group not in self.target or i < self.target[group]:
                self._lift(name, "")  # wanted again
            elif pool is not None and i >= self.replicas.get(group, self.target[group]) and name not in pool.pods:
                self._lift(name, REMOVED)
        return out

    def _drain(self, name: str, comment: str) -> None:
        """Drain a node to remove; one an operator holds (offline, drained) stays theirs and is not recorded."""
        pool = self.fleet.pool
        if pool is None or name in pool.draining:
            return
        entry = self.fleet.get(name)
        if entry is not None and entry.admin_state is not None:
            return
        pool.draining[name] = comment
        if entry is not None:
            self.fleet.set_admin(entry, NodeState.DRAINING, comment)

    def _lift(self, name: str, comment: str) -> None:
        pool = self.fleet.pool
        if pool is not None:
            pool.draining.pop(name, None)
        entry = self.fleet.get(name)
        if entry is not None and entry.admin_state is NodeState.DRAINING:
            self.fleet.set_admin(entry, None, comment)
