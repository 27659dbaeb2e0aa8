"""policies.priority: the multifactor sum, term by term, with values worked out by hand.

::

    priority = w_age*age + w_fairshare*fs + w_job_size*size + w_queue*queue + w_qos*qos
             + w_user*(p + 1024)/2047 - nice
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from policies import FairShare, Priority
from schedd.core.context import Context, Snapshot
from schedd.core.model import Job, Node, QosDef, QueueDef
from schedd.core.scheduler import Pipeline, run_cycle
from tests.builders import gpu_nodes, job

QUEUES = {"low": QueueDef("low", priority=10), "high": QueueDef("high", priority=40)}
QOS = {"boost": QosDef("boost", priority=50), "plain": QosDef("plain", priority=0)}
WEIGHTS: dict[str, float] = {"age": 1000, "fairshare": 0, "job_size": 500, "queue": 1000, "qos": 2000, "user": 1000}


def context(prio: Priority, pending: Sequence[Job], now: float, nodes: Sequence[Node] | None = None) -> Context:
    """A prepared cycle context for ``prio`` alone."""
    pipe = Pipeline.of(prio, actions=("allocate",))
    s = Snapshot(now, list(pending), [], gpu_nodes(2) if nodes is None else list(nodes), QUEUES, QOS)
    ctx = Context(s, pipe)
    for prepare in pipe.prepare_hooks:
        prepare(ctx)
    return ctx


def with_nice(j: Job, nice: int) -> Job:
    j.nice = nice
    return j


# Pool: two 8-GPU nodes = 16 GPUs. max queue priority 40, max QoS priority 50, max_age_s 1000.
#  a: waited 250 s -> age .25; 4/16 GPUs -> size .25; queue high 40/40; QoS boost 50/50; -p 0
#  b: eligible at 200, now 250 -> age .05; 8/16 -> .5; queue low 10/40; no QoS; -p -1024; nice 100
#  c: waited 5250 s -> age saturates at 1; no GPUs; unknown queue and QoS -> 0; -p 1023
A = 1000 * 0.25 + 500 * 0.25 + 1000 * 1.0 + 2000 * 1.0 + 1000 * 1024 / 2047
B = 1000 * 0.05 + 500 * 0.5 + 1000 * 0.25 + 0 + 0 - 100
C = 1000 * 1.0 + 0 + 0 + 0 + 1000 * 1.0


def _jobs() -> list[Job]:
    return [
        job("a", 1).queue("high").qos("boost").chunks(gpus=4).build(),
        with_nice(job("b", 2).queue("low").chunks(gpus=8).priority(-1024).begins(200.0).build(), 100),
        job("c", 3).queue("nosuch").qos("nosuch").submitted(-5000.0).priority(1023).build(),
    ]


def test_multifactor_values_by_hand() -> None:
    assert (round(A, 4), B, C) == (3875.2443, 450.0, 2000.0)
    prio = Priority(WEIGHTS, max_age_s=1000.0)
    jobs = _jobs()
    ctx = context(prio, jobs, now=250.0)
    got = [prio.value(j, ctx) for j in jobs]
    assert got == pytest.approx([A, B, C], abs=1e-9)
    assert [prio.order_key(j, ctx) for j in jobs] == pytest.approx([-A, -B, -C], abs=1e-9)


def test_run_cycle_starts_in_decreasing_priority() -> None:
    prio = Priority(WEIGHTS, max_age_s=1000.0)
    s = Snapshot(250.0, _jobs(), [], gpu_nodes(2), QUEUES, QOS)
    plan = run_cycle(s, Pipeline.of(prio, actions=("allocate",)))
    assert [j.id for j, _ in plan.starts] == ["a", "c", "b"]


def test_favor_small_inverts_the_size_factor() -> None:
    prio = Priority({"job_size": 1000}, favor_small=True)
    jobs = [job("big", 1).chunks(gpus=12).build(), job("small", 2).chunks(gpus=4).build()]
    ctx = context(prio, jobs, now=0.0)
    # user factor at -p 0 is 1024/2047 but its weight is 0 here
    assert [prio.value(j, ctx) for j in jobs] == pytest.approx([1000 * (1 - 12 / 16), 1000 * (1 - 4 / 16)])
    big = Priority({"job_size": 1000})
    ctx = context(big, jobs, now=0.0)
    assert [big.value(j, ctx) for j in jobs] == pytest.approx([750.0, 250.0])


def test_job_size_counts_cpus_when_the_pool_has_no_gpus() -> None:
    cpu_nodes = [Node("c0", 64, 1024), Node("c1", 64, 1024)]
    prio = Priority({"job_size": 128})
    j = job("x", 1).chunks(2, cpus=16).build()
    ctx = context(prio, [j], 0.0, cpu_nodes)
    assert prio.value(j, ctx) == pytest.approx(128 * 32 / 128)


@pytest.mark.parametrize(
    ("waited", "expected_age"),
    [(0.0, 0.0), (100.0, 0.1), (999.0, 0.999), (1000.0, 1.0), (1e6, 1.0), (-50.0, 0.0)],
)
def test_age_grows_linearly_then_saturates_at_max_age(waited: float, expected_age: float) -> None:
    prio = Priority({"age": 700}, max_age_s=1000.0)
    j = job("x", 1).submitted(500.0).build()
    ctx = context(prio, [j], now=500.0 + waited)
    assert prio.value(j, ctx) == pytest.approx(700 * expected_age)


def test_age_counts_from_the_eligible_time_not_the_submit_time() -> None:
    prio = Priority({"age": 1000}, max_age_s=1000.0)
    j = job("x", 1).submitted(0.0).begins(400.0).build()
    ctx = context(prio, [j], now=500.0)
    assert prio.value(j, ctx) == pytest.approx(100.0)


@pytest.mark.parametrize(("p", "factor"), [(-1024, 0.0), (0, 1024 / 2047), (1023, 1.0), (-5000, 0.0), (5000, 1.0)])
def test_user_priority_maps_to_zero_one(p: int, factor: float) -> None:
    prio = Priority({"user": 2047})
    j = job("x", 1).priority(p).build()
    ctx = context(prio, [j], now=0.0)
    assert prio.value(j, ctx) == pytest.approx(2047 * factor)


def test_nice_subtracts_points() -> None:
    prio = Priority({"user": 1000})
    plain = job("x", 1).priority(1023).build()
    nice = with_nice(job("y", 2).priority(1023).build(), 250)
    ctx = context(prio, [plain, nice], now=0.0)
    assert prio.value(plain, ctx) == pytest.approx(1000.0)
    assert prio.value(nice, ctx) == pytest.approx(750.0)


def test_queue_and_qos_factors_are_relative_to_the_highest() -> None:
    prio = Priority({"queue": 100, "qos": 10})
    jobs = [job("l", 1).queue("low").qos("plain").build(), job("h", 2).queue("high").qos("boost").build()]
    ctx = context(prio, jobs, now=0.0)
    assert [prio.value(j, ctx) for j in jobs] == pytest.approx([100 * 10 / 40 + 0, 100 + 10])


def test_fairshare_term_defaults_to_one_without_a_fairshare_policy() -> None:
    prio = Priority({"fairshare": 300})
    j = job("x", 1).build()
    assert prio.value(j, context(prio, [j], now=0.0)) == pytest.approx(300.0)


def test_fairshare_term_reads_the_fairshare_factors() -> None:
    fs, prio = FairShare(), Priority({"fairshare": 1000})
    ann, bob = job("a", 1).user("ann").build(), job("b", 2).user("bob").build()
    pipe = Pipeline.of(fs, prio, actions=("allocate",))
    s = Snapshot(0.0, [ann, bob], [], gpu_nodes(1), usage={("", "ann"): 100.0})
    ctx = Context(s, pipe)
    for prepare in pipe.prepare_hooks:
        prepare(ctx)
    # one account, two users of equal shares: S = 1/2 each; U_ann = 1, U_bob = 0, UE_account = 1
    # UE_ann = 1 + (1 - 1)/2 = 1 -> 2^-2 ; UE_bob = 0 + (1 - 0)/2 = 1/2 -> 2^-1
    assert prio.value(ann, ctx) == pytest.approx(1000 * 0.25)
    assert prio.value(bob, ctx) == pytest.approx(1000 * 0.5)


def _fairshare_cycle(policies_in_order: str) -> list[str]:
    fs, prio = FairShare(), Priority({"fairshare": 10000})
    pols = (fs, prio) if policies_in_order == "fairshare,priority" else (prio, fs)
    s = Snapshot(
        0.0,
        [job(1).user("ann").chunks(gpus=8).build(), job(2).user("bob").chunks(gpus=8).build()],
        [],
        gpu_nodes(1),
        usage={("", "ann"): 1000.0},
    )
    plan = run_cycle(s, Pipeline.of(*pols, actions=("allocate",)))
    return [j.id for j, _ in plan.starts]


def test_the_user_with_less_usage_goes_first() -> None:
    assert _fairshare_cycle("fairshare,priority") == ["2"]


def test_fairshare_factors_apply_whatever_the_table_order() -> None:
    assert _fairshare_cycle("priority,fairshare") == ["2"]


def test_a_changed_user_priority_is_seen_in_the_next_cycle() -> None:
    prio = Priority({"user": 2047})
    j = job("x", 1).priority(0).build()
    assert prio.value(j, context(prio, [j], now=0.0)) == pytest.approx(1024.0)
    j.priority = 1023  # qalter -p 1023
    assert prio.value(j, context(prio, [j], now=10.0)) == pytest.approx(2047.0)


def test_from_config_defaults_and_weights() -> None:
    p = Priority.from_config({})
    assert p.weights == {"age": 1000, "fairshare": 10000, "job_size": 0, "queue": 1000, "qos": 2000, "user": 1000}
    assert (p.max_age_s, p.favor_small) == (7 * 86400.0, False)
    p = Priority.from_config({"weights": {"age": 5, "qos": 0}, "max_age_s": 60, "favor_small": True})
    assert (p.weights["age"], p.weights["qos"], p.weights["fairshare"]) == (5.0, 0.0, 10000.0)
    assert (p.max_age_s, p.favor_small) == (60.0, True)
