"""schedd.core.cluster: the free-now view, its free-GPU buckets and the O(1) fast paths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.core.cluster import Cluster, NodeFree, chunk_on, gpu_indices, lowest_bits
from schedd.core.model import Chunk, ChunkPlacement, Gpu, Node, NodeState, Running, shape_of
from tests.builders import gpu_nodes, job, running


def node(name: str, gpus: int, cpus: int = 64, mem_mb: int = 1024, state: NodeState = NodeState.UP) -> Node:
    return Node(name, cpus, mem_mb, tuple(Gpu(i) for i in range(gpus)), state=state)


def top(c: Cluster) -> int:
    """The cluster's largest free GPU count on an up node (-1: none), as it reports it."""
    return c.max_gpus


def bucket_names(c: Cluster) -> list[set[str]]:
    return [set(b) for b in c.buckets]


def shape(*entries: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
    return tuple(entries)


# ------------------------------------------------------------------ bit helpers


@pytest.mark.parametrize(
    ("mask", "n", "expected"),
    [
        (0b101101, 2, 0b000101),
        (0b101101, 4, 0b101101),
        (0b101101, 5, -1),
        (0b11110000, 3, 0b01110000),
        (0b1, 0, 0),
        (0, 0, 0),
        (0, 1, -1),
        ((1 << 63) | 1, 2, (1 << 63) | 1),
    ],
)
def test_lowest_bits(mask: int, n: int, expected: int) -> None:
    assert lowest_bits(mask, n) == expected


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(0, ()), (0b1, (0,)), (0b1010, (1, 3)), (0xFF, tuple(range(8))), (1 << 15, (15,))],
)
def test_gpu_indices(mask: int, expected: tuple[int, ...]) -> None:
    assert gpu_indices(mask) == expected


@given(st.integers(min_value=0, max_value=(1 << 16) - 1), st.integers(min_value=0, max_value=16))
def test_lowest_bits_is_the_n_smallest_indices(mask: int, n: int) -> None:
    chosen = lowest_bits(mask, n)
    free = gpu_indices(mask)
    if n > len(free):
        assert chosen == -1
    else:
        assert gpu_indices(chosen) == free[:n]
        assert chosen & ~mask == 0


def test_chunk_on_records_node_and_concrete_gpus() -> None:
    nf = NodeFree(node("n3", 8))
    assert chunk_on(nf, 4, 100, 0b1100_0000) == ChunkPlacement("n3", 4, 100, (6, 7))


# ------------------------------------------------------------------ building


def test_free_resources_subtract_running_jobs() -> None:
    nodes = gpu_nodes(2, gpus=8, cpus=64, mem_mb=1000)
    a = job(1).chunks(gpus=3, cpus=10, mem_mb=300).build()
    b = job(2).chunks(gpus=2, cpus=5, mem_mb=100).build()
    c = Cluster(nodes, [running(a, "n0", (0, 2, 4)), running(b, "n0", (1, 7))])
    n0 = c.nodes["n0"]
    assert (n0.cpus, n0.mem_mb, n0.ngpus) == (49, 600, 3)
    assert gpu_indices(n0.gpus) == (3, 5, 6)
    n1 = c.nodes["n1"]
    assert (n1.cpus, n1.mem_mb, n1.ngpus, n1.gpus) == (64, 1000, 8, 0xFF)


def test_running_job_on_unknown_node_is_ignored() -> None:
    a = job(1).chunks(gpus=2).build()
    c = Cluster(gpu_nodes(1), [running(a, "gone", (0, 1))])
    assert c.nodes["n0"].ngpus == 8
    assert "gone" not in c.nodes


def test_buckets_index_up_nodes_by_free_gpus() -> None:
    nodes = [node("a", 8), node("b", 8), node("c", 4), node("d", 0), node("down", 8, state=NodeState.DOWN),
             node("drain", 8, state=NodeState.DRAINING)]
    used = job(1).chunks(gpus=6).build()
    c = Cluster(nodes, [running(used, "b", (0, 1, 2, 3, 4, 5))])
    expected: list[set[str]] = [set() for _ in range(9)]
    expected[8] = {"a"}
    expected[2] = {"b"}
    expected[4] = {"c"}
    expected[0] = {"d"}
    assert bucket_names(c) == expected
    assert top(c) == 8


def test_max_free_gpus_is_minus_one_without_up_nodes() -> None:
    c = Cluster([node("x", 8, state=NodeState.OFFLINE)], [])
    assert top(c) == -1
    assert list(c.candidates(0, spread=False)) == []


def test_empty_cluster() -> None:
    c = Cluster([], [])
    assert top(c) == -1
    assert c.quick_reject(shape((1, 0, 0)))
    assert not c.can_ever_fit(shape((1, 0, 0)))


# ------------------------------------------------------------------ candidates


def test_candidates_pack_is_tightest_first_and_spread_loosest_first() -> None:
    nodes = [node("a", 8), node("b", 8), node("c", 8)]
    j1 = job(1).chunks(gpus=6).build()
    j2 = job(2).chunks(gpus=3).build()
    c = Cluster(nodes, [running(j1, "b", tuple(range(6))), running(j2, "c", (0, 1, 2))])
    # free: a=8, b=2, c=5
    assert [nf.name for nf in c.candidates(2, spread=False)] == ["b", "c", "a"]
    assert [nf.name for nf in c.candidates(3, spread=False)] == ["c", "a"]
    assert [nf.name for nf in c.candidates(2, spread=True)] == ["a", "c", "b"]
    assert [nf.name for nf in c.candidates(9, spread=False)] == []
    # CPU-only requests look at GPU-less (or GPU-full) nodes first when packing
    assert [nf.name for nf in c.candidates(0, spread=False)][0] == "b"


def test_candidates_skip_nodes_that_are_not_up() -> None:
    nodes = [node("a", 8, state=NodeState.DRAINING), node("b", 8)]
    c = Cluster(nodes, [])
    assert [nf.name for nf in c.candidates(1, spread=False)] == ["b"]


# ------------------------------------------------------------------ quick_reject / can_ever_fit


def test_quick_reject_on_gpus_cpus_and_memory() -> None:
    nodes = [node("a", 8, cpus=32, mem_mb=1000), node("b", 4, cpus=64, mem_mb=500)]
    hog = job(1).chunks(gpus=6, cpus=1).build()
    c = Cluster(nodes, [running(hog, "a", tuple(range(6)))])
    # free: a = 2 GPUs / 31 cpus / 1000 MB, b = 4 GPUs / 64 cpus / 500 MB
    assert top(c) == 4
    assert c.quick_reject(shape((1, 0, 5)))
    assert not c.quick_reject(shape((1, 0, 4)))
    assert c.quick_reject(shape((65, 0, 0)))
    assert not c.quick_reject(shape((64, 0, 0)))
    assert c.quick_reject(shape((1, 1001, 0)))
    # the check covers every entry, not only the first (largest-GPU) one
    assert c.quick_reject(shape((1, 0, 2), (1, 2000, 0)))
    # upper bounds only: False does not promise a fit (64 cpus and 1000 MB are on different nodes)
    assert not c.quick_reject(shape((64, 1000, 0)))


def test_quick_reject_ignores_nodes_that_are_not_up() -> None:
    nodes = [node("big", 8, cpus=128, state=NodeState.DOWN), node("small", 2, cpus=8)]
    c = Cluster(nodes, [])
    assert c.quick_reject(shape((1, 0, 4)))
    assert c.quick_reject(shape((16, 0, 0)))
    assert not c.quick_reject(shape((8, 0, 2)))


def test_can_ever_fit_uses_configured_sizes_in_any_state() -> None:
    nodes = [node("big", 8, cpus=128, mem_mb=4096, state=NodeState.DOWN), node("small", 2, cpus=8, mem_mb=512)]
    busy = job(1).chunks(gpus=2, cpus=8).build()
    c = Cluster(nodes, [running(busy, "small", (0, 1))])
    assert c.can_ever_fit(shape((128, 4096, 8)))  # the down node could take it one day
    assert not c.can_ever_fit(shape((129, 0, 0)))
    assert not c.can_ever_fit(shape((1, 4097, 0)))
    assert not c.can_ever_fit(shape((1, 0, 9)))
    # one entry too big for "small" but not for "big": still ok, both nodes together
    assert c.can_ever_fit(shape((100, 0, 8), (8, 512, 2)))
    # more entries than nodes can never run
    assert not c.can_ever_fit(shape((1, 0, 0), (1, 0, 0), (1, 0, 0)))


def test_can_ever_fit_counts_nodes_big_enough_for_each_gang_entry() -> None:
    nodes = [node("big", 8)] + [node(f"s{i}", 1) for i in range(4)]
    c = Cluster(nodes, [])
    assert not c.can_ever_fit(shape_of((Chunk(ngpus=8, count=2),)))


# ------------------------------------------------------------------ take / give


def test_take_and_give_move_a_node_between_buckets() -> None:
    c = Cluster([node("a", 8), node("b", 8)], [])
    p = (ChunkPlacement("a", 4, 100, (0, 1, 2)),)
    c.take(p)
    a = c.nodes["a"]
    assert (a.cpus, a.mem_mb, a.ngpus, gpu_indices(a.gpus)) == (60, 924, 5, (3, 4, 5, 6, 7))
    assert set(c.buckets[5]) == {"a"}
    assert set(c.buckets[8]) == {"b"}
    c.give(p)
    assert (a.cpus, a.mem_mb, a.ngpus, a.gpus) == (64, 1024, 8, 0xFF)
    assert set(c.buckets[8]) == {"a", "b"}
    assert c.buckets[5] == {}


def test_take_gang_placement_on_two_nodes_and_max_free_gpus_follows() -> None:
    c = Cluster(gpu_nodes(2), [])
    p = (ChunkPlacement("n0", 1, 0, tuple(range(8))), ChunkPlacement("n1", 1, 0, tuple(range(8))))
    c.take(p)
    assert top(c) == 0
    assert set(c.buckets[0]) == {"n0", "n1"}
    assert c.quick_reject(shape((1, 0, 1)))
    c.give(p)
    assert top(c) == 8
    assert not c.quick_reject(shape((64, 0, 8)))


def test_take_on_a_node_that_is_not_up_keeps_it_out_of_the_buckets() -> None:
    c = Cluster([node("a", 8, state=NodeState.DRAINING), node("b", 8)], [])
    p = (ChunkPlacement("a", 1, 0, (0,)),)
    c.take(p)
    assert c.nodes["a"].ngpus == 7
    assert all("a" not in b for b in c.buckets)
    c.give(p)
    assert all("a" not in b for b in c.buckets)


def _recount(nodes: list[Node], held: list[ChunkPlacement]) -> Cluster:
    rs = [Running(job(f"r{i}").build(), (cp,), 0.0, 1.0) for i, cp in enumerate(held)]
    return Cluster(nodes, rs)


_STATES = st.sampled_from([NodeState.UP, NodeState.UP, NodeState.UP, NodeState.DRAINING, NodeState.DOWN])


@st.composite
def _pool_and_ops(draw: st.DrawFn) -> tuple[list[Node], list[tuple[bool, int, ChunkPlacement]]]:
    n = draw(st.integers(min_value=1, max_value=5))
    nodes = [
        node(f"n{i}", draw(st.sampled_from([0, 1, 2, 4, 8])), cpus=32, mem_mb=1000, state=draw(_STATES))
        for i in range(n)
    ]
    ops: list[tuple[bool, int, ChunkPlacement]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=25))):
        take = draw(st.booleans())
        i = draw(st.integers(min_value=0, max_value=n - 1))
        k = draw(st.integers(min_value=0, max_value=nodes[i].ngpus))
        # which GPUs is decided at run time from what is free; ``k`` and cpus here
        ops.append((take, i, ChunkPlacement(nodes[i].name, draw(st.integers(0, 4)), draw(st.integers(0, 100)), (k,))))
    return nodes, ops


@settings(max_examples=150, deadline=None)
@given(_pool_and_ops())
def test_take_give_keep_buckets_equal_to_a_brute_force_recount(
    data: tuple[list[Node], list[tuple[bool, int, ChunkPlacement]]],
) -> None:
    nodes, ops = data
    c = Cluster(nodes, [])
    held: list[ChunkPlacement] = []
    for take, i, proto in ops:
        nf = c.nodes[proto.node]
        if take:
            want = proto.gpus[0]
            mask = lowest_bits(nf.gpus, want)
            if mask < 0 or nf.cpus < proto.ncpus or nf.mem_mb < proto.mem_mb:
                continue
            cp = ChunkPlacement(proto.node, proto.ncpus, proto.mem_mb, gpu_indices(mask))
            c.take((cp,))
            held.append(cp)
        else:
            mine = [cp for cp in held if cp.node == proto.node]
            if not mine:
                continue
            cp = mine[0]
            held.remove(cp)
            c.give((cp,))
        ref = _recount(nodes, held)
        for name, nf in c.nodes.items():
            r = ref.nodes[name]
            assert (nf.cpus, nf.mem_mb, nf.gpus, nf.ngpus) == (r.cpus, r.mem_mb, r.gpus, r.ngpus)
            assert nf.ngpus == nf.gpus.bit_count()
        assert bucket_names(c) == bucket_names(ref)
        for g, bucket in enumerate(c.buckets):
            for name, nf in bucket.items():
                assert nf is c.nodes[name] and nf.up and nf.ngpus == g
        up = [nf for nf in c.nodes.values() if nf.up]
        assert top(c) == max((nf.ngpus for nf in up), default=-1)
        # upper bounds stay upper bounds
        assert all(nf.cpus <= c.max_free_cpus and nf.mem_mb <= c.max_free_mem for nf in up)
