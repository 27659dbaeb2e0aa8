"""Which nodes hold work that a scale-down must wait for: one rule for every pool driver.

Used by the local pool (stop a drained node's agent once it is empty) and the
Kubernetes driver (shrink a StatefulSet past empty pods; the busy label).
"""

from __future__ import annotations

from dataclasses import dataclass

from schedd.daemon.state import State

__all__ = ["Holding", "holding"]


@dataclass(frozen=True, slots=True)
class Holding:
    """The nodes whose work keeps their pod, and when the first of those holds ends by time alone."""

    nodes: frozenset[str]
    until: float | None  # the earliest walltime + kill delay among them (None: no walltime in sight)


def holding(state: State, now: float) -> Holding:
    """Nodes with a rank that has not exited (launched, or held for its gang's rank 0),
    unless its job's walltime and the kill delay are over. O(active ranks)."""
    grace = state.settings.kill_delay_s
    nodes: set[str] = set()
    until: float | None = None
    for act in state.active.values():
        deadline = act.running.end_by + grace
        if now >= deadline:
            continue
        for rank, cp in enumerate(act.running.placement):
            if act.exits[rank] is None:
                nodes.add(cp.node)
                until = deadline if until is None else min(until, deadline)
    return Holding(frozenset(nodes), until)
