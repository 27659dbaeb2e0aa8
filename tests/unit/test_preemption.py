"""policies.preemption with the preempt action: tiers, exemption, victim choice, records.

Queues: ``low`` tier 0, ``high`` tier 1 that preempts low (and names a few others
to show the tier rule wins). ``now`` is 1000; victims started at 0 unless said.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from policies import Backfill, Policy, Preemption, Priority
from schedd.core.context import Plan, Reservation, Snapshot
from schedd.core.context import Preemption as Evict
from schedd.core.model import ChunkPlacement, Job, Node, QosDef, QueueDef, Reason, Running
from schedd.core.scheduler import Pipeline, run_cycle
from tests.builders import gpu_nodes, job, running

NOW = 1000.0
ALL8 = tuple(range(8))

QUEUES = [
    QueueDef("low", tier=0),
    QueueDef("other", tier=0),  # same tier as low, not named by high
    QueueDef("peer", tier=1),  # named by high, but the same tier
    QueueDef("top", tier=2),  # named by high, but a higher tier
    QueueDef("high", tier=1, preempts=("low", "peer", "top", "scavenger")),
]
QOS = [
    QosDef("scavenger", tier=0),
    QosDef("urgent", tier=1, preempts=("low",)),
    QosDef("lifted", tier=1),
]


def cp(node: str, gpus: tuple[int, ...]) -> ChunkPlacement:
    return ChunkPlacement(node, 1, 0, gpus)


def low(id: str, n: int = 8, prio: int = 0, queue: str = "low", qos: str = "") -> Job:
    return job(id).queue(queue).qos(qos).chunks(gpus=n).priority(prio).build()


def high(id: str, n: int = 8, count: int = 1, wall: float = 3600.0) -> Job:
    return job(id).queue("high").chunks(count, gpus=n).walltime(wall).build()


def snap(pending: Sequence[Job], runs: Sequence[Running], nodes: int | Sequence[Node] = 1) -> Snapshot:
    ns = gpu_nodes(nodes) if isinstance(nodes, int) else list(nodes)
    return Snapshot(NOW, list(pending), list(runs), ns, {q.name: q for q in QUEUES}, {q.name: q for q in QOS})


def cycle(s: Snapshot, *extra: Policy, mode: str = "requeue", exempt_s: float = 300.0, grace_s: float = 30.0,
          max_preemptors: int = 16) -> Plan:
    pol = Preemption(mode=mode, exempt_s=exempt_s, grace_s=grace_s, max_preemptors=max_preemptors)
    return run_cycle(s, Pipeline.of(*extra, pol, Backfill("easy")))


def victims(plan: Plan) -> list[tuple[str, str]]:
    return [(p.victim, p.for_job) for p in plan.preemptions]


# ------------------------------------------------------------------ the whole plan


def test_a_blocked_high_job_evicts_a_low_job_and_is_reserved_on_its_resources() -> None:
    s = snap([high("H")], [running(low("V"), "n0", ALL8)])
    plan = cycle(s)
    assert plan.preemptions == [Evict("V", "H", "requeue", 30.0)]
    assert plan.reservations == {"H": Reservation(NOW + 30.0, (cp("n0", ALL8),), claim=True)}
    assert plan.reason("H") is Reason.PREEMPTING
    assert plan.starts == []


def test_mode_cancel_and_grace_are_in_the_record_and_the_reservation() -> None:
    s = snap([high("H")], [running(low("V"), "n0", ALL8)])
    plan = cycle(s, mode="cancel", grace_s=5.0)
    assert plan.preemptions == [Evict("V", "H", "cancel", 5.0)]
    assert plan.reservations["H"].start == NOW + 5.0


def test_from_config_values_reach_the_plan() -> None:
    pol = Preemption.from_config({"mode": "cancel", "grace_s": 12, "exempt_s": 0, "max_preemptors": 2})
    assert (pol.mode, pol.grace_s, pol.exempt_s, pol.max_preemptors) == ("cancel", 12.0, 0.0, 2)
    d = Preemption.from_config({})
    assert (d.mode, d.grace_s, d.exempt_s, d.max_preemptors) == ("requeue", 30.0, 300.0, 16)
    s = snap([high("H")], [running(low("V"), "n0", ALL8, start=NOW)])
    plan = run_cycle(s, Pipeline.of(pol, Backfill("easy")))
    assert plan.preemptions == [Evict("V", "H", "cancel", 12.0)]


# ------------------------------------------------------------------ tiers


@pytest.mark.parametrize(
    ("victim", "preempted"),
    [
        pytest.param(low("V"), True, id="lower-tier-named"),
        pytest.param(low("V", queue="other"), False, id="lower-tier-not-named"),
        pytest.param(low("V", queue="peer"), False, id="same-tier-named"),
        pytest.param(low("V", queue="top"), False, id="higher-tier-named"),
        pytest.param(low("V", queue="other", qos="scavenger"), True, id="named-by-qos"),
        pytest.param(low("V", qos="lifted"), False, id="named-queue-but-qos-lifts-tier"),
    ],
)
def test_only_a_lower_tier_named_in_preempts_is_a_victim(victim: Job, preempted: bool) -> None:
    s = snap([high("H")], [running(victim, "n0", ALL8)])
    plan = cycle(s)
    if preempted:
        assert victims(plan) == [("V", "H")]
        assert plan.reason("H") is Reason.PREEMPTING
    else:
        assert plan.preemptions == []
        # backfill gives the head its plain reservation at the victim's walltime end
        assert plan.reservations == {"H": Reservation(3600.0, (cp("n0", ALL8),))}
        assert plan.reason("H") is Reason.RESOURCES


def test_a_qos_can_make_a_job_a_preemptor() -> None:
    h = job("H").queue("other").qos("urgent").chunks(gpus=8).build()
    plan = cycle(snap([h], [running(low("V"), "n0", ALL8)]))
    assert victims(plan) == [("V", "H")]


def test_a_higher_tier_without_preempts_does_not_preempt() -> None:
    h = job("H").queue("peer").chunks(gpus=8).build()
    plan = cycle(snap([h], [running(low("V"), "n0", ALL8)]))
    assert plan.preemptions == []


def test_a_low_job_never_preempts_a_high_one() -> None:
    plan = cycle(snap([low("L")], [running(high("R"), "n0", ALL8)]))
    assert plan.preemptions == []


@pytest.mark.parametrize(("ran_s", "preempted"), [(299.0, False), (300.0, True), (0.0, False)])
def test_exempt_s_protects_recently_started_jobs(ran_s: float, preempted: bool) -> None:
    s = snap([high("H")], [running(low("V"), "n0", ALL8, start=NOW - ran_s)])
    assert bool(cycle(s, exempt_s=300.0).preemptions) is preempted


# ------------------------------------------------------------------ choosing victims


def test_fewest_victims_beat_lower_priority() -> None:
    runs = [running(low(f"s{i}", 2, prio=-100), "n0", (2 * i, 2 * i + 1)) for i in range(4)]
    runs.append(running(low("big", 8, prio=100), "n1", ALL8))
    plan = cycle(snap([high("H")], runs, 2))
    assert victims(plan) == [("big", "H")]
    assert plan.reservations["H"] == Reservation(NOW + 30.0, (cp("n1", ALL8),), claim=True)


def test_equal_counts_go_to_the_lowest_priority() -> None:
    runs = [running(low("a", prio=10), "n0", ALL8), running(low("b", prio=-5), "n1", ALL8)]
    assert victims(cycle(snap([high("H")], runs, 2))) == [("b", "H")]


def test_equal_priority_goes_to_the_least_run_time_lost() -> None:
    runs = [running(low("old"), "n0", ALL8, start=0.0), running(low("new"), "n1", ALL8, start=500.0)]
    assert victims(cycle(snap([high("H")], runs, 2))) == [("new", "H")]


def test_on_one_node_a_single_cheapest_victim_is_enough() -> None:
    runs = [running(low("a", 4, prio=5), "n0", (0, 1, 2, 3)), running(low("b", 4, prio=1), "n0", (4, 5, 6, 7))]
    plan = cycle(snap([high("H", 4)], runs))
    assert victims(plan) == [("b", "H")]
    assert plan.reservations["H"] == Reservation(NOW + 30.0, (cp("n0", (4, 5, 6, 7)),), claim=True)


def test_largest_victims_first_then_the_cheapest_small_one() -> None:
    runs = [running(low("big", 4, prio=9), "n0", (0, 1, 2, 3))]
    runs += [running(low(f"s{i}", 1), "n0", (4 + i,), start=100.0 * i) for i in range(4)]
    plan = cycle(snap([high("H", 5)], runs))
    # no single job frees 5 GPUs; the 4-GPU one plus the 1-GPU job that ran least (s3)
    assert victims(plan) == [("big", "H"), ("s3", "H")]
    assert plan.reservations["H"] == Reservation(NOW + 30.0, (cp("n0", (0, 1, 2, 3, 7)),), claim=True)


def test_victim_cost_uses_the_priority_policy_when_there_is_one() -> None:
    old = job("old").queue("low").chunks(gpus=8).submitted(-5000.0).build()  # waited longer: higher priority
    new = job("new").queue("low").chunks(gpus=8).submitted(0.0).build()
    runs = [running(old, "n0", ALL8), running(new, "n1", ALL8)]
    s = snap([high("H")], runs, 2)
    assert victims(cycle(s, Priority({"age": 1000}, max_age_s=10000.0))) == [("new", "H")]
    assert victims(cycle(s)) == [("old", "H")]  # without it: equal -p, equal run time, first node


def test_gang_preemptor_takes_one_victim_per_node() -> None:
    runs = [running(low("v0"), "n0", ALL8), running(low("v1"), "n1", ALL8),
            running(low("p", queue="peer"), "n2", ALL8)]
    plan = cycle(snap([high("H", 8, count=2)], runs, 3))
    assert victims(plan) == [("v0", "H"), ("v1", "H")]
    assert plan.reservations["H"] == Reservation(NOW + 30.0, (cp("n0", ALL8), cp("n1", ALL8)), claim=True)


def test_no_victims_when_preemption_cannot_free_enough() -> None:
    runs = [running(low("v", 4), "n0", (0, 1, 2, 3)), running(low("p", 4, queue="peer"), "n0", (4, 5, 6, 7))]
    plan = cycle(snap([high("H")], runs))
    assert plan.preemptions == []
    assert plan.reason("H") is Reason.RESOURCES


def test_backfill_cannot_take_what_was_freed_for_the_preemptor() -> None:
    runs = [running(low("V", 4), "n0", (0, 1, 2, 3))]
    pending = [high("H"), job("L").chunks(gpus=4).walltime(100).build(), job("S").chunks(gpus=4).walltime(10).build()]
    plan = cycle(snap(pending, runs))
    assert victims(plan) == [("V", "H")]
    assert plan.reservations["H"] == Reservation(NOW + 30.0, (cp("n0", ALL8),), claim=True)
    # S ends before the preemptor's start; L would run into it
    assert [(j.id, p) for j, p in plan.starts] == [("S", (cp("n0", (4, 5, 6, 7)),))]
    assert "L" not in {j.id for j, _ in plan.starts}


# ------------------------------------------------------------------ exiting victims, budgets


def _exiting(r: Running, for_job: str, gone_in: float) -> Running:
    r.preempted_for, r.end_by = for_job, NOW + gone_in
    return r


def test_a_preemptor_with_exiting_victims_waits_and_chooses_no_second_set() -> None:
    runs = [_exiting(running(low("V"), "n0", ALL8), "H", 20.0), running(low("W"), "n1", ALL8)]
    plan = cycle(snap([high("H")], runs, 2))
    assert plan.preemptions == []
    assert plan.reservations == {"H": Reservation(NOW + 20.0, (cp("n0", ALL8),), claim=True)}
    assert plan.reason("H") is Reason.PREEMPTING


def test_exiting_victims_are_not_chosen_again() -> None:
    # V is already going (for a job that is not pending any more); H2 must pick W
    runs = [_exiting(running(low("V"), "n0", ALL8), "gone", 20.0), running(low("W"), "n1", ALL8)]
    plan = cycle(snap([high("H2")], runs, 2))
    assert victims(plan) == [("W", "H2")]


def test_second_preemptor_uses_other_victims_than_the_first() -> None:
    runs = [_exiting(running(low("V"), "n0", ALL8), "H1", 20.0), running(low("W"), "n1", ALL8)]
    plan = cycle(snap([high("H1"), high("H2")], runs, 2))
    assert victims(plan) == [("W", "H2")]
    assert plan.reservations["H1"] == Reservation(NOW + 20.0, (cp("n0", ALL8),), claim=True)
    assert plan.reservations["H2"] == Reservation(NOW + 30.0, (cp("n1", ALL8),), claim=True)


def test_one_victim_is_not_given_to_two_preemptors() -> None:
    plan = cycle(snap([high("H1"), high("H2")], [running(low("V"), "n0", ALL8)]))
    assert victims(plan) == [("V", "H1")]
    assert plan.reason("H1") is Reason.PREEMPTING
    assert plan.reason("H2") is not Reason.PREEMPTING


@pytest.mark.parametrize(("budget", "expected", "truncated"), [(1, [("v0", "H1")], True),
                                                               (3, [("v0", "H1"), ("v1", "H2")], False)])
def test_max_preemptors_bounds_the_cycle(budget: int, expected: list[tuple[str, str]], truncated: bool) -> None:
    runs = [running(low("v0"), "n0", ALL8), running(low("v1"), "n1", ALL8)]
    plan = cycle(snap([high("H1"), high("H2")], runs, 2), max_preemptors=budget)
    assert victims(plan) == expected
    assert plan.truncated is truncated


def test_max_preemptors_reached_exactly_is_not_truncation() -> None:
    runs = [running(low("v0"), "n0", ALL8), running(low("v1"), "n1", ALL8)]
    plan = cycle(snap([high("H1")], runs, 2), max_preemptors=1)
    assert victims(plan) == [("v0", "H1")]
    assert plan.truncated is False
