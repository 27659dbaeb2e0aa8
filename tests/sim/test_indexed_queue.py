"""The owner's indexed FCFS queue (schedd.core.pending) changes how much work a cycle
does, never what it decides: the same workload gives the same starts, ends and
placements with and without it, and every cycle stays consistent."""

from __future__ import annotations

import copy

import pytest

from policies import Backfill, Limits
from schedd.core.model import QueueDef
from schedd.core.scheduler import Pipeline
from schedd.core.sim import Simulator
from tests.sim.checks import Recorder, assert_all_finished
from tests.sim.workloads import Mix, pool, workload

LIMITED = {"default": QueueDef("default", max_running_per_user=3, max_gpus_per_user=16)}


def _placements(sim: Simulator, rec: list[tuple[float, str, tuple[object, ...]]]):  # type: ignore[no-untyped-def]
    def hook(s: Simulator, plan) -> None:  # type: ignore[no-untyped-def]
        for job, placement in plan.starts:
            rec.append((s.now, job.id, placement))

    return hook


def _run(pipeline: Pipeline, seed: int, indexed: bool, queues: dict[str, QueueDef]):  # type: ignore[no-untyped-def]
    jobs = workload(seed, 150, mix=Mix(cpu=0.3, gang=0.3), mean_interarrival_s=40.0, max_gang=2)
    starts: list[tuple[float, str, tuple[object, ...]]] = []
    rec = Recorder(check=True)
    sim = Simulator(pool(3, 1), pipeline, queues=queues, indexed=indexed)
    rec.extra.append(_placements(sim, starts))
    sim.observer = rec
    sim.run(copy.deepcopy(jobs))
    assert_all_finished(sim)
    return starts, {k: (o.first_start, o.end) for k, o in sim.outcomes.items()}, sim


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "make, queues",
    [
        (lambda: Pipeline.of(Backfill("easy"), actions=("allocate", "backfill")), {}),
        (lambda: Pipeline.of(Backfill("none"), actions=("allocate", "backfill")), {}),
        (lambda: Pipeline.of(Limits(), Backfill("easy"), actions=("allocate", "backfill")), LIMITED),
    ],
    ids=["easy", "fcfs", "easy+limits"],
)
def test_indexed_queue_decides_exactly_like_the_plain_walk(make, queues, seed: int) -> None:  # type: ignore[no-untyped-def]
    plain_starts, plain_out, plain = _run(make(), seed, indexed=False, queues=queues)
    fast_starts, fast_out, fast = _run(make(), seed, indexed=True, queues=queues)
    assert plain.queue is None and fast.queue is not None
    assert fast_starts == plain_starts
    assert fast_out == plain_out
