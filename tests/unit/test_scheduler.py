"""schedd.core.scheduler.run_cycle as tables: snapshot -> expected Plan.

Also the combination rules written once in the scheduler (ordering keys in config
order, then the submission order; the first refusing ``fits`` names the reason) and
``Pipeline.from_config``'s errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from policies import Backfill, FairShare, Limits, Placement, Policy, Preemption
from schedd.config import load_pipeline
from schedd.core.context import Context, Plan, Reservation, Snapshot
from schedd.errors import ConfigError
from schedd.core.model import ChunkPlacement, Job, Node, QosDef, QueueDef, Reason, Running
from schedd.core.profile import Occupancy
from schedd.core.scheduler import DEFAULT_ACTIONS, Pipeline, run_cycle
from tests.builders import gpu_nodes, job, running

ALL8 = tuple(range(8))


def cp(node: str, gpus: tuple[int, ...], cpus: int = 1) -> ChunkPlacement:
    return ChunkPlacement(node, cpus, 0, gpus)


def snap(
    pending: Sequence[Job],
    running: Sequence[Running] = (),
    nodes: Sequence[Node] | None = None,
    now: float = 0.0,
    queues: Sequence[QueueDef] = (),
    qos: Sequence[QosDef] = (),
) -> Snapshot:
    return Snapshot(
        now=now,
        pending=list(pending),
        running=list(running),
        nodes=gpu_nodes(1) if nodes is None else list(nodes),
        queues={q.name: q for q in queues},
        qos={q.name: q for q in qos},
    )


def starts(plan: Plan) -> list[tuple[str, tuple[ChunkPlacement, ...]]]:
    return [(j.id, p) for j, p in plan.starts]


def started_ids(plan: Plan) -> list[str]:
    return [j.id for j, _ in plan.starts]


def reasons(plan: Plan, s: Snapshot) -> dict[str, Reason]:
    """Every pending job that did not start, with its reason as qstat would show it."""
    began = set(started_ids(plan))
    return {j.id: plan.reason(j.id) for j in s.pending if j.id not in began}


def gpus(id: int | str, n: int, wall: str | float = "1h") -> Job:
    return job(id).chunks(gpus=n).walltime(wall).build()


ALLOCATE = ("allocate",)


# ------------------------------------------------------------------ FCFS, allocate only


def test_allocate_is_strict_fcfs_and_stops_at_the_first_job_that_does_not_fit() -> None:
    busy = running(gpus("r", 4, 100), "n0", (0, 1, 2, 3))
    pending = [gpus(3, 1), gpus(2, 8), gpus(1, 2)]  # handed over out of order on purpose
    s = snap(pending, [busy])
    plan = run_cycle(s, Pipeline.of(actions=ALLOCATE))
    assert starts(plan) == [("1", (cp("n0", (4, 5)),))]
    assert reasons(plan, s) == {"2": Reason.RESOURCES, "3": Reason.PRIORITY}
    assert "3" not in plan.reasons  # Priority is the default, not written
    assert plan.reservations == {}
    assert plan.preemptions == []
    assert plan.truncated is False


def test_allocate_starts_everything_that_fits_in_order() -> None:
    s = snap([gpus(1, 4), gpus(2, 2), gpus(3, 2), gpus(4, 1)])
    plan = run_cycle(s, Pipeline.of(actions=ALLOCATE))
    assert starts(plan) == [
        ("1", (cp("n0", (0, 1, 2, 3)),)),
        ("2", (cp("n0", (4, 5)),)),
        ("3", (cp("n0", (6, 7)),)),
    ]
    assert reasons(plan, s) == {"4": Reason.RESOURCES}


# ------------------------------------------------------------------ pending reasons, as a table

_LIMITED = QueueDef("limited", max_walltime_s=3600.0, allowed_users=("ann", "bob"))
_ONE_EACH = QueueDef("one", max_running_per_user=1)
_EIGHT_GPUS = QueueDef("eight", max_gpus_per_user=8)
_QOS_ONE = QosDef("q1", max_running_per_user=1)
_QOS_GPUS = QosDef("g4", max_gpus_per_user=4)


def _reason_cases() -> list[Any]:
    def case(id: str, pending: list[Job], expected: dict[str, Reason], running_: Sequence[Running] = (),
             nodes: Sequence[Node] | None = None, now: float = 0.0) -> Any:
        return pytest.param(pending, list(running_), nodes, now, expected, id=id)

    hog = running(gpus("r", 8), "n0", ALL8)
    return [
        case("priority-behind-blocked", [gpus(1, 8), gpus(2, 1)], {"1": Reason.RESOURCES, "2": Reason.PRIORITY},
             [running(gpus("r", 4), "n0", (0, 1, 2, 3))]),
        case("resources", [gpus(1, 1)], {"1": Reason.RESOURCES}, [hog]),
        case("held", [job(1).chunks(gpus=1).held().build()], {"1": Reason.HELD}),
        case("dependency", [job(1).chunks(gpus=1).after("0").build()], {"1": Reason.DEPENDENCY}),
        case("begin-time", [job(1).chunks(gpus=1).begins(100.0).build()], {"1": Reason.BEGIN_TIME}, now=99.0),
        case("waiting-without-dependency", [_state_waiting(job(1).chunks(gpus=1).build())], {"1": Reason.BEGIN_TIME}),
        case("never-too-many-gpus", [gpus(1, 9)], {"1": Reason.NEVER}),
        case("never-too-many-cpus", [job(1).chunks(cpus=65).build()], {"1": Reason.NEVER}),
        case("never-too-many-nodes", [job(1).chunks(3, gpus=1).build()], {"1": Reason.NEVER}, nodes=gpu_nodes(2)),
        case("queue-walltime", [job(1).queue("limited").walltime("2h").build()], {"1": Reason.QUEUE_LIMIT}),
        case("queue-user", [job(1).user("cat").queue("limited").build()], {"1": Reason.QUEUE_LIMIT}),
        case("queue-jobs-per-user", [job(1).queue("one").build()], {"1": Reason.QOS_MAX_JOBS_PER_USER},
             [running(job("r").queue("one").build(), "n0", ())]),
        case("qos-jobs-per-user", [job(1).qos("q1").build()], {"1": Reason.QOS_MAX_JOBS_PER_USER},
             [running(job("r").qos("q1").build(), "n0", ())]),
        case("queue-gpus-per-user", [job(1).queue("eight").chunks(gpus=5).build()],
             {"1": Reason.QOS_MAX_GPUS_PER_USER},
             [running(job("r").queue("eight").chunks(gpus=4).build(), "n0", (0, 1, 2, 3))]),
        case("qos-gpus-per-user", [job(1).qos("g4").chunks(gpus=5).build()], {"1": Reason.QOS_MAX_GPUS_PER_USER}),
    ]


def _state_waiting(j: Job) -> Job:
    from schedd.core.model import JobState

    j.state = JobState.WAITING
    return j


@pytest.mark.parametrize(("pending", "running_", "nodes", "now", "expected"), _reason_cases())
def test_pending_reason(
    pending: list[Job], running_: list[Running], nodes: list[Node] | None, now: float, expected: dict[str, Reason]
) -> None:
    s = snap(pending, running_, nodes, now=now, queues=[_LIMITED, _ONE_EACH, _EIGHT_GPUS], qos=[_QOS_ONE, _QOS_GPUS])
    plan = run_cycle(s, Pipeline.of(Limits(), actions=ALLOCATE))
    assert plan.starts == []
    assert reasons(plan, s) == expected


def test_limits_do_not_apply_to_other_users_or_below_the_cap() -> None:
    s = snap(
        [job(1).user("bob").queue("one").build(), job(2).queue("eight").chunks(gpus=4).build(),
         job(3).queue("limited").walltime("1h").build()],
        [running(job("r").queue("one").build(), "n0", ()),
         running(job("g").queue("eight").chunks(gpus=4).build(), "n0", (0, 1, 2, 3))],
        queues=[_LIMITED, _ONE_EACH, _EIGHT_GPUS],
    )
    plan = run_cycle(s, Pipeline.of(Limits(), actions=ALLOCATE))
    assert started_ids(plan) == ["1", "2", "3"]


def test_limit_counts_grow_with_starts_in_the_same_cycle() -> None:
    s = snap([job(1).queue("one").build(), job(2).queue("one").build(), job(3).user("bob").queue("one").build()],
             queues=[_ONE_EACH])
    plan = run_cycle(s, Pipeline.of(Limits(), actions=ALLOCATE))
    assert started_ids(plan) == ["1", "3"]
    assert reasons(plan, s) == {"2": Reason.QOS_MAX_JOBS_PER_USER}


def test_jobs_that_are_refused_or_not_eligible_do_not_block_the_queue() -> None:
    s = snap(
        [job(1).chunks(gpus=1).held().build(), gpus(2, 16), job(3).queue("limited").walltime("9h").build(),
         job(4).chunks(gpus=1).after("1").build(), gpus(5, 8)],
        queues=[_LIMITED],
    )
    plan = run_cycle(s, Pipeline.of(Limits(), actions=ALLOCATE))
    assert starts(plan) == [("5", (cp("n0", ALL8),))]
    assert reasons(plan, s) == {
        "1": Reason.HELD, "2": Reason.NEVER, "3": Reason.QUEUE_LIMIT, "4": Reason.DEPENDENCY,
    }


# ------------------------------------------------------------------ gangs


def test_gang_starts_on_distinct_nodes_all_at_once() -> None:
    s = snap([job(1).chunks(2, gpus=8).build()], [running(gpus("r", 4), "n1", (0, 1, 2, 3))], gpu_nodes(3))
    plan = run_cycle(s, Pipeline.of(actions=ALLOCATE))
    assert starts(plan) == [("1", (cp("n0", ALL8), cp("n2", ALL8)))]


@pytest.mark.parametrize(
    ("request_gpus", "busy"),
    [
        (8, {"n1": ALL8, "n2": (0,)}),  # only n0 has 8 free
        (4, {"n1": ALL8, "n2": ALL8}),  # n0 could hold both 4-GPU chunks, but not as distinct nodes
    ],
)
def test_gang_is_all_or_nothing(request_gpus: int, busy: dict[str, tuple[int, ...]]) -> None:
    runs = [running(gpus(f"r{n}", len(g)), n, g) for n, g in busy.items()]
    s = snap([job(1).chunks(2, gpus=request_gpus).build(), gpus(2, 1)], runs, gpu_nodes(3))
    plan = run_cycle(s, Pipeline.of(actions=ALLOCATE))
    assert plan.starts == []
    assert reasons(plan, s) == {"1": Reason.RESOURCES, "2": Reason.PRIORITY}


def test_gang_of_half_nodes_packs_onto_partly_used_nodes() -> None:
    runs = [running(gpus("a", 4), "n1", (0, 1, 2, 3)), running(gpus("b", 4), "n2", (4, 5, 6, 7))]
    s = snap([job(1).chunks(2, gpus=4).build()], runs, gpu_nodes(3))
    plan = run_cycle(s, Pipeline.of(actions=ALLOCATE))
    assert starts(plan) == [("1", (cp("n1", (4, 5, 6, 7)), cp("n2", (0, 1, 2, 3))))]


# ------------------------------------------------------------------ placement


def _placement_snapshot() -> Snapshot:
    runs = [running(gpus("a", 6), "n1", (0, 1, 2, 3, 4, 5)), running(gpus("b", 4), "n2", (0, 1, 2, 3))]
    return snap([gpus(1, 1), gpus(2, 1), gpus(3, 2), gpus(4, 8)], runs, gpu_nodes(3))


def test_pack_fills_partly_used_nodes_first_and_keeps_a_whole_node_free() -> None:
    s = _placement_snapshot()
    plan = run_cycle(s, Pipeline.of(Placement("pack"), actions=ALLOCATE))
    assert starts(plan) == [
        ("1", (cp("n1", (6,)),)),
        ("2", (cp("n1", (7,)),)),
        ("3", (cp("n2", (4, 5)),)),
        ("4", (cp("n0", ALL8),)),
    ]


def test_spread_takes_the_emptiest_node_first() -> None:
    s = _placement_snapshot()
    plan = run_cycle(s, Pipeline.of(Placement("spread"), actions=ALLOCATE))
    assert starts(plan) == [
        ("1", (cp("n0", (0,)),)),
        ("2", (cp("n0", (1,)),)),
        ("3", (cp("n0", (2, 3)),)),
    ]
    assert reasons(plan, s) == {"4": Reason.RESOURCES}


def test_pack_is_the_default_placement() -> None:
    s = _placement_snapshot()
    assert starts(run_cycle(s, Pipeline.of(actions=ALLOCATE))) == starts(
        run_cycle(s, Pipeline.of(Placement("pack"), actions=ALLOCATE))
    )


def test_cpu_only_jobs_pack_onto_nodes_without_free_gpus() -> None:
    nodes = gpu_nodes(2)
    s = snap([job(1).chunks(cpus=8).build()], [running(gpus("a", 8), "n1", ALL8)], nodes)
    plan = run_cycle(s, Pipeline.of(actions=ALLOCATE))
    assert starts(plan) == [("1", (ChunkPlacement("n1", 8, 0, ()),))]


# ------------------------------------------------------------------ backfill

# Two 8-GPU nodes. n0: 4 GPUs busy until t=100. n1: 6 GPUs busy until t=300.
#   H  8 GPUs for 1000 s  head of the queue, cannot start now
#   L  8 GPUs for  200 s  (conservative: reserved behind H)
#   S  4 GPUs for   50 s  short: ends before H's reservation on n0
#   M  2 GPUs for 1000 s  fits on n1 now, but would run into L's reservation there


def _backfill_snapshot(extra: Sequence[Job] = ()) -> Snapshot:
    runs = [running(gpus("a", 4, 100), "n0", (0, 1, 2, 3)), running(gpus("b", 6, 300), "n1", (0, 1, 2, 3, 4, 5))]
    pending = [gpus(1, 8, 1000), gpus(2, 8, 200), gpus(3, 4, 50), gpus(4, 2, 1000), *extra]
    return snap(pending, runs, gpu_nodes(2))


_BACKFILL_TABLE = [
    pytest.param(
        "none",
        [],
        {},
        {"1": Reason.RESOURCES, "2": Reason.PRIORITY, "3": Reason.PRIORITY, "4": Reason.PRIORITY},
        id="none",
    ),
    pytest.param(
        "easy",
        [("3", (cp("n0", (4, 5, 6, 7)),)), ("4", (cp("n1", (6, 7)),))],
        {"1": Reservation(100.0, (cp("n0", ALL8),))},
        {"1": Reason.RESOURCES, "2": Reason.PRIORITY},
        id="easy",
    ),
    pytest.param(
        "conservative",
        [("3", (cp("n0", (4, 5, 6, 7)),))],
        {
            "1": Reservation(100.0, (cp("n0", ALL8),)),
            "2": Reservation(300.0, (cp("n1", ALL8),)),
            "4": Reservation(500.0, (cp("n1", (0, 1)),)),
        },
        {"1": Reason.RESOURCES, "2": Reason.PRIORITY, "4": Reason.PRIORITY},
        id="conservative",
    ),
]


@pytest.mark.parametrize(("mode", "exp_starts", "exp_reservations", "exp_reasons"), _BACKFILL_TABLE)
def test_backfill_table(
    mode: str,
    exp_starts: list[tuple[str, tuple[ChunkPlacement, ...]]],
    exp_reservations: dict[str, Reservation],
    exp_reasons: dict[str, Reason],
) -> None:
    s = _backfill_snapshot()
    plan = run_cycle(s, Pipeline.of(Backfill(mode)))
    assert starts(plan) == exp_starts
    assert plan.reservations == exp_reservations
    assert reasons(plan, s) == exp_reasons
    assert plan.truncated is False


def test_conservative_gives_every_blocked_job_a_reservation_in_order() -> None:
    s = snap([gpus(1, 8, 100), gpus(2, 8, 100), gpus(3, 1, 1000)], [running(gpus("a", 8, 100), "n0", ALL8)])
    plan = run_cycle(s, Pipeline.of(Backfill("conservative")))
    assert plan.starts == []
    assert plan.reservations == {
        "1": Reservation(100.0, (cp("n0", ALL8),)),
        "2": Reservation(200.0, (cp("n0", ALL8),)),
        "3": Reservation(300.0, (cp("n0", (0,)),)),
    }
    assert reasons(plan, s) == {"1": Reason.RESOURCES, "2": Reason.PRIORITY, "3": Reason.PRIORITY}


def test_easy_gives_only_the_first_blocked_job_a_reservation() -> None:
    s = snap([gpus(1, 8, 100), gpus(2, 8, 100), gpus(3, 1, 1000)], [running(gpus("a", 8, 100), "n0", ALL8)])
    plan = run_cycle(s, Pipeline.of(Backfill("easy")))
    assert plan.starts == []
    assert plan.reservations == {"1": Reservation(100.0, (cp("n0", ALL8),))}
    assert reasons(plan, s) == {"1": Reason.RESOURCES, "2": Reason.PRIORITY, "3": Reason.PRIORITY}


def test_easy_long_job_that_would_take_reserved_gpus_does_not_backfill() -> None:
    # one node: 4 GPUs busy until 100; head wants all 8 from 100
    s = snap([gpus(1, 8, 1000), gpus(2, 4, 101), gpus(3, 4, 100)],
             [running(gpus("a", 4, 100), "n0", (0, 1, 2, 3))])
    plan = run_cycle(s, Pipeline.of(Backfill("easy")))
    assert plan.reservations == {"1": Reservation(100.0, (cp("n0", ALL8),))}
    assert starts(plan) == [("3", (cp("n0", (4, 5, 6, 7)),))]  # ends exactly at the shadow time
    assert reasons(plan, s) == {"1": Reason.RESOURCES, "2": Reason.PRIORITY}


def test_easy_backfill_never_delays_the_reservation_it_made() -> None:
    s = _backfill_snapshot(extra=[gpus(5, 1, 99), gpus(6, 1, 5000), gpus(7, 2, 10)])
    plan = run_cycle(s, Pipeline.of(Backfill("easy")))
    res = plan.reservations["1"]
    for j, placement in plan.starts:
        for c in placement:
            for r in res.placement:
                if c.node == r.node and set(c.gpus) & set(r.gpus):
                    assert s.now + j.walltime_s <= res.start, (j.id, c)


@pytest.mark.parametrize(("limit", "truncated", "started"), [(None, False, ["3", "4"]), (3, True, ["3"]),
                                                              (4, False, ["3", "4"]), (1, True, [])])
def test_max_jobs_tested_bounds_backfill_and_says_so(limit: int | None, truncated: bool, started: list[str]) -> None:
    s = _backfill_snapshot()
    plan = run_cycle(s, Pipeline.of(Backfill("easy", max_jobs_tested=limit)))
    assert plan.truncated is truncated
    assert started_ids(plan) == started
    assert plan.reservations.keys() == {"1"}


# ------------------------------------------------------------------ combination rules


class _KeyA(Policy):
    name = "key_a"

    def __init__(self, keys: Mapping[str, float]) -> None:
        self.keys = keys

    def order_key(self, job: Job, ctx: Context) -> float:
        return self.keys[job.id]


class _KeyB(_KeyA):
    name = "key_b"


_A = {"1": 1, "2": 0, "3": 0, "4": 1, "5": 0}
_B = {"1": 0, "2": 5, "3": 2, "4": 0, "5": 2}


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        pytest.param((), ["1", "2", "3", "4", "5"], id="no-keys-fcfs"),
        pytest.param((_KeyA(_A),), ["2", "3", "5", "1", "4"], id="a-then-order"),
        pytest.param((_KeyA(_A), _KeyB(_B)), ["3", "5", "2", "1", "4"], id="a-b-order"),
        pytest.param((_KeyB(_B), _KeyA(_A)), ["1", "4", "3", "5", "2"], id="b-a-order"),
    ],
)
def test_ordering_is_lexicographic_in_config_order_then_seq(policies: tuple[Policy, ...], expected: list[str]) -> None:
    pending = [job(i).chunks(gpus=1).build() for i in (5, 4, 3, 2, 1)]  # reverse submission order
    plan = run_cycle(snap(pending), Pipeline.of(*policies, actions=ALLOCATE))
    assert started_ids(plan) == expected


def test_seq_not_id_breaks_ties() -> None:
    pending = [job("b", order=1).chunks(gpus=8).build(), job("a", order=2).chunks(gpus=8).build()]
    plan = run_cycle(snap(pending), Pipeline.of(actions=ALLOCATE))
    assert started_ids(plan) == ["b"]


class _RefuseA(Policy):
    name = "refuse_a"
    reason = Reason.QUEUE_LIMIT

    def fits(self, job: Job, ctx: Context) -> Reason | None:
        return self.reason if job.id.startswith("x") else None


class _RefuseB(_RefuseA):
    name = "refuse_b"
    reason = Reason.QOS_MAX_GPUS_PER_USER


@pytest.mark.parametrize(
    ("policies", "expected"),
    [((_RefuseA(), _RefuseB()), Reason.QUEUE_LIMIT), ((_RefuseB(), _RefuseA()), Reason.QOS_MAX_GPUS_PER_USER)],
)
def test_first_refusing_fits_in_config_order_names_the_reason(policies: tuple[Policy, ...], expected: Reason) -> None:
    s = snap([job("x1", order=1).build(), job("y", order=2).build()])
    plan = run_cycle(s, Pipeline.of(*policies, actions=ALLOCATE))
    assert started_ids(plan) == ["y"]
    assert reasons(plan, s) == {"x1": expected}


def test_can_never_run_comes_before_any_policy_refusal() -> None:
    s = snap([job("x1", order=1).chunks(gpus=9).build()])
    plan = run_cycle(s, Pipeline.of(_RefuseA(), actions=ALLOCATE))
    assert reasons(plan, s) == {"x1": Reason.NEVER}


def test_every_on_start_hook_sees_every_start() -> None:
    seen: list[tuple[str, str]] = []

    class _Watch(Policy):
        name = "watch"

        def on_start(self, job: Job, placement: tuple[ChunkPlacement, ...], ctx: Context) -> None:
            seen.append((self.name, job.id))

    class _Watch2(_Watch):
        name = "watch2"

    run_cycle(snap([gpus(1, 4), gpus(2, 4), gpus(3, 1)]), Pipeline.of(_Watch(), _Watch2(), actions=ALLOCATE))
    assert seen == [("watch", "1"), ("watch2", "1"), ("watch", "2"), ("watch2", "2")]


def test_the_snapshot_is_not_modified_by_a_cycle() -> None:
    s = _backfill_snapshot()
    before = (repr(s.pending), repr(s.running), repr(s.nodes))
    run_cycle(s, Pipeline.of(Backfill("conservative")))
    assert (repr(s.pending), repr(s.running), repr(s.nodes)) == before


@pytest.mark.parametrize("mode", ["easy", "conservative"])
def test_a_maintained_occupancy_gives_the_same_plan_and_is_left_untouched(mode: str) -> None:
    s = _backfill_snapshot(extra=[gpus(5, 1, 20)])
    occ = Occupancy.of(s.nodes, s.running)
    before = ({n: (nf.cpus, nf.mem_mb, nf.gpus) for n, nf in occ.cluster.nodes.items()},
              [set(b) for b in occ.cluster.buckets], occ.cluster.max_gpus,
              {n: dict(d) for n, d in occ.releases.items()})
    with_occ = dataclasses.replace(s, occupancy=occ)
    expected = run_cycle(s, Pipeline.of(Backfill(mode)))
    plan = run_cycle(with_occ, Pipeline.of(Backfill(mode)))
    assert starts(plan) == starts(expected) and starts(plan)  # something did start
    assert plan.reservations == expected.reservations
    assert plan.reasons == expected.reasons
    after = ({n: (nf.cpus, nf.mem_mb, nf.gpus) for n, nf in occ.cluster.nodes.items()},
             [set(b) for b in occ.cluster.buckets], occ.cluster.max_gpus,
             {n: dict(d) for n, d in occ.releases.items()})
    assert after == before


# ------------------------------------------------------------------ Pipeline.from_config


def test_from_config_builds_policies_in_file_order_with_their_values() -> None:
    p = Pipeline.from_config(
        {
            "actions": ["allocate", "backfill"],
            "placement": {"mode": "spread"},
            "backfill": {"mode": "conservative", "max_jobs_tested": 10},
            "limits": {},
        }
    )
    assert p.actions == ("allocate", "backfill")
    assert list(p.policies) == ["placement", "backfill", "limits"]
    bf = p.policies["backfill"]
    assert isinstance(bf, Backfill) and (bf.mode, bf.max_jobs_tested) == ("conservative", 10)
    pl = p.policies["placement"]
    assert isinstance(pl, Placement) and pl.mode == "spread"


def test_from_config_defaults() -> None:
    p = Pipeline.from_config({"backfill": {}})
    assert p.actions == ("allocate", "backfill")  # no [preemption]: no preempt
    bf = p.policies["backfill"]
    assert isinstance(bf, Backfill) and (bf.mode, bf.max_jobs_tested) == ("easy", None)
    assert p.backfill_policy is bf


@pytest.mark.parametrize(
    ("tables", "actions"),
    [
        ({}, ("allocate",)),
        ({"backfill": {}}, ("allocate", "backfill")),
        ({"preemption": {}}, ("allocate", "preempt")),
        ({"backfill": {}, "limits": {}, "preemption": {}}, DEFAULT_ACTIONS),
    ],
)
def test_default_actions_are_those_whose_table_is_present(tables: dict[str, Any], actions: tuple[str, ...]) -> None:
    assert DEFAULT_ACTIONS == ("allocate", "preempt", "backfill")
    assert Pipeline.from_config(tables).actions == actions
    policies = Pipeline.from_config(tables).policies.values()
    assert Pipeline.of(*policies).actions == actions


def test_the_shipped_policies_run_every_action_with_typed_settings() -> None:
    p = load_pipeline()
    assert p.actions == DEFAULT_ACTIONS
    assert isinstance(p.backfill_policy, Backfill) and p.backfill_policy.mode == "easy"
    assert isinstance(p.victims_policy, Preemption) and p.victims_policy.max_preemptors == 16
    assert isinstance(p.usage_policy, FairShare) and p.usage_policy.half_life_s == 604800.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"actions": ["allocate", "backfill"]}, 'actions: "backfill" needs a [backfill] table'),
        ({"actions": ["allocate", "preempt"], "backfill": {}}, 'actions: "preempt" needs a [preemption] table'),
    ],
)
def test_an_action_without_the_table_that_configures_it_is_a_config_error(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Pipeline.from_config(config)
    assert str(err.value) == message
    with pytest.raises(ConfigError):
        Pipeline.of(Limits(), actions=config["actions"])


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        pytest.param({"actions": ["allocate", "reclaim"]}, "actions", ["'reclaim'", "allocate, backfill, preempt"],
                     id="unknown-action"),
        pytest.param({"actions": "allocate"}, "actions", ["list"], id="actions-not-a-list"),
        pytest.param({"actions": ["allocate", 3]}, "actions", ["list"], id="action-not-a-string"),
        pytest.param({"drf": {}}, "drf", ["unknown policy 'drf'", "backfill", "fairshare", "preemption"],
                     id="unknown-policy"),
        pytest.param({"placement": "pack"}, "placement", ["table"], id="policy-not-a-table"),
        pytest.param({"backfill": {"mode": "easy", "bf_window": 10}}, "backfill.bf_window", ["unknown key"],
                     id="unknown-key"),
        pytest.param({"backfill": {"mode": "aggressive"}}, "backfill.mode", ["none, easy, conservative", "aggressive"],
                     id="bad-choice"),
        pytest.param({"backfill": {"max_jobs_tested": 0}}, "backfill.max_jobs_tested", [">= 1"], id="below-min"),
        pytest.param({"backfill": {"max_jobs_tested": True}}, "backfill.max_jobs_tested", ["integer"], id="bool-int"),
        pytest.param({"backfill": {"max_jobs_tested": 2.5}}, "backfill.max_jobs_tested", ["integer"], id="float-int"),
        pytest.param({"placement": {"mode": "binpack"}}, "placement.mode", ["pack, spread"], id="placement-mode"),
        pytest.param({"priority": {"weights": {"agee": 1}}}, "priority.weights.agee", ["unknown key"],
                     id="nested-unknown-key"),
        pytest.param({"priority": {"weights": {"age": "high"}}}, "priority.weights.age", ["number"],
                     id="nested-bad-number"),
        pytest.param({"priority": {"max_age_s": 0}}, "priority.max_age_s", [">= 1"], id="number-below-min"),
        pytest.param({"priority": {"favor_small": "yes"}}, "priority.favor_small", ["true or false"], id="bad-bool"),
        pytest.param({"preemption": {"mode": "kill"}}, "preemption.mode", ["requeue, cancel"], id="preempt-mode"),
        pytest.param({"preemption": {"grace_s": -1}}, "preemption.grace_s", [">= 0"], id="negative-grace"),
        pytest.param({"fairshare": {"usage": "watts"}}, "fairshare.usage", ["gpu_seconds"], id="fs-usage"),
        pytest.param({"fairshare": {"accounts": {"ml": {"parent": "nope"}}}}, "fairshare.accounts.ml.parent",
                     ["'nope'"], id="fs-unknown-parent"),
    ],
)
def test_from_config_errors_name_the_toml_path(config: dict[str, Any], path: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        Pipeline.from_config(config)
    assert err.value.path == path
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for w in words:
        assert w in message


def test_unknown_action_in_pipeline_of_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        Pipeline.of(actions=("allocate", "enqueue"))
    assert err.value.path == "actions"
