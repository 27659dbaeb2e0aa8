"""Conservative backfill's shortcuts decide exactly what the plain computation decides.

Under conservative backfill every blocked job keeps its reservation from cycle
to cycle unless it can start earlier. Three shortcuts skip work for those that
cannot (:meth:`Profile.still_earliest`: the prior is provably still the earliest,
so it is kept without lifting and searching; :meth:`Profile.fits_anywhere_now`:
no node has room now, so the prior is not lifted to try a start;
:meth:`Profile.reserve_all`: the priors are put back in one merge instead of a
check and a reservation each). The reference is the same cycle with the
shortcuts turned off, i.e. every prior checked, reserved, lifted and searched
afresh: on random workloads every plan (starts with nodes and GPUs,
reservations, reasons, the count of jobs tested) must be the same, cycle by cycle.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import Backfill
from schedd.core.context import Plan, Reservation
from schedd.core.model import Chunk, Node
from schedd.core.profile import Profile
from schedd.core.scheduler import Pipeline
from schedd.core.sim import SimJob, Simulator
from tests.sim.workloads import Mix, pool, workload


Record = tuple[float, object, dict[str, Reservation], list[str], object, int]


def _plans(nodes: list[Node], jobs: list[SimJob]) -> list[Record]:
    out: list[Record] = []

    def record(sim: Simulator, plan: Plan) -> None:
        out.append((
            sim.now,
            [(j.id, p) for j, p in plan.starts],
            dict(plan.reservations),
            list(plan.reservations),  # the order too: the next cycle loads priors in it
            dict(plan.reasons),
            plan.tested,
        ))

    sim = Simulator(nodes, Pipeline.of(Backfill("conservative")), observer=record)
    sim.run(jobs)
    return out


def _reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Profile, "still_earliest", lambda *a, **k: False)
    monkeypatch.setattr(Profile, "fits_anywhere_now", lambda *a, **k: True)
    monkeypatch.setattr(Profile, "reserve_all", lambda *a, **k: False)


CPU_ONLY = Mix(cpu=1.0, gpu1=0.0, gpu2=0.0, gpu4=0.0, gpu8=0.0, gang=0.0)

POOLS = {
    "one big CPU node": lambda: [Node("pool", 64, 0)],
    "CPU nodes": lambda: pool(0, 3),
    "GPU and CPU nodes": lambda: pool(2, 2),
}


@pytest.mark.parametrize("name", sorted(POOLS))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), cpu_only=st.booleans())
def test_shortcuts_give_the_plans_of_the_full_computation(name: str, seed: int, cpu_only: bool) -> None:
    def jobs() -> list[SimJob]:
        if name == "one big CPU node":  # SWF-like: CPUs only, no memory, a deep queue
            made = workload(seed, 120, mix=CPU_ONLY, mean_interarrival_s=20.0)
            for sj in list(made):
                c = sj.job.chunks[0]
                made[made.index(sj)] = SimJob(replace(sj.job, chunks=(Chunk(ncpus=c.ncpus * 4, mem_mb=0),)), sj.runtime_s)
            return made
        if name == "CPU nodes":
            return workload(seed, 120, mix=CPU_ONLY, mean_interarrival_s=10.0)
        return workload(seed, 120, mix=CPU_ONLY if cpu_only else Mix(), mean_interarrival_s=30.0)

    fast = _plans(POOLS[name](), jobs())
    with pytest.MonkeyPatch.context() as mp:
        _reference(mp)
        slow = _plans(POOLS[name](), jobs())
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert a == b
    kept = sum(1 for a, b in zip(slow, slow[1:]) for k in a[2] if k in b[2])
    assert kept, "no reservation lived on to a second cycle: nothing was compared"
