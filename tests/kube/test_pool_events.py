"""What the pool's pod events do to the fleet and the jobs, on a virtual clock:
a pod deleted mid-job ends the node's incarnation at once (warning kill, then
requeue with attempt + 1, or NODE_FAIL when not rerunnable); its agent's
session of that incarnation is refused afterwards; a new pod of the same name
re-registers and the node comes back; a DOWN that may pass (Kubernetes node
unreachable) is a silence, resumed if the same agent comes back; a Pending pod
is a node 'reserving' with Kubernetes' words."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedd.api.nodes import all_views
from schedd.config import load_pipeline, load_settings
from schedd.core.model import NodeState
from schedd.daemon.fleet import PoolView
from schedd.daemon.reconcile import on_register, pod_gone, pod_seen
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.daemon.state import Outbox, State
from schedd.protocol import EXIT_RERUN, GpuInfo, Kill, Register, RunningJob
from tests.daemon.test_agents import Clock, cycle


@pytest.fixture
def state(tmp_path: Path) -> State:
    settings = load_settings()
    st = State(settings, load_pipeline(settings.policies_path()), None, Clock())
    st.fleet.pool = PoolView("kubernetes", {"gpu": 2})
    return st


def register(state: State, name: str, uid: str, running: list[RunningJob] | None = None) -> Outbox:
    gpus = [GpuInfo(0, "u0", "fake", 80_000)]
    _, out = on_register(state, Register(name, 8, 16_000, gpus, True, running or [], incarnation=uid),
                         lambda m: None, "10.0.0.1")
    return out


def submit(state: State, rerunnable: bool = True) -> str:
    req = SubmitRequest(argv=["sleep", "60"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=1)],
                        rerunnable=rerunnable)
    return state.submit(req, "ann").id


def test_a_deleted_pod_requeues_its_jobs_at_once_and_its_incarnation_is_refused(state: State) -> None:
    register(state, "gpu-0", "uid-a")
    pod_seen(state, "gpu-0", "uid-a", "ready", "pod running on k1", code="Running", group="gpu")
    jid = submit(state)
    (launch,) = cycle(state)
    out = pod_seen(state, "gpu-0", "uid-a", "down", "pod deleted", final=True, code="Deleting", group="gpu")
    rec = state.jobs[jid]
    assert (rec.state, rec.attempt) == ("queued", launch.attempt + 1) and "pod deleted" in rec.comment  # requeued, no heartbeat waited for
    assert [(n, type(m)) for n, m in out] == [("gpu-0", Kill)]  # the warning, to the still-connected agent
    kill = out[0][1]
    assert isinstance(kill, Kill) and (kill.attempt, kill.status) == (launch.attempt, EXIT_RERUN)
    entry = state.fleet.nodes["gpu-0"]
    assert entry.node.state is NodeState.DOWN and entry.connected and entry.comment == "pod deleted"
    assert pod_gone(state, "gpu-0", "uid-a", "pod deleted") == []  # the deletion's end adds nothing
    with pytest.raises(ValueError, match="incarnation uid-a of node gpu-0 has ended"):
        register(state, "gpu-0", "uid-a", [RunningJob(jid, launch.attempt, 0, 990.0)])
    pod_seen(state, "gpu-0", "uid-b", "reserving", "waiting for the Kubernetes scheduler", code="Scheduling", group="gpu")
    view = {v["name"]: v for v in all_views(state)}["gpu-0"]
    assert (view["state"], view["comment"]) == ("reserving", "waiting for the Kubernetes scheduler")
    register(state, "gpu-0", "uid-b")  # the recreated pod's agent: the node is back
    assert entry.node.state.value == "up" and entry.incarnation == "uid-b"


def test_a_job_that_is_not_rerunnable_ends_node_fail(state: State) -> None:
    register(state, "gpu-0", "uid-a")
    jid = submit(state, rerunnable=False)
    cycle(state)
    pod_gone(state, "gpu-0", "uid-a", "Kubernetes node k1 lost: Taint manager: deleting due to NoExecute taint")
    assert (state.jobs[jid].state, state.jobs[jid].finish_reason) == ("finished", "node_fail")


def test_a_new_incarnation_registering_first_ends_the_old_one(state: State) -> None:
    register(state, "gpu-0", "uid-a")
    jid = submit(state)
    cycle(state)
    out = register(state, "gpu-0", "uid-b")  # the watch has not said anything yet
    assert state.jobs[jid].attempt == 1 and not any(isinstance(m, Kill) for _, m in out)
    with pytest.raises(ValueError):
        register(state, "gpu-0", "uid-a")


def test_an_unreachable_node_is_a_silence_that_may_be_resumed(state: State) -> None:
    register(state, "gpu-0", "uid-a")
    jid = submit(state)
    (launch,) = cycle(state)
    pod_seen(state, "gpu-0", "uid-a", "down", "Kubernetes node k1 unreachable", code="Unknown", group="gpu")
    entry = state.fleet.nodes["gpu-0"]
    assert entry.node.state is NodeState.DOWN and not entry.connected and state.jobs[jid].attempt == launch.attempt + 1
    register(state, "gpu-0", "uid-a", [RunningJob(jid, launch.attempt, 0, 990.0)])  # it was only cut off
    assert (state.jobs[jid].state, state.jobs[jid].attempt) == ("running", launch.attempt)


def test_a_pending_pod_is_a_reserving_node_with_the_schedulers_words(state: State) -> None:
    why = "0/12 nodes are available: 12 Insufficient nvidia.com/gpu."
    pod_seen(state, "gpu-1", "uid-c", "reserving", why, code="Unschedulable", group="gpu")
    (view,) = all_views(state)
    assert (view["name"], view["state"], view["comment"], view["pod"]["uid"]) == ("gpu-1", "reserving", why, "uid-c")
    assert not state.fleet.schedulable()  # nothing to place work on until its agent registers
    pod_gone(state, "gpu-1", "uid-c", "pod deleted")
    assert all_views(state) == []
