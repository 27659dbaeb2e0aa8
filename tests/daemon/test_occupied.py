"""The daemon's running-jobs occupancy, kept across cycles, against the one a
cycle would rebuild from the running jobs: a seeded random walk of submissions
(1-8 GPU jobs, gangs, preempting queues), cycles, exits, overruns, nodes going
silent and coming back, on a virtual clock. Every cycle's plan must be the same
either way, and so must the free resources."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from schedd.config import load_pipeline, load_settings
from schedd.core.profile import Occupancy
from schedd.core.scheduler import run_cycle
from schedd.daemon.reconcile import check_nodes, on_register
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.daemon.state import State
from schedd.protocol import Exited, GpuInfo, Launch, Register

NODES = ("n1", "n2", "n3")
QUEUES = ("1xgpu", "2xgpu", "8xgpu", "low")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _register(state: State, name: str) -> None:
    gpus = [GpuInfo(i, f"{name}-{i}", "fake", 80_000) for i in range(8)]
    on_register(state, Register(name, 64, 512_000, gpus, True, [], []), lambda m: None, "127.0.0.1")


def _free(occ: Occupancy) -> dict[str, tuple[int, int, int]]:
    return {n: (nf.cpus, nf.mem_mb, nf.gpus) for n, nf in occ.cluster.nodes.items()}


def _releases(occ: Occupancy) -> dict[str, object]:
    return {n: r for n, r in occ.releases.items() if r}


def _cycle(state: State, launched: list[Launch]) -> None:
    """One cycle, checked against the same snapshot without the kept occupancy."""
    now = state.clock()
    snap = state.snapshot(now)
    assert snap.occupancy is not None
    rebuilt = Occupancy.of(snap.nodes, snap.running)
    assert _free(snap.occupancy) == _free(rebuilt)
    assert _releases(snap.occupancy) == _releases(rebuilt)
    plan = run_cycle(snap, state.pipeline)
    assert plan == run_cycle(dataclasses.replace(snap, occupancy=None), state.pipeline)
    launched += [m for _, m in state.apply(plan, now) if isinstance(m, Launch)]


def _exit(state: State, launch: Launch, status: int) -> None:
    now = state.clock()
    state.rank_exited(Exited(launch.job_id, launch.attempt, launch.rank, status, "exited", now - 1, now))


@pytest.mark.parametrize("seed", range(6))
def test_kept_occupancy_plans_as_a_rebuilt_one(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    settings = load_settings()
    state = State(settings, load_pipeline(settings.policies_path()), None, clock)
    for name in NODES:
        _register(state, name)
    launched: list[Launch] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.35:
            gpus = rng.choice([1, 1, 2, 4, 8])
            count = 2 if gpus == 8 and rng.random() < 0.3 else 1
            req = SubmitRequest(argv=["true"], workdir=str(tmp_path), queue=rng.choice(QUEUES),
                                walltime_s=rng.choice([60.0, 600.0, 3600.0]),
                                chunks=[ChunkRequest(ncpus=gpus, ngpus=gpus, mem_mb=1000 * gpus, count=count)])
            state.submit(req, rng.choice(["ann", "bob", "cy"]))
        elif op < 0.6:
            _cycle(state, launched)
        elif op < 0.8 and launched:
            launch = launched.pop(rng.randrange(len(launched)))
            _exit(state, launch, rng.choice([0, 0, 1]))
        elif op < 0.9:
            clock.t += rng.choice([5.0, 300.0, 3000.0])  # some running jobs become overdue
        elif op < 0.95:
            silent = rng.choice(NODES)
            clock.t += state.settings.heartbeat_timeout_s + 1
            for name in NODES:
                entry = state.fleet.get(name)
                if name != silent and entry is not None:
                    entry.last_seen = clock.t
            check_nodes(state, clock.t, 1e9)
            launched = [m for m in launched if silent not in m.spec.nodes]
        else:
            for name in NODES:
                _register(state, name)
    _cycle(state, launched)
