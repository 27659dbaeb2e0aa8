"""The occupancy's sorted release index builds the same timelines as a sort from scratch.

A cycle builds a node's :class:`Timeline` from :class:`NodeReleases`, kept by the
owner of state as jobs start, end and get preemption deadlines, instead of sorting
every running job's release. The reference is ``Timeline(now, nf, releases)``, the
constructor that sorts: after any sequence of changes, at any ``now`` (overdue
releases included) and with any starts or early ends of the cycle applied before
the timeline is first looked at, both must give the same segments exactly.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.core.cluster import gpu_indices
from schedd.core.model import ChunkPlacement, Running
from schedd.core.profile import NodeReleases, Occupancy, Profile, Timeline
from tests.builders import gpu_nodes, job


def segments(tl: Timeline) -> list[tuple[float, int, int, int]]:
    return list(zip(tl.times, tl.cpus, tl.mem, tl.gpus, strict=True))


Op = tuple[str, int, int, int, float]


@st.composite
def _ops(draw: st.DrawFn) -> list[Op]:
    """(op, node, gpus, cpus, time): add a running job, remove one, move one's end."""
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["add", "add", "add", "remove", "end"]),
                st.integers(0, 1),
                st.integers(0, 3),
                st.integers(0, 4),
                # few distinct times, so releases often share one; some at or near the horizon
                st.sampled_from([0.0, 5.0, 9.5, 10.0, 10.5, 11.0, 11.5, 20.0, 20.0, 40.0]),
            ),
            max_size=40,
        )
    )


def _apply(occ: Occupancy, ops: list[Op], live: list[Running]) -> None:
    nodes = list(occ.cluster.nodes)
    for k, (op, i, want, cpus, t) in enumerate(ops):
        name = nodes[i]
        if op == "add":
            nf = occ.cluster.nodes[name]
            if nf.ngpus < want or nf.cpus < cpus:
                continue
            g = gpu_indices(nf.gpus)[:want]
            r = Running(job(f"j{k}").chunks(gpus=want, cpus=cpus, mem_mb=cpus * 3).build(),
                        (ChunkPlacement(name, cpus, cpus * 3, g),), 0.0, t)
            occ.add(r)
            live.append(r)
        elif live:
            r = live[(i + k) % len(live)]
            if op == "remove":
                occ.remove(r)
                live.remove(r)
            else:
                r.end_by = t
                occ.set_end(r)


@settings(max_examples=300, deadline=None)
@given(_ops(), st.sampled_from([0.0, 9.0, 9.5, 10.0, 12.0]), st.booleans(), st.integers(0, 3))
def test_timelines_from_the_kept_index_equal_timelines_sorted_from_scratch(
    ops: list[Op], now: float, look_first: bool, starts: int
) -> None:
    nodes = gpu_nodes(2, gpus=4, cpus=16, mem_mb=64)
    occ = Occupancy(nodes)
    live: list[Running] = []
    if look_first:  # the index exists before the changes: it is kept, not rebuilt
        for name in occ.cluster.nodes:
            occ.index(name)
    _apply(occ, ops, live)
    kept = Profile(now, occ.cluster.copy(), occ.releases, occ)
    scratch = Profile(now, occ.cluster.copy(), occ.releases)
    # This cycle's own starts and early ends, before any timeline is built.
    for p in (kept, scratch):
        for s in range(starts):
            name = f"n{s % 2}"
            nf = p.cluster.nodes[name]
            if nf.cpus >= 1:
                p.start((ChunkPlacement(name, 1, 0, gpu_indices(nf.gpus)[:1]),), walltime_s=[0.5, 3.0, 10.0][s % 3])
        if live:
            p.end_early(live[0], now + [0.5, 5.0][starts % 2])
    for name in occ.cluster.nodes:
        assert segments(kept.timeline(name)) == segments(scratch.timeline(name))
    # And an index rebuilt from the releases equals the kept one.
    for name, ix in occ._index.items():
        fresh = NodeReleases(occ.releases.get(name, {}).values())
        assert (ix.times, ix.cpus, ix.mem, ix.gpus, ix.count) == (
            fresh.times, fresh.cpus, fresh.mem, fresh.gpus, fresh.count)


def _fit_duration_by_walk(tl: Timeline, entry: tuple[int, int, int]) -> float:
    """The definition: the first segment (from now) where the entry does not fit."""
    acc = -1
    for i in range(len(tl.times)):
        acc &= tl.gpus[i]
        if tl.cpus[i] < entry[0] or tl.mem[i] < entry[1] or acc.bit_count() < entry[2]:
            return tl.times[i] - tl.times[0]
    return float("inf")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60).map(float), st.integers(-2, 4), st.integers(0, 9), st.integers(0, 15)), max_size=12),
    st.lists(st.tuples(st.sampled_from(["take", "give", "from"]), st.integers(0, 20).map(float),
                       st.integers(1, 20).map(float), st.integers(-2, 6), st.integers(0, 9)), max_size=5),
    st.tuples(st.integers(0, 12), st.integers(0, 30), st.integers(0, 2)),
    st.booleans(),
)
def test_fit_duration_is_the_first_segment_short_of_the_request(
    releases: list[tuple[float, int, int, int]],
    changes: list[tuple[str, float, float, int, int]],
    entry: tuple[int, int, int],
    sorting: bool,
) -> None:
    """Whatever changed the timeline (reservations, lifted ones, this cycle's releases,
    negative ones such as an early end's), the answer is the walk's."""
    nodes = gpu_nodes(1, gpus=4, cpus=4, mem_mb=8)
    nf = Occupancy(nodes).cluster.nodes["n0"]
    if sorting:
        tl = Timeline(0.0, nf, releases)
    else:
        tl = Timeline.of(0.0, nf, NodeReleases([r for r in releases if r[1] >= 0]))
    assert tl.fit_duration(entry) == _fit_duration_by_walk(tl, entry)
    for kind, start, length, cpus, mem in changes:
        if kind == "take":
            tl.take(start, start + length, cpus, mem, 0)
        elif kind == "give":
            tl.give(start, start + length, cpus, mem, 0)
        else:
            tl.add_from(start + 2.0, cpus, mem, 0)
        assert tl.fit_duration(entry) == _fit_duration_by_walk(tl, entry)


def test_a_lifted_reservation_can_leave_the_first_shortage_where_it_ends() -> None:
    """Free CPUs: 4 flat; a reservation takes 3 over [10, 20); something gives 6 over
    [0, 25) (a lifted reservation): 10, 7 on [10, 20), 10, then 4 from 25 on. A request
    of 5 CPUs first runs short at 25, where the give ends, not where the take began."""
    nf = Occupancy(gpu_nodes(1, gpus=0, cpus=4, mem_mb=0)).cluster.nodes["n0"]
    tl = Timeline.of(0.0, nf, NodeReleases())
    tl.take(10.0, 20.0, 3, 0, 0)
    tl.give(0.0, 25.0, 6, 0, 0)
    assert tl.fit_duration((5, 0, 0)) == _fit_duration_by_walk(tl, (5, 0, 0)) == 25.0


def _earliest_by_trying_every_start(tl: Timeline, walltime_s: float, c: int, m: int) -> float | None:
    """The definition: the first segment start whose whole window has room."""
    for i, t in enumerate(tl.times):
        window = [i] + [k for k in range(i + 1, len(tl.times)) if tl.times[k] < t + walltime_s]
        if all(tl.cpus[k] >= c and tl.mem[k] >= m for k in window):
            return t
    return None


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60).map(float), st.integers(0, 4), st.integers(0, 9), st.just(0)), max_size=10),
    st.lists(st.tuples(st.integers(0, 40).map(float), st.integers(1, 30).map(float), st.integers(0, 5),
                       st.integers(0, 9)), max_size=6),
    st.integers(0, 12), st.integers(0, 20), st.sampled_from([0.0, 1.0, 5.0, 10.0, 25.0, 1e9]),
)
def test_earliest_without_gpus_in_one_pass_is_the_first_start_that_fits(
    releases: list[tuple[float, int, int, int]],
    reservations: list[tuple[float, float, int, int]],
    c: int, m: int, walltime_s: float,
) -> None:
    nf = Occupancy(gpu_nodes(1, gpus=0, cpus=4, mem_mb=8)).cluster.nodes["n0"]
    tl = Timeline.of(0.0, nf, NodeReleases(releases))
    for start, length, cpus, mem in reservations:
        tl.take(start, start + length, cpus, mem, 0)
    assert tl.earliest(walltime_s, (c, m, 0)) == _earliest_by_trying_every_start(tl, walltime_s, c, m)
    # still_earliest's test, for every start: is there a fit before it (or at it)?
    for t in tl.times:
        found = _earliest_by_trying_every_start(tl, walltime_s, c, m)
        assert tl.fits_before(t, False, walltime_s, c, m, None) == (found is not None and found < t)
        assert tl.fits_before(t, True, walltime_s, c, m, None) == (found is not None and found <= t)
    # With the request's own reservation in the timeline: as if it were given back first.
    own = tl.earliest(walltime_s, (c, m, 0))
    if own is not None and walltime_s < 1e9:
        tl.take(own + 3.0, own + 3.0 + walltime_s, c, m, 0)  # a reservation a little later than needed
        lifted = (own + 3.0, own + 3.0 + walltime_s)
        claimed = tl.fits_before(own + 3.0, False, walltime_s, c, m, lifted)
        tl.give(own + 3.0, own + 3.0 + walltime_s, c, m, 0)
        found = _earliest_by_trying_every_start(tl, walltime_s, c, m)
        assert claimed == (found is not None and found < own + 3.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60).map(float), st.integers(0, 4), st.integers(0, 9), st.just(0)), max_size=8),
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 40).map(float), st.integers(0, 30).map(float),
                       st.integers(0, 5), st.integers(0, 9)), max_size=8),
)
def test_reserving_all_priors_at_once_equals_checking_and_reserving_each(
    releases: list[tuple[float, int, int, int]],
    priors: list[tuple[int, float, float, int, int]],
) -> None:
    """When the merge succeeds, one by one every check passes and the timelines are
    the same; when a check would fail, the merge refuses (the cycle then goes one by one)."""
    nodes = gpu_nodes(2, gpus=0, cpus=4, mem_mb=8)
    occ = Occupancy(nodes)
    for name in occ.cluster.nodes:  # the same running jobs' releases on both nodes
        occ._index[name] = NodeReleases(releases)
    items = [((ChunkPlacement(f"n{i}", c, m, ()),), start, length) for i, start, length, c, m in priors]
    bulk = Profile(0.0, occ.cluster.copy(), {}, occ)
    one_by_one = Profile(0.0, occ.cluster.copy(), {}, occ)
    all_free = True
    for placement, start, length in items:
        if one_by_one.is_free(placement, start, length):
            one_by_one.reserve(placement, start, length)
        else:
            all_free = False
    if bulk.reserve_all(items):
        assert all_free
        for name in occ.cluster.nodes:
            assert segments(bulk.timeline(name)) == segments(one_by_one.timeline(name))
        assert bulk.reserved == one_by_one.reserved
    else:
        assert bulk.reserved == set()
