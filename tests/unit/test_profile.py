"""schedd.core.profile: per-node timelines of free resources, reservations and earliest starts."""

from __future__ import annotations

from bisect import bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.core.cluster import Cluster, NodeFree, gpu_indices
from schedd.core.model import ChunkPlacement, Gpu, Job, Node, NodeState, Running
from schedd.core.profile import OVERDUE_S, Occupancy, Profile, Timeline
from tests.builders import gpu_nodes, job, running

ALL8 = tuple(range(8))


def free(cpus: int, mem_mb: int, gpu_mask: int) -> NodeFree:
    """A NodeFree with these free resources now."""
    return NodeFree(Node("x", cpus, mem_mb, tuple(Gpu(i) for i in gpu_indices(gpu_mask))))


def at(tl: Timeline, t: float) -> tuple[int, int, int]:
    """The free (cpus, mem, gpu mask) at time ``t`` (``t`` >= the timeline's start)."""
    i = bisect_right(tl.times, t) - 1
    return tl.cpus[i], tl.mem[i], tl.gpus[i]


def segments(tl: Timeline) -> list[tuple[float, int, int, int]]:
    return list(zip(tl.times, tl.cpus, tl.mem, tl.gpus, strict=True))


def gpu_job(id: int, gpus: int, wall: float) -> Job:
    return job(id).chunks(gpus=gpus).walltime(wall).build()


def profile(now: float, nodes: list[Node], runs: list[Running]) -> Profile:
    occ = Occupancy.of(nodes, runs)
    return Profile(now, occ.cluster, occ.releases)


def cp(node: str, gpus: tuple[int, ...], cpus: int = 1, mem_mb: int = 0) -> ChunkPlacement:
    return ChunkPlacement(node, cpus, mem_mb, gpus)


# ------------------------------------------------------------------ Timeline


def sample() -> Timeline:
    releases = [(50.0, 2, 10, 0b0100), (20.0, 4, 0, 0b1000), (50.0, 1, 0, 0)]
    return Timeline(0.0, free(10, 100, 0b0011), releases)


def test_timeline_build_merges_releases_at_equal_times() -> None:
    assert segments(sample()) == [
        (0.0, 10, 100, 0b0011),
        (20.0, 14, 100, 0b1011),
        (50.0, 17, 110, 0b1111),
    ]


def test_timeline_without_releases_is_one_segment() -> None:
    tl = Timeline(5.0, free(3, 7, 0b1), [])
    assert segments(tl) == [(5.0, 3, 7, 0b1)]
    assert tl.earliest(1e9, (3, 7, 1)) == 5.0


def test_window_is_the_minimum_over_the_segments_it_touches() -> None:
    tl = sample()
    assert tl.window(0, 20.0) == (10, 100, 0b0011)  # end is exclusive: segment 1 not touched
    assert tl.window(0, 20.5) == (10, 100, 0b0011)
    assert tl.window(1, 100.0) == (14, 100, 0b1011)
    assert tl.window(2, 1e9) == (17, 110, 0b1111)


def test_window_after_a_take_sees_the_dip() -> None:
    tl = sample()
    tl.take(30.0, 60.0, 12, 50, 0b1000)
    # [30,50): 14-12=2 cpus, [50,60): 17-12=5
    assert tl.window(0, 1e9) == (2, 50, 0b0011)
    assert tl.window(1, 30.0) == (14, 100, 0b1011)


def test_fit_at_returns_the_gpus_free_throughout() -> None:
    tl = sample()
    assert tl.fit_at(20.0, 10.0, (12, 0, 3)) == 0b1011
    assert tl.fit_at(25.0, 100.0, (12, 0, 3)) == 0b1011
    assert tl.fit_at(10.0, 20.0, (12, 0, 3)) == -1  # starts while only 10 cpus are free
    assert tl.fit_at(20.0, 10.0, (0, 0, 4)) == -1
    assert tl.fit_at(50.0, 10.0, (0, 0, 4)) == 0b1111
    assert tl.fit_at(0.0, 1.0, (0, 101, 0)) == -1
    assert tl.fit_at(60.0, 1.0, (0, 110, 0)) == 0b1111
    # a time before the timeline starts reads as its first segment
    assert tl.fit_at(-5.0, 1.0, (10, 100, 2)) == 0b0011


def test_earliest_is_the_first_segment_start_that_fits() -> None:
    tl = sample()
    assert tl.earliest(10.0, (12, 0, 3)) == 20.0
    assert tl.earliest(10.0, (16, 0, 4)) == 50.0
    assert tl.earliest(10.0, (1, 0, 2)) == 0.0
    assert tl.earliest(10.0, (18, 0, 0)) is None
    assert tl.earliest(10.0, (0, 0, 5)) is None


def test_earliest_skips_a_start_whose_walltime_runs_into_a_reservation() -> None:
    tl = Timeline(0.0, free(8, 0, 0xFF), [])
    tl.take(100.0, 200.0, 0, 0, 0xFF)  # all GPUs promised over [100, 200)
    assert tl.earliest(50.0, (0, 0, 1)) == 0.0
    assert tl.earliest(150.0, (0, 0, 1)) == 200.0
    assert tl.earliest(100.0, (0, 0, 8)) == 0.0  # [0, 100) ends exactly where the reservation starts


def test_a_job_needs_the_same_gpus_for_its_whole_walltime() -> None:
    # two GPUs are free in every segment, but never the same two over [0, 2)
    tl = Timeline(0.0, free(0, 0, 0b110), [(1.0, 0, 0, 0b001)])
    tl.take(1.0, 2.0, 0, 0, 0b010)
    assert tl.gpus == [0b110, 0b101, 0b111]
    assert tl.fit_at(0.0, 2.0, (0, 0, 2)) == -1
    assert tl.fit_at(1.0, 2.0, (0, 0, 2)) == 0b101
    assert tl.earliest(2.0, (0, 0, 2)) == 1.0


def test_releases_before_the_overdue_horizon_count_from_it() -> None:
    tl = Timeline(10.0, free(1, 0, 0), [(3.0, 1, 0, 0b1), (10.0, 1, 0, 0b10), (10.5, 1, 0, 0b100)])
    assert segments(tl) == [(10.0, 1, 0, 0), (10.0 + OVERDUE_S, 4, 0, 0b111)]


def test_take_splits_segments_and_subtracts_over_the_interval() -> None:
    tl = sample()
    tl.take(10.0, 30.0, 3, 5, 0b0001)
    assert segments(tl) == [
        (0.0, 10, 100, 0b0011),
        (10.0, 7, 95, 0b0010),
        (20.0, 11, 95, 0b1010),
        (30.0, 14, 100, 0b1011),
        (50.0, 17, 110, 0b1111),
    ]


def test_take_to_an_existing_breakpoint_adds_no_segment() -> None:
    tl = sample()
    tl.take(20.0, 50.0, 1, 0, 0)
    assert tl.times == [0.0, 20.0, 50.0]
    assert tl.cpus == [10, 13, 17]


def test_give_adds_over_the_interval() -> None:
    tl = Timeline(0.0, free(4, 0, 0b0001), [(100.0, 4, 0, 0b1110)])
    tl.give(30.0, 100.0, 4, 0, 0b1110)  # a job that ends at 30 instead of 100
    assert segments(tl) == [(0.0, 4, 0, 0b0001), (30.0, 8, 0, 0b1111), (100.0, 8, 0, 0b1111)]


def test_split_returns_existing_index_or_inserts_a_copy() -> None:
    tl = sample()
    assert tl._split(20.0) == 1
    assert len(tl.times) == 3
    assert tl._split(35.0) == 2
    assert segments(tl)[2] == (35.0, 14, 100, 0b1011)
    assert tl._split(1e6) == 4
    assert segments(tl)[4] == (1e6, 17, 110, 0b1111)
    assert tl.times == sorted(tl.times)


_T = st.integers(min_value=1, max_value=40).map(float)


@st.composite
def _timeline(draw: st.DrawFn) -> Timeline:
    mask = draw(st.integers(0, 0xFF))
    releases = draw(
        st.lists(st.tuples(_T, st.integers(0, 8), st.integers(0, 64), st.integers(0, 0xFF)), max_size=6)
    )
    cpus, mem = draw(st.integers(0, 16)), draw(st.integers(0, 64))
    return Timeline(0.0, free(cpus, mem, mask), releases)


@settings(max_examples=200, deadline=None)
@given(_timeline(), _T, st.integers(1, 20).map(float), st.data())
def test_take_then_give_is_the_identity_as_a_function_of_time(
    tl: Timeline, start: float, length: float, data: st.DataObject
) -> None:
    end = start + length
    probes = sorted({0.0, start, end, *tl.times, *(t + 0.5 for t in tl.times), start + 0.5, end + 0.5})
    before = {t: at(tl, t) for t in probes}
    i = bisect_right(tl.times, start) - 1
    c, m, g = tl.window(i, end)
    cpus, mem = data.draw(st.integers(0, c)), data.draw(st.integers(0, m))
    mask = data.draw(st.integers(0, 0xFF)) & g  # only GPUs free throughout may be taken

    tl.take(start, end, cpus, mem, mask)
    assert tl.times == sorted(set(tl.times))
    for t in probes:
        bc, bm, bg = before[t]
        if start <= t < end:
            assert at(tl, t) == (bc - cpus, bm - mem, bg & ~mask)
        else:
            assert at(tl, t) == before[t]

    tl.give(start, end, cpus, mem, mask)
    assert {t: at(tl, t) for t in probes} == before


def _fits_brute(tl: Timeline, t: float, wall: float, entry: tuple[int, int, int]) -> bool:
    """Does ``entry`` fit over [t, t + wall)? Written independently: enough CPUs and memory
    in every overlapping segment, and enough GPUs free in all of them (the same GPUs)."""
    bounds = [*tl.times[1:], float("inf")]
    same_gpus = -1  # all bits
    for k, (lo, hi) in enumerate(zip(tl.times, bounds, strict=True)):
        if hi <= t or lo >= t + wall:
            continue
        if tl.cpus[k] < entry[0] or tl.mem[k] < entry[1]:
            return False
        same_gpus &= tl.gpus[k]
    return same_gpus.bit_count() >= entry[2]


@settings(max_examples=200, deadline=None)
@given(
    _timeline(),
    st.lists(st.tuples(_T, st.integers(1, 20), st.integers(0, 4), st.integers(0, 0xFF)), max_size=3),
    st.integers(1, 30).map(float),
    st.tuples(st.integers(0, 12), st.integers(0, 40), st.integers(0, 8)),
)
def test_earliest_agrees_with_a_brute_force_scan(
    tl: Timeline,
    takes: list[tuple[float, int, int, int]],
    wall: float,
    entry: tuple[int, int, int],
) -> None:
    for start, length, cpus, mask in takes:  # reservations make the profile non-monotonic
        tl.take(start, start + length, cpus, 0, mask)
    starts = [t for t in tl.times if _fits_brute(tl, t, wall, entry)]
    got = tl.earliest(wall, entry)
    assert got == (starts[0] if starts else None)
    if got is not None:
        assert tl.fit_at(got, wall, entry) >= 0


# ------------------------------------------------------------------ Profile: now


def test_profile_releases_running_jobs_at_their_end_and_overdue_ones_soon() -> None:
    a = gpu_job(1, 8, 100)
    late = gpu_job(2, 4, 10)
    runs = [running(a, "n0", ALL8, start=0.0), running(late, "n1", (0, 1, 2, 3), start=0.0)]
    p = profile(50.0, gpu_nodes(2), runs)
    assert segments(p.timeline("n0")) == [(50.0, 63, 512 * 1024, 0), (100.0, 64, 512 * 1024, 0xFF)]
    # ``late`` ended at 10 by its walltime but is still reported running
    assert p.timeline("n1").times == [50.0, 50.0 + OVERDUE_S]
    assert p.timeline("n1").gpus == [0xF0, 0xFF]


def test_place_now_packs_onto_the_tightest_node_with_lowest_gpu_indices() -> None:
    b = gpu_job(1, 5, 100)
    p = profile(0.0, gpu_nodes(2), [running(b, "n1", (0, 2, 3, 4, 6))])
    assert p.place_now(((1, 0, 2),), 10.0, spread=False) == (cp("n1", (1, 5)),)
    assert p.place_now(((1, 0, 2),), 10.0, spread=True) == (cp("n0", (0, 1)),)
    assert p.place_now(((1, 0, 4),), 10.0, spread=False) == (cp("n0", (0, 1, 2, 3)),)


def test_place_now_puts_gang_entries_on_distinct_nodes_or_nowhere() -> None:
    b = gpu_job(1, 4, 100)
    p = profile(0.0, gpu_nodes(2), [running(b, "n1", (0, 1, 2, 3))])
    assert p.place_now(((1, 0, 4), (1, 0, 4)), 10.0, spread=False) == (
        cp("n1", (4, 5, 6, 7)),
        cp("n0", (0, 1, 2, 3)),
    )
    # n0 alone could hold both 2-GPU entries, but a gang needs distinct nodes
    p = profile(0.0, gpu_nodes(2), [running(gpu_job(2, 8, 100), "n1", ALL8)])
    assert p.place_now(((1, 0, 2), (1, 0, 2)), 10.0, spread=False) is None


def test_place_now_respects_a_reservation_for_the_walltime() -> None:
    a = gpu_job(1, 4, 100)
    p = profile(0.0, gpu_nodes(2), [running(a, "n0", (0, 1, 2, 3))])
    p.reserve((cp("n0", ALL8),), start=100.0, walltime_s=1000.0)
    assert "n0" in p.reserved
    # 4 GPUs for 200 s would overlap the reservation on n0: n1 instead
    assert p.place_now(((1, 0, 4),), 200.0, spread=False) == (cp("n1", (0, 1, 2, 3)),)
    # 4 GPUs for 100 s end exactly when the reservation starts: n0 (tightest) is fine
    assert p.place_now(((1, 0, 4),), 100.0, spread=False) == (cp("n0", (4, 5, 6, 7)),)
    # with n1 gone too, the long request finds no place
    p.start((cp("n1", ALL8),), 5000.0)
    assert p.place_now(((1, 0, 4),), 200.0, spread=False) is None


def test_fit_now_on_a_reserved_node_returns_only_gpus_free_for_the_whole_walltime() -> None:
    p = profile(0.0, gpu_nodes(1), [])
    p.reserve((cp("n0", (0, 1, 2)),), start=10.0, walltime_s=10.0)
    nf = p.cluster.nodes["n0"]
    assert p.fit_now(nf, 5.0, (1, 0, 8)) == 0xFF
    assert p.fit_now(nf, 15.0, (1, 0, 5)) == 0b11111000
    assert p.fit_now(nf, 15.0, (1, 0, 6)) == -1


@pytest.mark.parametrize("built_before", [False, True])
def test_start_keeps_cluster_and_timeline_in_step(built_before: bool) -> None:
    p = profile(0.0, gpu_nodes(1, cpus=8, mem_mb=100), [])
    if built_before:
        p.timeline("n0")
    p.start((cp("n0", (0, 1), cpus=3, mem_mb=40),), 50.0)
    nf = p.cluster.nodes["n0"]
    assert (nf.cpus, nf.mem_mb, nf.gpus) == (5, 60, 0xFC)
    assert segments(p.timeline("n0")) == [(0.0, 5, 60, 0xFC), (50.0, 8, 100, 0xFF)]


# ------------------------------------------------------------------ Profile: the future


def test_earliest_single_entry_is_the_first_node_to_free_up() -> None:
    runs = [
        running(gpu_job(1, 8, 300), "n0", ALL8),
        running(gpu_job(2, 6, 100), "n1", (0, 1, 2, 3, 4, 5)),
    ]
    p = profile(0.0, gpu_nodes(2), runs)
    assert p.earliest(((1, 0, 8),), 50.0) == (100.0, (cp("n1", ALL8),))
    assert p.earliest(((1, 0, 2),), 50.0) == (0.0, (cp("n1", (6, 7)),))
    assert p.earliest(((1, 0, 9),), 50.0) is None


def test_earliest_single_entry_breaks_time_ties_toward_the_tightest_node() -> None:
    runs = [running(gpu_job(1, 6, 100), "n1", (0, 1, 2, 3, 4, 5))]
    p = profile(0.0, gpu_nodes(3), runs)
    assert p.earliest(((1, 0, 2),), 10.0) == (0.0, (cp("n1", (6, 7)),))


def test_earliest_ignores_nodes_that_are_not_up() -> None:
    nodes = gpu_nodes(2)
    nodes[0].state = NodeState.DRAINING
    runs = [running(gpu_job(1, 8, 500), "n1", ALL8)]
    p = profile(0.0, nodes, runs)
    assert p.earliest(((1, 0, 8),), 10.0) == (500.0, (cp("n1", ALL8),))


def test_earliest_gang_starts_when_enough_distinct_nodes_are_free() -> None:
    runs = [
        running(gpu_job(1, 8, 100), "n0", ALL8),
        running(gpu_job(2, 8, 300), "n1", ALL8),
        running(gpu_job(3, 8, 500), "n2", ALL8),
    ]
    p = profile(0.0, gpu_nodes(3), runs)
    assert p.earliest(((1, 0, 8), (1, 0, 8)), 50.0) == (300.0, (cp("n0", ALL8), cp("n1", ALL8)))
    assert p.earliest(((1, 0, 8),) * 3, 50.0) == (500.0, (cp("n0", ALL8), cp("n1", ALL8), cp("n2", ALL8)))
    assert p.earliest(((1, 0, 8),) * 4, 50.0) is None


def test_earliest_gang_goes_around_a_reservation() -> None:
    runs = [
        running(gpu_job(1, 8, 100), "n0", ALL8),
        running(gpu_job(2, 8, 300), "n1", ALL8),
        running(gpu_job(3, 8, 500), "n2", ALL8),
    ]
    p = profile(0.0, gpu_nodes(3), runs)
    p.reserve((cp("n1", ALL8),), start=300.0, walltime_s=1000.0)
    assert p.earliest(((1, 0, 8), (1, 0, 8)), 100.0) == (500.0, (cp("n0", ALL8), cp("n2", ALL8)))


def test_earliest_heterogeneous_gang_may_use_a_node_too_small_for_its_first_entry() -> None:
    nodes = [gpu_nodes(1)[0], Node("s0", 8, 1024, (Gpu(0),))]
    runs = [running(gpu_job(1, 8, 100), "n0", ALL8), running(gpu_job(2, 1, 100), "s0", (0,))]
    p = profile(0.0, nodes, runs)
    assert p.earliest(((1, 0, 8), (1, 0, 1)), 50.0) == (100.0, (cp("n0", ALL8), cp("s0", (0,))))


def test_place_at_assigns_entries_to_distinct_named_nodes() -> None:
    runs = [running(gpu_job(1, 8, 100), "n0", ALL8)]
    p = profile(0.0, gpu_nodes(3), runs)
    assert p.place_at(100.0, ((1, 0, 8), (1, 0, 8)), 10.0, ["n0", "n2"]) == (cp("n0", ALL8), cp("n2", ALL8))
    assert p.place_at(50.0, ((1, 0, 8), (1, 0, 8)), 10.0, ["n0", "n2"]) is None


@pytest.mark.parametrize("built_before", [False, True])
def test_end_early_brings_a_victims_resources_back_at_the_deadline(built_before: bool) -> None:
    v = running(gpu_job(1, 8, 1000), "n0", ALL8)
    p = profile(0.0, gpu_nodes(1), [v])
    if built_before:
        assert p.earliest(((1, 0, 8),), 50.0) == (1000.0, (cp("n0", ALL8),))
    p.end_early(v, 30.0)
    assert p.earliest(((1, 0, 8),), 50.0) == (30.0, (cp("n0", ALL8),))
    assert at(p.timeline("n0"), 0.0)[2] == 0
    assert at(p.timeline("n0"), 30.0)[2] == 0xFF
    assert at(p.timeline("n0"), 2000.0) == (64, 512 * 1024, 0xFF)  # nothing counted twice


def test_end_early_later_than_the_planned_end_changes_nothing() -> None:
    v = running(gpu_job(1, 8, 100), "n0", ALL8)
    p = profile(0.0, gpu_nodes(1), [v])
    before = segments(p.timeline("n0"))
    p.end_early(v, 500.0)
    assert segments(p.timeline("n0")) == before
    p2 = profile(0.0, gpu_nodes(1), [v])
    p2.end_early(v, 500.0)
    assert segments(p2.timeline("n0")) == before


# ------------------------------------------------------------------ Occupancy


def _normal(occ: Occupancy) -> tuple[dict[str, tuple[int, int, int]], list[set[str]], int, dict[str, dict[str, tuple[float, int, int, int]]]]:
    free_ = {n: (nf.cpus, nf.mem_mb, nf.gpus) for n, nf in occ.cluster.nodes.items()}
    buckets = [set(b) for b in occ.cluster.buckets]
    releases = {n: dict(d) for n, d in occ.releases.items() if d}
    return free_, buckets, occ.cluster.max_gpus, releases


@st.composite
def _occupancy_ops(draw: st.DrawFn) -> list[tuple[str, int, int, float]]:
    """(op, node index, gpus wanted, time) steps: add a job, remove one, or move one's end."""
    return draw(
        st.lists(
            st.tuples(st.sampled_from(["add", "add", "remove", "end"]), st.integers(0, 2), st.integers(0, 8),
                      st.integers(1, 500).map(float)),
            max_size=20,
        )
    )


@settings(max_examples=100, deadline=None)
@given(_occupancy_ops())
def test_occupancy_kept_incrementally_equals_one_built_from_scratch(ops: list[tuple[str, int, int, float]]) -> None:
    nodes = gpu_nodes(3, cpus=16, mem_mb=1000)
    occ = Occupancy(nodes)
    live: list[Running] = []
    for k, (op, i, want, t) in enumerate(ops):
        name = nodes[i].name
        if op == "add":
            mask = occ.cluster.nodes[name].gpus
            if bin(mask).count("1") < want or occ.cluster.nodes[name].cpus < 2:
                continue
            g = gpu_indices(mask)[:want]
            r = Running(job(f"j{k}").chunks(gpus=want, cpus=2, mem_mb=10).build(),
                        (ChunkPlacement(name, 2, 10, g),), 0.0, t)
            occ.add(r)
            live.append(r)
        elif live:
            r = live[i % len(live)]
            if op == "remove":
                occ.remove(r)
                live.remove(r)
            else:
                r.end_by = t
                occ.set_end(r)
        assert _normal(occ) == _normal(Occupancy.of(nodes, live))


def test_occupancy_releases_are_keyed_by_node_and_job() -> None:
    a = running(gpu_job(1, 2, 100), "n0", (0, 1))
    b = job(2).chunks(2, gpus=8).walltime(50).build()
    rb = Running(b, (cp("n0", (2, 3, 4, 5, 6, 7)), cp("n1", ALL8)), 0.0, 50.0)
    occ = Occupancy.of(gpu_nodes(2), [a, rb])
    assert occ.releases == {
        "n0": {"1": (100.0, 1, 0, 0b11), "2": (50.0, 1, 0, 0b11111100)},
        "n1": {"2": (50.0, 1, 0, 0xFF)},
    }
    assert occ.cluster.max_gpus == 0
    occ.remove(rb)
    assert occ.cluster.nodes["n1"].gpus == 0xFF
    assert occ.releases["n0"] == {"1": (100.0, 1, 0, 0b11)}
