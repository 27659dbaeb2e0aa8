"""Resizing a group without killing work, and the busy label's bookkeeping, on a virtual clock:
the highest ordinals are drained at once (no new job lands there), the StatefulSet
shrinks only past ordinals whose jobs ended (or whose walltime and kill delay are
over), a removed node is down 'removed by scale-down', raising the count lifts
the drains and a node drained before its agent registered is drained when it does."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedd.config import load_pipeline, load_settings
from schedd.core.model import NodeState
from schedd.daemon.fleet import PoolView
from schedd.daemon.reconcile import on_register, pod_gone, pod_seen
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.daemon.state import State
from schedd.pool.kube.busy import BusyLabels
from schedd.pool.holding import holding
from schedd.pool.kube.resize import REMOVED, Resizer
from schedd.protocol import Exited, GpuInfo, Launch, Register
from tests.daemon.test_agents import Clock, cycle


@pytest.fixture
def state(tmp_path: Path) -> State:
    settings = load_settings()
    st = State(settings, load_pipeline(settings.policies_path()), None, Clock())
    st.fleet.pool = PoolView("kubernetes", {"gpu": 4})
    return st


def register(state: State, name: str, uid: str) -> None:
    on_register(state, Register(name, 8, 16_000, [GpuInfo(0, "u0", "fake", 80_000)], True, [], incarnation=uid),
                lambda m: None, "10.0.0.1")
    pod_seen(state, name, uid, "ready", "pod running on k1", code="Running", group="gpu")


def submit(state: State, walltime_s: float | None = None) -> str:
    req = SubmitRequest(argv=["sleep", "60"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=1)],
                        walltime_s=walltime_s)
    return state.submit(req, "ann").id


def finish(state: State, launch: Launch) -> None:
    now = state.clock()
    state.rank_exited(Exited(launch.job_id, launch.attempt, 0, 0, "exited", now - 1, now))


def four_busy_nodes(state: State) -> tuple[Resizer, dict[str, Launch]]:
    for i in range(4):
        register(state, f"gpu-{i}", f"uid-{i}")
    for _ in range(4):
        submit(state)
    launches = {state.active[m.job_id].running.placement[0].node: m for m in cycle(state)}
    assert set(launches) == {"gpu-0", "gpu-1", "gpu-2", "gpu-3"}
    resizer = Resizer(state.fleet, {"gpu": 4})
    resizer.replicas["gpu"] = 4  # what the StatefulSet has
    return resizer, launches


def admin(state: State, name: str) -> tuple[NodeState | None, str]:
    entry = state.fleet.nodes[name]
    return entry.admin_state, entry.comment


def test_a_scale_down_drains_the_top_ordinals_and_shrinks_only_past_ended_jobs(state: State) -> None:
    resizer, launches = four_busy_nodes(state)
    resizer.want("gpu", 2)
    assert resizer.plan(holding(state, state.clock()).nodes) == {"gpu": 4}  # gpu-3 runs a job: nothing removed
    assert admin(state, "gpu-3")[0] is admin(state, "gpu-2")[0] is NodeState.DRAINING
    assert admin(state, "gpu-1") == (None, "") and state.fleet.pool is not None and state.fleet.pool.size["gpu"] == 2
    finish(state, launches["gpu-2"])
    assert resizer.plan(holding(state, state.clock()).nodes) == {"gpu": 4}  # gpu-2 is empty, gpu-3 still is not
    submit(state)
    assert cycle(state) == []  # the free, drained gpu-2 takes nothing new
    finish(state, launches["gpu-3"])
    assert resizer.plan(holding(state, state.clock()).nodes) == {"gpu": 2}
    resizer.replicas["gpu"] = 2  # applied; until the pods are gone the nodes stay drained
    resizer.plan(holding(state, state.clock()).nodes)
    assert admin(state, "gpu-3")[0] is NodeState.DRAINING
    for i in (2, 3):
        assert pod_gone(state, f"gpu-{i}", f"uid-{i}", "pod deleted") == []  # nothing ran there: nothing killed
    resizer.plan(holding(state, state.clock()).nodes)
    assert admin(state, "gpu-3") == (None, REMOVED) and state.fleet.nodes["gpu-3"].node.state is NodeState.DOWN
    assert state.fleet.pool.draining == {}
    # Growing again: the recreated pods' agents register and the nodes are free.
    resizer.want("gpu", 4)
    assert resizer.plan(holding(state, state.clock()).nodes) == {"gpu": 4}
    register(state, "gpu-3", "uid-3b")
    assert state.fleet.nodes["gpu-3"].effective_state() is NodeState.UP


def test_empty_top_ordinals_go_first_while_a_lower_one_runs(state: State) -> None:
    resizer, launches = four_busy_nodes(state)
    resizer.want("gpu", 1)
    for name in ("gpu-1", "gpu-3"):
        finish(state, launches[name])
    assert resizer.plan(holding(state, state.clock()).nodes) == {"gpu": 3}  # gpu-3 goes, gpu-2 holds 0..2
    assert sorted(resizer.draining("gpu")) == ["gpu-1", "gpu-2", "gpu-3"]


def test_a_job_past_its_walltime_and_kill_delay_no_longer_holds_its_node(state: State) -> None:
    register(state, "gpu-0", "uid-0")
    submit(state, walltime_s=100.0)
    (launch,) = cycle(state)
    held = holding(state, state.clock())
    assert held.nodes == {"gpu-0"} and held.until == state.clock() + 100.0 + state.settings.kill_delay_s
    assert isinstance(state.clock, Clock)
    state.clock.t = held.until
    assert holding(state, state.clock()).nodes == frozenset()


def test_growing_lifts_the_drains_and_leaves_an_operators_drain_alone(state: State) -> None:
    resizer, _ = four_busy_nodes(state)
    state.fleet.set_admin(state.fleet.nodes["gpu-2"], NodeState.OFFLINE, "bad GPU")
    resizer.want("gpu", 2)
    resizer.plan(holding(state, state.clock()).nodes)
    assert admin(state, "gpu-2") == (NodeState.OFFLINE, "bad GPU")
    resizer.want("gpu", 4)
    resizer.plan(holding(state, state.clock()).nodes)
    assert admin(state, "gpu-3") == (None, "") and admin(state, "gpu-2") == (NodeState.OFFLINE, "bad GPU")


def test_a_node_whose_agent_registers_during_the_drain_is_drained(state: State) -> None:
    register(state, "gpu-0", "uid-0")
    pod_seen(state, "gpu-1", "uid-1", "reserving", "waiting for the Kubernetes scheduler", group="gpu")
    resizer = Resizer(state.fleet, {"gpu": 2})
    resizer.replicas["gpu"] = 2
    resizer.want("gpu", 1)
    assert resizer.plan(holding(state, state.clock()).nodes) == {"gpu": 1}
    register(state, "gpu-1", "uid-1")  # the pod started before the StatefulSet shrank
    assert admin(state, "gpu-1")[0] is NodeState.DRAINING
    submit(state)
    (launch,) = cycle(state)
    assert state.active[launch.job_id].running.placement[0].node == "gpu-0"


def test_the_busy_label_changes_only_on_transitions_of_running_pods() -> None:
    labels = BusyLabels(api=None)  # type: ignore[arg-type]  # changes() needs no API
    labels.seen("gpu-0", "a", running=True, busy=False)
    labels.seen("gpu-1", "b", running=True, busy=True)
    labels.seen("gpu-2", "c", running=False, busy=False)  # Pending: never labelled
    assert labels.changes({"gpu-0", "gpu-1", "gpu-2"}) == [("gpu-0", "a", True)]
    assert labels.changes(set()) == [("gpu-1", "b", False)]
    labels.gone("gpu-1", "old-uid")  # an older incarnation: the current one is kept
    labels.gone("gpu-1", "b")
    assert labels.changes(set()) == []
