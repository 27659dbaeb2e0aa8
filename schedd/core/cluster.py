"""Free resources right now, per node, with the indexes that make "does it fit" cheap.

The cycle asks "where could this request run *now*" thousands of times. Two
indexes keep that cheap:

* nodes are bucketed by their number of free GPUs, so best-fit packing looks at
  the bucket of exactly the need first, then the next one up (O(1) per probe in
  the common case), and spread starts from the top bucket;
* the largest free GPU count is the highest non-empty bucket, and per-node upper
  bounds on free CPUs and memory only ever shrink within a cycle, so a request
  larger than every node's free slot is refused in O(1).

GPUs are an int bitmask per node (bit i = GPU index i free): set operations and
popcounts are single machine operations instead of Python sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from schedd.core.model import ChunkPlacement, Node, NodeState, Placement, Running, Shape

__all__ = ["Cluster", "NodeFree", "chunk_on", "gpu_indices", "lowest_bits"]


def lowest_bits(mask: int, n: int) -> int:
    """The ``n`` lowest set bits of ``mask`` (a GPU choice), or -1 if it has fewer.

    >>> bin(lowest_bits(0b101101, 2))
    '0b101'
    >>> lowest_bits(0b1, 2)
    -1
    """
    chosen = 0
    for _ in range(n):
        if not mask:
            return -1
        low = mask & -mask
        chosen |= low
        mask ^= low
    return chosen


def gpu_indices(mask: int) -> tuple[int, ...]:
    """The GPU indices set in ``mask``.

    >>> gpu_indices(0b1010)
    (1, 3)
    """
    out = []
    i = 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return tuple(out)


def _mask_of(indices: Iterable[int]) -> int:
    m = 0
    for i in indices:
        m |= 1 << i
    return m


class NodeFree:
    """One node's free resources at ``now``: counts and a GPU bitmask."""

    __slots__ = ("name", "cpus", "mem_mb", "gpus", "ngpus", "up", "total")

    def __init__(self, node: Node) -> None:
        self.name = node.name
        self.cpus = node.cpus
        self.mem_mb = node.mem_mb
        self.gpus = _mask_of(g.index for g in node.gpus)
        self.ngpus = node.ngpus
        self.up = node.state is NodeState.UP
        self.total = (node.cpus, node.mem_mb, node.ngpus)

    def copy(self) -> NodeFree:
        twin = NodeFree.__new__(NodeFree)
        twin.name, twin.cpus, twin.mem_mb, twin.gpus = self.name, self.cpus, self.mem_mb, self.gpus
        twin.ngpus, twin.up, twin.total = self.ngpus, self.up, self.total
        return twin

    def fits(self, cpus: int, mem_mb: int, ngpus: int) -> bool:
        return self.ngpus >= ngpus and self.cpus >= cpus and self.mem_mb >= mem_mb


class Cluster:
    """Free resources now, for the nodes that take new work, with a bucket index.

    Mutated only through :meth:`take` and :meth:`give`, which keep the index true.
    """

    def __init__(self, nodes: Sequence[Node], running: Iterable[Running]) -> None:
        self.nodes: dict[str, NodeFree] = {n.name: NodeFree(n) for n in nodes}
        for r in running:
            for cp in r.placement:
                nf = self.nodes.get(cp.node)
                if nf is not None:
                    self._sub(nf, cp.ncpus, cp.mem_mb, _mask_of(cp.gpus))
        self._cap = _capacity_bounds(nodes)
        #: Identifies the pool's node sizes: "can never run" answers stay valid while it holds.
        self.capacity = (frozenset(self._cap[0].items()), self._cap[1])
        self._build_index()

    def _build_index(self) -> None:
        top = max((nf.total[2] for nf in self.nodes.values()), default=0)
        self.buckets: list[dict[str, NodeFree]] = [{} for _ in range(top + 1)]
        for nf in self.nodes.values():
            if nf.up:
                self.buckets[nf.ngpus][nf.name] = nf
        self.max_gpus = self._top_bucket()
        up = [nf for nf in self.nodes.values() if nf.up]
        self.max_free_cpus = max((nf.cpus for nf in up), default=0)
        self.max_free_mem = max((nf.mem_mb for nf in up), default=0)

    def copy(self) -> Cluster:
        """An independent copy for one cycle's what-ifs. O(nodes), not O(running jobs)."""
        twin = Cluster.__new__(Cluster)
        twin.nodes = {name: nf.copy() for name, nf in self.nodes.items()}
        twin._cap = self._cap
        twin.capacity = self.capacity
        twin._build_index()
        return twin

    # -- questions --------------------------------------------------------

    def can_ever_fit(self, shape: Shape) -> bool:
        """Whether the pool's nodes (in any state) could ever hold ``shape``.

        Entries, largest first, each take the smallest node size that holds them
        and still has a node left; the node sizes are a handful of node groups,
        so this is cheap, and the result is cached per shape by the caller.
        """
        left = dict(self._cap[0])
        for entry in shape:
            fitting = [size for size, n in left.items() if n > 0 and _holds(size, entry)]
            if not fitting:
                return False
            smallest = min(fitting, key=lambda size: (size[2], size[0], size[1]))
            left[smallest] -= 1
        return True

    def _top_bucket(self) -> int:
        """The largest number of free GPUs on one up node (-1: no up node). O(buckets)."""
        for g in range(len(self.buckets) - 1, -1, -1):
            if self.buckets[g]:
                return g
        return -1

    def quick_reject(self, shape: Shape) -> bool:
        """True when some entry of ``shape`` cannot fit on any node now.

        ``max_gpus`` is exact, the CPU and memory maxima are upper bounds, so
        False does not promise a fit. O(entries).
        """
        if shape[0][2] > self.max_gpus:
            return True
        mc, mm = self.max_free_cpus, self.max_free_mem
        for c, m, _ in shape:
            if c > mc or m > mm:
                return True
        return False

    def candidates(self, ngpus: int, spread: bool) -> Iterator[NodeFree]:
        """Up nodes with at least ``ngpus`` free GPUs: tightest first, or loosest first."""
        top = len(self.buckets) - 1
        order = range(top, ngpus - 1, -1) if spread else range(ngpus, top + 1)
        for g in order:
            yield from list(self.buckets[g].values())

    # -- changes ----------------------------------------------------------

    def take(self, placement: Placement) -> None:
        """Mark a placement's resources as used. O(chunks)."""
        for cp in placement:
            nf = self.nodes[cp.node]
            self._unindex(nf)
            self._sub(nf, cp.ncpus, cp.mem_mb, _mask_of(cp.gpus))
            self._index(nf)

    def give(self, placement: Placement) -> None:
        """Undo :meth:`take` (a what-if that was not kept). O(chunks)."""
        for cp in placement:
            nf = self.nodes[cp.node]
            self._unindex(nf)
            self._add(nf, cp.ncpus, cp.mem_mb, _mask_of(cp.gpus))
            self._index(nf)
            self.max_free_cpus = max(self.max_free_cpus, nf.cpus)
            self.max_free_mem = max(self.max_free_mem, nf.mem_mb)

    def _unindex(self, nf: NodeFree) -> None:
        if nf.up:
            del self.buckets[nf.ngpus][nf.name]

    def _index(self, nf: NodeFree) -> None:
        if nf.up:
            self.buckets[nf.ngpus][nf.name] = nf
            if nf.ngpus > self.max_gpus or not self.buckets[self.max_gpus]:
                self.max_gpus = self._top_bucket()

    @staticmethod
    def _sub(nf: NodeFree, cpus: int, mem_mb: int, mask: int) -> None:
        nf.cpus -= cpus
        nf.mem_mb -= mem_mb
        nf.gpus &= ~mask
        nf.ngpus = nf.gpus.bit_count()

    @staticmethod
    def _add(nf: NodeFree, cpus: int, mem_mb: int, mask: int) -> None:
        nf.cpus += cpus
        nf.mem_mb += mem_mb
        nf.gpus |= mask
        nf.ngpus = nf.gpus.bit_count()


def _capacity_bounds(nodes: Sequence[Node]) -> tuple[dict[tuple[int, int, int], int], int]:
    """How many nodes there are of each size ``(cpus, mem_mb, ngpus)``, and in all."""
    sizes: dict[tuple[int, int, int], int] = {}
    for n in nodes:
        size = (n.cpus, n.mem_mb, n.ngpus)
        sizes[size] = sizes.get(size, 0) + 1
    return sizes, len(nodes)


def _holds(size: tuple[int, int, int], entry: tuple[int, int, int]) -> bool:
    return size[0] >= entry[0] and size[1] >= entry[1] and size[2] >= entry[2]


def chunk_on(nf: NodeFree, cpus: int, mem_mb: int, gpu_mask: int) -> ChunkPlacement:
    """A chunk placement record for ``nf`` with the GPUs in ``gpu_mask``."""
    return ChunkPlacement(nf.name, cpus, mem_mb, gpu_indices(gpu_mask))
