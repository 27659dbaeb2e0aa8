"""The running jobs' :class:`~schedd.core.profile.Occupancy`, kept in step with
``State.active`` so that a cycle copies free resources in O(nodes) instead of
rebuilding them from every running job (the simulator keeps one the same way).

The State tells it of each change: a job holding nodes from now on
(:meth:`Occupied.add`), one giving them back (:meth:`Occupied.remove`), and a
running job's planned end moving (:meth:`Occupied.moved`: a preemption's
deadline, an overdue job's kill). The node list is the fleet's, which changes
under it (a node joins, goes down, drains): :meth:`Occupied.of` rebuilds from
the running jobs whenever the list differs from the one it was built for.

Conservative backfill's cross-cycle plan (:mod:`schedd.core.replan`) is kept
off: it assumes a job never holds its nodes past its planned end, and a
daemon's overdue job does, until its agent has killed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from schedd.core.model import Node, Running
from schedd.core.profile import Occupancy

__all__ = ["Occupied"]


class Occupied:
    def __init__(self) -> None:
        self._occ: Occupancy | None = None
        self._nodes: list[tuple[object, ...]] = []  # what the occupancy was built from (see _key)
        #: job id -> the Running the occupancy holds (a job on a node it does not know is left out)
        self._held: dict[str, Running] = {}

    def add(self, r: Running) -> None:
        occ = self._occ
        if occ is not None and r.job.id not in self._held and all(cp.node in occ.cluster.nodes for cp in r.placement):
            occ.add(r)
            self._held[r.job.id] = r

    def remove(self, job_id: str) -> None:
        r = self._held.pop(job_id, None)
        if r is not None and self._occ is not None:
            self._occ.remove(r)

    def moved(self, r: Running) -> None:
        """``r.end_by`` changed."""
        if self._occ is not None and self._held.get(r.job.id) is r:
            self._occ.set_end(r)

    def of(self, nodes: Sequence[Node], running: Iterable[Running]) -> Occupancy:
        """The occupancy for these nodes; rebuilt from ``running`` (every job holding
        nodes now) when the nodes are not those it was built for. O(nodes) else."""
        key = [_key(n) for n in nodes]
        if self._occ is None or key != self._nodes:
            self._nodes = key
            self._occ, self._held = Occupancy(nodes, replannable=False), {}
            for r in running:
                self.add(r)
        return self._occ


def _key(node: Node) -> tuple[object, ...]:
    """What the free-resource index is built from; a copy, since the fleet changes
    a node's state in place (it goes down, is drained)."""
    return node.name, node.cpus, node.mem_mb, node.gpus, node.state
