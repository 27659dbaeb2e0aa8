"""The daemon's state machine on a virtual clock: no sockets, no store.

Agents are played by the test: it registers nodes with a recording sender and
answers Launch with Exited, so every transition is driven by an event.
"""

from __future__ import annotations

import msgspec
import pytest

from schedd.daemon.reconcile import check_nodes, on_register
from schedd.config import load_pipeline, load_settings
from schedd.errors import InputError, NeverFits, PermissionDenied, UnknownJob, UnknownQueue, WrongState
from schedd.protocol import EXIT_RERUN, EXIT_WALLTIME, Exited, GpuInfo, Kill, Launch, Register, RunningJob
from schedd.daemon.records import ChunkRequest, Dependency, SubmitRequest
from schedd.core.scheduler import run_cycle
from schedd.daemon.state import Outbox, State


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env() -> tuple[State, Clock]:
    clock = Clock()
    settings = load_settings()
    state = State(settings, load_pipeline(settings.policies_path()), None, clock)
    for name in ("n1", "n2"):
        reg = Register(name, 64, 100_000, [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(8)], True)
        on_register(state, reg, lambda m: None, "127.0.0.1")
    return state, clock


def cycle(state: State) -> Outbox:
    now = state.clock()
    return state.apply(run_cycle(state.snapshot(now), state.pipeline), now)


def launches(out: Outbox) -> list[Launch]:
    return [m for _, m in out if isinstance(m, Launch)]


def finish(state: State, launch: Launch, status: int = 0, how: str = "exited") -> Outbox:
    t = state.clock()
    return state.rank_exited(Exited(launch.job_id, launch.attempt, launch.rank, status, how, t, t))


def gpu_job(n: int = 1, count: int = 1, **kw: object) -> SubmitRequest:
    return SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=n, count=count)], **kw)  # type: ignore[arg-type]


def test_submit_start_finish(env: tuple[State, Clock]) -> None:
    state, clock = env
    rec = state.submit(gpu_job(2), "ann")
    assert rec.state == "queued" and rec.stdout_path == f"/tmp/true.o{rec.number}"
    (launch,) = launches(cycle(state))
    assert launch.spec.gpus == [0, 1] or len(launch.spec.gpus) == 2
    assert launch.spec.job_id == f"{rec.id}.schedd"
    assert state.jobs[rec.id].state == "running"
    clock.t += 5
    finish(state, launch)
    done = state.jobs[rec.id]
    assert (done.state, done.exit_status, done.finish_reason) == ("finished", 0, "completed")
    assert done.used.gpu_s == pytest.approx(10.0)


def test_bad_submissions_are_refused_precisely(env: tuple[State, Clock]) -> None:
    state, _ = env
    with pytest.raises(UnknownQueue, match="unknown queue 'gpu9'"):
        state.submit(msgspec.structs.replace(gpu_job(), queue="gpu9"), "ann")
    with pytest.raises(NeverFits, match="exceeds every node"):
        state.submit(gpu_job(16), "ann")
    with pytest.raises(InputError, match="exactly one"):
        state.submit(SubmitRequest(workdir="/tmp"), "ann")
    with pytest.raises(UnknownJob, match="depend: unknown job 99"):
        state.submit(gpu_job(depend=[Dependency("afterok", ["99"])]), "ann")
    with pytest.raises(InputError, match="over queue '1xgpu'"):
        state.submit(SubmitRequest(argv=["true"], queue="1xgpu", walltime_s=1e9), "ann")
    assert state.jobs == {}


def test_gang_failure_kills_the_other_ranks(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(8, count=2), "ann")
    ranks = launches(cycle(state)) + launches(state.started(rec.id, 0, 0))
    assert sorted(l.spec.env["RANK"] for l in ranks) == ["0", "1"]
    assert {l.spec.env["MASTER_ADDR"] for l in ranks} == {"127.0.0.1"}
    out = finish(state, ranks[0], status=3)
    kills = [m for _, m in out if isinstance(m, Kill)]
    assert [(k.job_id, k.rank) for k in kills] == [(rec.id, 1)]
    finish(state, ranks[1], status=256 + 15)
    assert (state.jobs[rec.id].exit_status, state.jobs[rec.id].finish_reason) == (3, "failed")


def test_afterok_runs_after_success_and_is_cancelled_after_failure(env: tuple[State, Clock]) -> None:
    state, _ = env
    a = state.submit(gpu_job(), "ann")
    b = state.submit(gpu_job(depend=[Dependency("afterok", [a.id])]), "ann")
    c = state.submit(gpu_job(depend=[Dependency("afternotok", [a.id])]), "ann")
    assert (b.state, b.reason, c.state) == ("waiting", "Dependency", "waiting")
    (la,) = launches(cycle(state))
    finish(state, la, status=0)
    assert state.jobs[b.id].state == "queued"
    assert state.jobs[c.id].state == "finished" and "can never be satisfied" in state.jobs[c.id].comment


def test_array_respects_max_running(env: tuple[State, Clock]) -> None:
    state, _ = env
    parent = state.submit(gpu_job(array="1-5%2"), "ann")
    assert parent.id == f"{parent.number}[]"
    first = launches(cycle(state))
    assert len(first) == 2 and first[0].spec.env["PBS_ARRAY_INDEX"] == "1"
    assert launches(cycle(state)) == []
    finish(state, first[0])
    (third,) = launches(cycle(state))
    assert third.spec.env["PBS_ARRAY_INDEX"] == "3"
    assert state.jobs[parent.id].state == "running"


def test_cancel_running_job_waits_for_the_exit(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(), "ann")
    (l,) = launches(cycle(state))
    with pytest.raises(PermissionDenied):
        state.cancel(rec.id, "bob", False)
    out = state.cancel(rec.id, "ann", False)
    assert [type(m) for _, m in out] == [Kill] and state.jobs[rec.id].state == "exiting"
    finish(state, l, status=256 + 15, how="killed")
    assert state.jobs[rec.id].finish_reason == "cancelled"
    with pytest.raises(WrongState):
        state.cancel(rec.id, "ann", False)


def test_walltime_exit_is_a_timeout(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(), "ann")
    (l,) = launches(cycle(state))
    finish(state, l, status=EXIT_WALLTIME, how="walltime")
    assert (state.jobs[rec.id].finish_reason, state.jobs[rec.id].exit_status) == ("timeout", -29)


def test_hold_and_release(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(hold=True), "ann")
    assert rec.state == "held" and launches(cycle(state)) == []
    with pytest.raises(PermissionDenied):
        state.release(rec.id, "o", "ann", False)
    state.release(rec.id, "u", "ann", False)
    assert len(launches(cycle(state))) == 1


def test_silent_node_requeues_its_jobs(env: tuple[State, Clock]) -> None:
    state, clock = env
    rec = state.submit(gpu_job(8), "ann")
    (l,) = launches(cycle(state))
    clock.t += state.settings.heartbeat_timeout_s + 1
    state.fleet.nodes["n2" if l.spec.nodes[0] == "n1" else "n1"].last_seen = clock.t
    check_nodes(state, clock.t, 1e9)
    again = state.jobs[rec.id]
    assert (again.state, again.attempt) == ("queued", 1)
    # The old attempt's exit, arriving late, changes nothing.
    assert finish(state, l) == [] and state.jobs[rec.id].state == "queued"


def test_reconnecting_agent_is_reconciled(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(), "ann")
    (l,) = launches(cycle(state))
    node = l.spec.nodes[0]
    stale = RunningJob("77", 0, 0, 1.0)
    reg = Register(node, 64, 100_000, [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(8)], True,
                   running=[RunningJob(rec.id, 0, 0, 1.0), stale])
    welcome, out = on_register(state, reg, lambda m: None, "127.0.0.1")
    assert welcome.kill == [stale] and state.jobs[rec.id].state == "running"
    # Registering again without the job: it was lost, and is requeued.
    reg2 = msgspec.structs.replace(reg, running=[])
    on_register(state, reg2, lambda m: None, "127.0.0.1")
    assert (state.jobs[rec.id].state, state.jobs[rec.id].attempt) == ("queued", 1)


def test_requeue_on_request(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(), "ann")
    (l,) = launches(cycle(state))
    (node, kill), = state.requeue(rec.id, "ann", False)
    assert isinstance(kill, Kill) and kill.status == EXIT_RERUN
    finish(state, l, status=EXIT_RERUN, how="killed")
    assert (state.jobs[rec.id].state, state.jobs[rec.id].attempt) == ("queued", 1)
    (l2,) = launches(cycle(state))
    assert l2.attempt == 1


def test_chunk_resources_left_out_come_from_the_queue(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(SubmitRequest(argv=["true"], workdir="/tmp", queue="1xgpu", chunks=[ChunkRequest(ncpus=2)]), "ann")
    assert [(c.ncpus, c.ngpus) for c in rec.chunks] == [(2, 1)]


def test_array_parent_finishes_with_its_last_subjob(env: tuple[State, Clock]) -> None:
    state, _ = env
    parent = state.submit(gpu_job(array="1-3"), "ann")
    subs = launches(cycle(state))
    assert len(subs) == 3 and state.jobs[parent.id].state == "running"
    finish(state, subs[0], status=0)
    finish(state, subs[1], status=2)
    assert state.jobs[parent.id].state == "running"
    finish(state, subs[2], status=0)
    done = state.jobs[parent.id]
    assert (done.state, done.exit_status, done.finish_reason) == ("finished", 1, "failed")


def test_cancelling_an_array_finishes_the_parent(env: tuple[State, Clock]) -> None:
    state, _ = env
    parent = state.submit(gpu_job(array="1-4", hold=True), "ann")
    assert state.jobs[parent.id].state == "held"
    state.cancel(parent.id, "ann", False)
    assert (state.jobs[parent.id].state, state.jobs[parent.id].exit_status) == ("finished", 0)


# ---------------------------------------------------------------- a gang's output (issue #15)


def test_a_gang_launches_rank_0_first_and_the_rest_once_it_started(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(8, count=2), "ann")
    assert [l.rank for l in launches(cycle(state))] == [0]
    assert launches(state.started(rec.id, 0, rank=1)) == []  # only rank 0 decides
    assert [l.rank for l in launches(state.started(rec.id, 0, rank=0))] == [1]
    assert launches(state.started(rec.id, 0, rank=0)) == []  # once


def test_rank_0_preparing_its_environment_lets_the_gang_go(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(8, count=2), "ann")
    cycle(state)
    assert [l.rank for l in launches(state.preparing(rec.id, 0, "building environment venv 3f2a", rank=0))] == [1]


def test_rank_0_failing_to_launch_ends_the_gang_with_no_rank_left_behind(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(8, count=2), "ann")
    (first,) = launches(cycle(state))
    out = finish(state, first, status=-1, how="launch_failed")
    assert launches(out) == [] and [m for _, m in out if isinstance(m, Kill)] == []  # rank 1 was never launched
    assert (state.jobs[rec.id].state, state.jobs[rec.id].exit_status) == ("finished", -1)
    assert rec.id not in state.active


def test_a_rank_0_exit_whose_start_was_never_heard_still_launches_the_gang(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(8, count=2), "ann")
    (first,) = launches(cycle(state))
    out = finish(state, first, status=0)  # a fast rank 0: its Started was lost with a session
    (second,) = launches(out)
    assert second.rank == 1 and state.jobs[rec.id].state == "running"
    finish(state, second, status=0)
    assert state.jobs[rec.id].exit_status == 0


def test_cancelling_a_gang_before_rank_0_started_ends_the_held_ranks(env: tuple[State, Clock]) -> None:
    state, _ = env
    rec = state.submit(gpu_job(8, count=2), "ann")
    (first,) = launches(cycle(state))
    out = state.cancel(rec.id, "ann", False)
    assert [(m.job_id, m.rank) for _, m in out if isinstance(m, Kill)] == [(rec.id, 0)]
    assert launches(state.started(rec.id, 0, rank=0)) == []  # too late: nothing more is launched
    finish(state, first, status=256 + 15, how="killed")
    assert state.jobs[rec.id].finish_reason == "cancelled"
