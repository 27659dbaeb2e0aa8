"""Preemption in the simulator: who may evict whom, and what eviction buys.

Queues ``low`` (tier 0) and ``high`` (tier 1, ``preempts = ["low"]``) share a
pool; seeded workloads mix both. After every cycle:

* every :class:`~schedd.core.context.Preemption` names a running victim of a queue
  the preemptor's queue lists, in a strictly lower tier;
* the preemptor is reserved where its victims are, from their kill deadline on,
  and what the victims give back (plus what is free) covers its request there;
  no victim is chosen off those nodes;
* a requeued victim comes back pending with ``attempt + 1``; every job finishes.

And, once the victims are gone, the preemptor starts (the resources were freed
for it).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from policies import Backfill, Preemption, Priority
from schedd.core.context import Plan
from schedd.core.model import Chunk, Job, QueueDef
from schedd.core.scheduler import Pipeline
from schedd.core.sim import SimJob, Simulator
from tests.sim.checks import assert_all_finished, simulate
from tests.sim.workloads import Mix, pool, workload

SETTINGS = settings(
    max_examples=8,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)

GRACE_S = 30.0
QUEUES = {
    "low": QueueDef("low", priority=0, tier=0),
    "high": QueueDef("high", priority=100, tier=1, preempts=("low",)),
}


def _pipeline(mode: str = "requeue", backfill: str = "easy", exempt_s: float = 0.0) -> Pipeline:
    return Pipeline.of(
        Priority(weights={"queue": 1000}),
        Preemption(mode=mode, exempt_s=exempt_s, grace_s=GRACE_S),
        Backfill(backfill),
    )


scenarios = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "gpu_nodes": st.integers(2, 6),
        "n_jobs": st.integers(40, 160),
        "interarrival": st.sampled_from((30.0, 60.0, 120.0)),
        "high_share": st.sampled_from((0.15, 0.3)),
        "backfill": st.sampled_from(("easy", "conservative")),
        "exempt_s": st.sampled_from((0.0, 300.0)),
    }
)


def _jobs(sc: dict) -> list[SimJob]:
    return workload(
        sc["seed"],
        sc["n_jobs"],
        mix=Mix(cpu=1.0, gang=0.7),
        mean_interarrival_s=sc["interarrival"],
        max_gang=min(3, sc["gpu_nodes"]),
        queues=(("low", 1.0 - sc["high_share"]), ("high", sc["high_share"])),
    )


class PreemptionChecks:
    """Observer hook: the per-cycle preemption properties of the module docstring."""

    def __init__(self, queues: dict[str, QueueDef]) -> None:
        self.queues = queues
        self.count = 0
        self.victim_attempt: dict[str, int] = {}  # victim id -> attempt when chosen
        #: preemptor -> (its victims, the nodes it is reserved on, its tier)
        self.waiting: dict[str, tuple[set[str], set[str], int]] = {}
        #: preemptors not started once their victims left, while what was freed went
        #: to a lower tier or stayed idle (a higher tier taking it is fair)
        self.not_started: list[str] = []

    def __call__(self, sim: Simulator, plan: Plan) -> None:
        now = sim.now
        by_job: dict[str, list[str]] = defaultdict(list)
        for p in plan.preemptions:
            self.count += 1
            by_job[p.for_job].append(p.victim)
            victim = sim.running.get(p.victim)
            assert victim is not None, f"t={now}: victim {p.victim} is not running"
            assert victim.preempted_for == p.for_job
            pre = sim.pending.get(p.for_job)
            assert pre is not None, f"t={now}: preemptor {p.for_job} is not pending"
            pq, vq = self.queues[pre.queue], self.queues[victim.job.queue]
            assert vq.name in pq.preempts, f"t={now}: {pq.name} job {pre.id} preempted {vq.name} job {victim.job.id}"
            assert vq.tier < pq.tier, f"t={now}: tier {pq.tier} job {pre.id} preempted tier {vq.tier} job {victim.job.id}"
            assert p.grace_s == GRACE_S
            self.victim_attempt[p.victim] = victim.job.attempt
        for job_id, victims in by_job.items():
            self._victims_make_room(sim, plan, job_id, set(victims))
            nodes = {cp.node for cp in plan.reservations[job_id].placement}
            self.waiting[job_id] = (set(victims), nodes, self.queues[sim.pending[job_id].queue].tier)
        self._requeued(sim)
        for job_id, (gone, nodes, tier) in list(self.waiting.items()):
            if any(v in sim.running and sim.running[v].preempted_for == job_id for v in gone):
                continue
            del self.waiting[job_id]
            if job_id in sim.running:
                continue
            takers = [(j.id, self.queues[j.queue].tier) for j, p in plan.starts if {cp.node for cp in p} & nodes]
            if not takers or any(t < tier for _, t in takers):
                self.not_started.append(
                    f"t={now}: {job_id} not started ({plan.reason(job_id).value}) after its victims "
                    f"{sorted(gone)} left; started on {sorted(nodes)} instead: {takers}"
                )

    def _victims_make_room(self, sim: Simulator, plan: Plan, job_id: str, victims: set[str]) -> None:
        now = sim.now
        res = plan.reservations.get(job_id)
        assert res is not None, f"t={now}: {job_id} preempted {sorted(victims)} but holds no reservation"
        assert res.start <= now + GRACE_S, f"t={now}: {job_id} reserved at {res.start}, after the kill deadline"
        nodes = {cp.node: cp for cp in res.placement}
        for v in victims:
            held = {cp.node for cp in sim.running[v].placement}
            assert held & set(nodes), f"t={now}: victim {v} on {sorted(held)}, off {job_id}'s nodes {sorted(nodes)}"
        caps = {n.name: n for n in sim.nodes}
        for name, cp in nodes.items():
            cpus, mem, gpus = caps[name].cpus, caps[name].mem_mb, {g.index for g in caps[name].gpus}
            for r in sim.running.values():
                if r.job.id in victims or r.end_by <= res.start:
                    continue
                for other in r.placement:
                    if other.node == name:
                        cpus -= other.ncpus
                        mem -= other.mem_mb
                        gpus -= set(other.gpus)
            assert cp.ncpus <= cpus and cp.mem_mb <= mem and set(cp.gpus) <= gpus, (
                f"t={now}: on {name} the victims of {job_id} leave {cpus} CPUs, {mem} MB, GPUs "
                f"{sorted(gpus)}; it needs {cp.ncpus}, {cp.mem_mb}, {cp.gpus}"
            )

    def _requeued(self, sim: Simulator) -> None:
        for v, attempt in list(self.victim_attempt.items()):
            r = sim.running.get(v)
            if r is not None and r.job.attempt == attempt:
                continue  # still exiting
            del self.victim_attempt[v]
            job = sim.pending.get(v) or (r.job if r is not None else None)
            if sim.outcomes[v].cancelled:
                assert job is None, f"t={sim.now}: cancelled victim {v} came back"
                continue
            if job is None and sim.outcomes[v].end == sim.now:
                continue  # it finished on its own within its grace period: nothing to requeue
            assert job is not None, f"t={sim.now}: requeued victim {v} vanished"
            assert job.attempt == attempt + 1, f"t={sim.now}: victim {v} back with attempt {job.attempt}, not {attempt + 1}"


def _run(sc: dict, mode: str = "requeue") -> tuple[Simulator, PreemptionChecks]:
    checks = PreemptionChecks(QUEUES)
    sim, _ = simulate(
        pool(sc["gpu_nodes"]), _pipeline(mode, sc["backfill"], sc["exempt_s"]), _jobs(sc),
        queues=QUEUES, hooks=(checks,),
    )
    return sim, checks


@SETTINGS
@given(sc=scenarios)
def test_preemption_requeue_properties(sc: dict) -> None:
    sim, checks = _run(sc)
    assert_all_finished(sim)
    for o in sim.outcomes.values():
        assert o.attempts == o.preempted + 1, (o.job.id, o.attempts, o.preempted)
        assert o.job.attempt == o.preempted
        if o.preempted:
            assert o.job.queue == "low"


@SETTINGS
@given(sc=scenarios)
def test_preemption_cancel_properties(sc: dict) -> None:
    sim, checks = _run(sc, mode="cancel")
    assert_all_finished(sim)
    for o in sim.outcomes.values():
        assert o.attempts == 1 and o.preempted <= 1
        assert o.cancelled == (o.preempted == 1)


def test_preemption_is_not_vacuous() -> None:
    sc = {"seed": 7, "gpu_nodes": 4, "n_jobs": 150, "interarrival": 60.0, "high_share": 0.3,
          "backfill": "easy", "exempt_s": 0.0}
    sim, checks = _run(sc)
    assert checks.count >= 10
    assert sum(o.preempted > 0 for o in sim.outcomes.values()) >= 5


# -- tiers: never the same or a higher one ----------------------------------------------

#: ``peer`` names ``mid`` but sits on the same tier; ``rogue`` names ``top`` from below.
#: Neither may ever preempt: only a strictly lower tier is fair game.
TIERS = {
    "low": QueueDef("low", priority=0, tier=0),
    "rogue": QueueDef("rogue", priority=10, tier=0, preempts=("top", "mid")),
    "mid": QueueDef("mid", priority=20, tier=1, preempts=("low",)),
    "peer": QueueDef("peer", priority=30, tier=1, preempts=("mid", "low")),
    "top": QueueDef("top", priority=40, tier=2, preempts=("low", "mid", "peer", "rogue")),
}


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), gpu_nodes=st.integers(2, 5))
def test_preemption_only_hits_strictly_lower_tiers(seed: int, gpu_nodes: int) -> None:
    checks = PreemptionChecks(TIERS)
    jobs = workload(
        seed, 120, mix=Mix(cpu=0.5, gang=0.5), mean_interarrival_s=45.0, max_gang=min(3, gpu_nodes),
        queues=tuple((q, 1.0) for q in TIERS),
    )
    sim, _ = simulate(pool(gpu_nodes), _pipeline(), jobs, queues=TIERS, hooks=(checks,))
    assert_all_finished(sim)
    assert checks.count > 0, "no preemption happened: the workload proves nothing"


# -- eviction buys the preemptor its start -----------------------------------------------



def test_preemptor_starts_once_its_victims_are_gone() -> None:
    late = []
    for seed in range(4):
        sc = {"seed": seed, "gpu_nodes": 6, "n_jobs": 150, "interarrival": 60.0, "high_share": 0.25,
              "backfill": "easy", "exempt_s": 0.0}
        sim, checks = _run(sc)
        late += [f"seed {seed}: {x}" for x in checks.not_started]
    assert not late, "\n".join(late[:10])


def _job(id: str, order: int, queue: str, gpus: int, count: int, wall: float, submit: float) -> SimJob:
    chunks = (Chunk(ncpus=1, ngpus=gpus, count=count),)
    return SimJob(Job(id, order, "ann", chunks, wall, submit, queue=queue), wall)


def test_preemption_scenario_freed_gpus_go_to_a_low_job() -> None:
    """Two 8-GPU nodes. At t=0 L1 (low, 8 GPUs, 10 h) runs on g1 and Hx (high, 8 GPUs,
    2 h) on g0. At t=10 H1 (high, 2x8 gang) is the head and cannot preempt (Hx is
    high); H2 (high, 4 GPUs, 4 h) preempts L1 and is reserved on g1 at 40. At 40 L1
    is gone, H1 is still the head: allocate stops at H1, preempt skips H2 because it
    "fits now", backfill reserves H1 at 7200 on both nodes, which H2's 4 h would
    cross, and then backfills L2 (low, 4 GPUs, 30 min) onto g1. H2 starts at 10800.
    Expected: H2 starts at 40 on g1, what L1 was killed for (L2 may still backfill
    onto g1's other 4 GPUs: it ends long before H1's reservation).
    """
    jobs = [
        _job("L1", 1, "low", 8, 1, 36000, 0), _job("Hx", 2, "high", 8, 1, 7200, 0),
        _job("H1", 3, "high", 8, 2, 3600, 10), _job("H2", 4, "high", 4, 1, 14400, 10),
        _job("L2", 5, "low", 4, 1, 1800, 10),
    ]
    checks = PreemptionChecks(QUEUES)
    sim, _ = simulate(pool(2), _pipeline(), jobs, queues=QUEUES, hooks=(checks,))
    assert sim.outcomes["L1"].preempted == 1
    assert sim.outcomes["H2"].first_start == 40.0
    assert not checks.not_started


def test_victim_that_finishes_during_its_grace_period_is_not_rerun() -> None:
    """One 8-GPU node. L (low, 8 GPUs) would finish at t=100; at t=90 H (high) preempts
    it with a 30 s grace. L exits on its own at 100, before the kill at 120: it
    completed, and must not run a second time.
    """
    sim = Simulator(pool(1), _pipeline(), queues=QUEUES)
    low = Job("L", 1, "ann", (Chunk(ncpus=1, ngpus=8),), 3600.0, 0.0, queue="low")
    high = Job("H", 2, "ann", (Chunk(ncpus=1, ngpus=8),), 3600.0, 90.0, queue="high")
    sim.run([SimJob(low, 100.0), SimJob(high, 600.0)])
    assert sim.outcomes["L"].preempted == 1
    assert sim.outcomes["H"].first_start == 100.0
    assert sim.outcomes["L"].attempts == 1, "L ran again after completing"
    assert sim.outcomes["L"].end == 100.0
