"""Invariants after every simulated cycle, for every kind of pipeline.

Random seeded workloads (CPU-only jobs, 1/2/4/8-GPU jobs, homogeneous and mixed
gangs, several users) run through the simulator; after every cycle
:func:`tests.sim.checks.check_cycle` asserts that no node or GPU is
oversubscribed now or promised twice in the future, and that every running job
holds exactly its shape on distinct nodes. Every job must finish in the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from policies import Backfill, FairShare, Limits, Placement, Preemption, Priority
from schedd.core.context import Plan, Reservation
from schedd.core.model import Chunk, ChunkPlacement, Job, QueueDef, Running
from schedd.core.scheduler import Pipeline
from schedd.core.sim import Simulator
from tests.sim.checks import assert_all_finished, check_cycle, simulate
from tests.sim.workloads import Mix, pool, workload

SETTINGS = settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: a failing seed is reported as is
    suppress_health_check=[HealthCheck.too_slow],
)

TIERED = {
    "low": QueueDef("low", priority=0, tier=0),
    "high": QueueDef("high", priority=100, tier=1, preempts=("low",)),
}
LIMITED = {"default": QueueDef("default", max_running_per_user=4, max_gpus_per_user=32)}

#: name -> (pipeline factory, queues, (queue, weight) mix of the workload)
PIPELINES: dict[str, tuple[Callable[[], Pipeline], dict[str, QueueDef], tuple[tuple[str, float], ...]]] = {
    "fcfs": (lambda: Pipeline.of(Backfill("none")), {}, (("default", 1.0),)),
    "easy": (lambda: Pipeline.of(Backfill("easy")), {}, (("default", 1.0),)),
    "conservative": (lambda: Pipeline.of(Backfill("conservative")), {}, (("default", 1.0),)),
    "fairshare-spread": (
        lambda: Pipeline.of(
            FairShare(half_life_s=3600.0),
            Priority(weights={"fairshare": 10000, "age": 1000}),
            Placement("spread"),
            Backfill("easy"),
        ),
        {},
        (("default", 1.0),),
    ),
    "limits": (
        lambda: Pipeline.of(Limits(), Priority(weights={"age": 1000}), Backfill("conservative")),
        LIMITED,
        (("default", 1.0),),
    ),
    "preempt-requeue": (
        lambda: Pipeline.of(
            Priority(weights={"queue": 1000}), Preemption(exempt_s=60.0, grace_s=30.0), Backfill("easy")
        ),
        TIERED,
        (("low", 3.0), ("high", 1.0)),
    ),
    "preempt-cancel-conservative": (
        lambda: Pipeline.of(
            Priority(weights={"queue": 1000}),
            Preemption(mode="cancel", exempt_s=0.0, grace_s=10.0),
            Backfill("conservative"),
        ),
        TIERED,
        (("low", 3.0), ("high", 1.0)),
    ),
}

scenarios = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "gpu_nodes": st.integers(2, 6),
        "cpu_nodes": st.integers(0, 2),
        "n_jobs": st.integers(30, 200),
        "interarrival": st.sampled_from((20.0, 90.0, 400.0)),
        "mixed_gangs": st.booleans(),
    }
)


def _run(name: str, sc: dict, extra: Callable[[Simulator, Plan], None] | None = None) -> Simulator:
    make, queues, qmix = PIPELINES[name]
    # A mixed gang needs one node more than its 8-GPU chunks: keep every job runnable.
    mixed = sc["mixed_gangs"] and sc["gpu_nodes"] >= 3
    jobs = workload(
        sc["seed"],
        sc["n_jobs"],
        mix=Mix(mixed_gang=1.0 if mixed else 0.0),
        mean_interarrival_s=sc["interarrival"],
        max_gang=min(3, sc["gpu_nodes"] - 1 if mixed else sc["gpu_nodes"]),
        queues=qmix,
    )
    sim, rec = simulate(
        pool(sc["gpu_nodes"], sc["cpu_nodes"]), make(), jobs, queues=queues, hooks=(extra,) if extra else ()
    )
    assert rec.cycles > 0
    return sim


def _check_all(name: str, sc: dict) -> None:
    sim = _run(name, sc)
    assert_all_finished(sim)
    o = sim.outcomes.values()
    assert all(x.first_start >= x.submit for x in o)
    assert all(x.end >= x.start for x in o)


@SETTINGS
@given(sc=scenarios)
def test_fcfs(sc: dict) -> None:
    _check_all("fcfs", sc)


@SETTINGS
@given(sc=scenarios)
def test_easy(sc: dict) -> None:
    _check_all("easy", sc)


@SETTINGS
@given(sc=scenarios)
def test_conservative(sc: dict) -> None:
    _check_all("conservative", sc)


@SETTINGS
@given(sc=scenarios)
def test_fairshare_priority_spread(sc: dict) -> None:
    _check_all("fairshare-spread", sc)


@SETTINGS
@given(sc=scenarios)
def test_preemption_requeue(sc: dict) -> None:
    _check_all("preempt-requeue", sc)


@SETTINGS
@given(sc=scenarios)
def test_preemption_cancel_conservative(sc: dict) -> None:
    _check_all("preempt-cancel-conservative", sc)


@SETTINGS
@given(sc=scenarios)
def test_limits_hold_every_cycle(sc: dict) -> None:
    """Per-user running-job and GPU limits of the queue hold after every cycle too."""
    q = LIMITED["default"]

    def limits(sim: Simulator, plan: Plan) -> None:
        jobs: dict[str, int] = defaultdict(int)
        gpus: dict[str, int] = defaultdict(int)
        for r in sim.running.values():
            jobs[r.job.owner] += 1
            gpus[r.job.owner] += r.job.ngpus
        assert q.max_running_per_user is not None and q.max_gpus_per_user is not None
        for user in jobs:
            assert jobs[user] <= q.max_running_per_user, f"t={sim.now}: {user} runs {jobs[user]} jobs"
            assert gpus[user] <= q.max_gpus_per_user, f"t={sim.now}: {user} holds {gpus[user]} GPUs"

    sim = _run("limits", sc, limits)
    assert_all_finished(sim)


# -- the checker itself must be able to fail ------------------------------------


def test_checker_catches_a_double_booked_gpu() -> None:
    """A corrupt plan (a second job on GPUs already held) is reported."""
    nodes = pool(1)
    sim = Simulator(nodes, Pipeline.of(Backfill("easy")))
    a = Job("a", 1, "ann", (Chunk(ncpus=1, ngpus=2),), 100.0, 0.0)
    b = Job("b", 2, "ann", (Chunk(ncpus=1, ngpus=2),), 100.0, 0.0)
    sim.running["a"] = Running(a, (ChunkPlacement("g0", 1, 0, (0, 1)),), 0.0, 100.0)
    sim.running["b"] = Running(b, (ChunkPlacement("g0", 1, 0, (1, 2)),), 0.0, 100.0)
    with pytest.raises(AssertionError, match="GPU"):
        check_cycle(sim, Plan())


def test_checker_catches_a_split_gang_and_a_wrong_size() -> None:
    sim = Simulator(pool(2), Pipeline.of(Backfill("easy")))
    gang = Job("g", 1, "ann", (Chunk(ncpus=4, ngpus=8, count=2),), 100.0, 0.0)
    sim.running["g"] = Running(gang, (ChunkPlacement("g0", 4, 0, tuple(range(8))),), 0.0, 100.0)
    with pytest.raises(AssertionError, match="1 chunks for a shape of 2"):
        check_cycle(sim, Plan())
    sim.running["g"] = Running(
        gang, (ChunkPlacement("g0", 4, 0, tuple(range(8))), ChunkPlacement("g0", 4, 0, tuple(range(8)))), 0.0, 100.0
    )
    with pytest.raises(AssertionError, match="two chunks on one node"):
        check_cycle(sim, Plan())
    small = Job("s", 2, "ann", (Chunk(ncpus=4, ngpus=2),), 100.0, 0.0)
    sim.running = {"s": Running(small, (ChunkPlacement("g1", 4, 0, (0,)),), 0.0, 100.0)}
    with pytest.raises(AssertionError, match="asked for"):
        check_cycle(sim, Plan())


def test_checker_catches_a_reservation_overlapping_a_running_job() -> None:
    sim = Simulator(pool(1), Pipeline.of(Backfill("easy")))
    a = Job("a", 1, "ann", (Chunk(ncpus=1, ngpus=8),), 100.0, 0.0)
    b = Job("b", 2, "ann", (Chunk(ncpus=1, ngpus=8),), 100.0, 0.0)
    sim.running["a"] = Running(a, (ChunkPlacement("g0", 1, 0, tuple(range(8))),), 0.0, 100.0)
    sim.pending["b"] = b
    plan = Plan(reservations={"b": Reservation(50.0, (ChunkPlacement("g0", 1, 0, tuple(range(8))),))})
    with pytest.raises(AssertionError, match="promised to a and b"):
        check_cycle(sim, plan)
