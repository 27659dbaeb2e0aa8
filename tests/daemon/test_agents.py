"""Silence and its end: nodes declared down, agents that come back, schedd's own stalls.

On a virtual clock with agents played by the test (as in test_state.py), plus
the agents' WebSocket on the real aiohttp app for the session schedd gives up on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from schedd.daemon.reconcile import check_nodes, on_register
from schedd.api.app import make_app
from schedd.api.auth import TokenBook
from schedd.config import load_pipeline, load_settings
from schedd.daemon.loop import Loop
from schedd.core.model import NodeState
from schedd.protocol import Exited, GpuInfo, Heartbeat, Kill, Launch, Register, RunningJob, Welcome, encode
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.core.scheduler import run_cycle
from schedd.daemon.state import Outbox, State
from schedd.store import Store


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[State, Clock, Store]]:
    clock = Clock()
    settings = load_settings()
    store = Store(tmp_path / "schedd.db")
    store.start()
    state = State(settings, load_pipeline(settings.policies_path()), store, clock)
    for name in ("n1", "n2"):
        register(state, name)
    yield state, clock, store
    store.close()


def register(state: State, name: str, running: list[RunningJob] | None = None,
             finished: list[Exited] | None = None) -> tuple[Welcome, Outbox]:
    gpus = [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(8)]
    return on_register(state, Register(name, 64, 100_000, gpus, True, running or [], finished or []),
                       lambda m: None, "127.0.0.1")


def cycle(state: State) -> list[Launch]:
    now = state.clock()
    return [m for _, m in state.apply(run_cycle(state.snapshot(now), state.pipeline), now) if isinstance(m, Launch)]


def submit(state: State, count: int = 1) -> str:
    req = SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=1, count=count)])
    return state.submit(req, "ann").id


def silence(state: State, clock: Clock, *, but: str = "") -> Outbox:
    """Every node but ``but`` falls silent past the timeout; the check runs."""
    clock.t += state.settings.heartbeat_timeout_s + 1
    if but:
        entry = state.fleet.get(but)
        assert entry is not None
        entry.last_seen = clock.t
    return check_nodes(state, clock.t, 0.0)


def done(launch: Launch, at: float, status: int = 0) -> Exited:
    return Exited(launch.job_id, launch.attempt, launch.rank, status, "exited", at - 5, at, cpu_s=3.0)


def kinds(store: Store, jid: str) -> list[str]:
    store.flush_sync()
    return [e.kind for e in store.events(jid)]


def test_an_attempt_finished_during_the_silence_ends_the_job_not_reruns_it(env: tuple[State, Clock, Store]) -> None:
    state, clock, store = env
    jid = submit(state)
    (launch,) = cycle(state)
    node = launch.spec.nodes[0]
    silence(state, clock)
    rec = state.jobs[jid]
    assert (rec.state, rec.attempt, state.fleet.nodes[node].node.state) == ("queued", 1, NodeState.DOWN)
    clock.t += 3
    welcome, out = register(state, node, finished=[done(launch, clock.t - 20, status=3)])
    assert welcome.kill == [] and not any(isinstance(m, Launch) for _, m in out)
    assert (rec.state, rec.attempt, rec.exit_status, rec.finish_reason) == ("finished", 0, 3, "failed")
    assert rec.used.gpu_s == pytest.approx(rec.end_time - rec.start_time)  # charged once, not twice
    assert rec.used.cpu_s == 3.0
    assert kinds(store, jid) == ["submit", "start", "requeue", "resume", "end"]
    assert state.fleet.nodes[node].node.state is NodeState.UP and cycle(state) == []


def test_an_attempt_still_running_is_taken_back_not_killed(env: tuple[State, Clock, Store]) -> None:
    state, clock, _ = env
    jid = submit(state)
    (launch,) = cycle(state)
    node = launch.spec.nodes[0]
    silence(state, clock, but="n2" if node == "n1" else "n1")  # the other node could rerun it
    welcome, _ = register(state, node, running=[RunningJob(jid, 0, 0, 0.0)])
    rec = state.jobs[jid]
    assert welcome.kill == [] and (rec.state, rec.attempt, rec.exec_nodes[0].node) == ("running", 0, node)
    assert cycle(state) == [] and jid not in state.pending
    state.rank_exited(done(launch, clock.t))
    assert (rec.state, rec.exit_status) == ("finished", 0)


def test_a_report_after_the_rerun_started_is_history_only(env: tuple[State, Clock, Store]) -> None:
    state, clock, store = env
    jid = submit(state)
    (first,) = cycle(state)
    node = first.spec.nodes[0]
    other = "n2" if node == "n1" else "n1"
    silence(state, clock, but=other)
    (second,) = cycle(state)
    assert (second.attempt, second.spec.nodes[0]) == (1, other)
    welcome, _ = register(state, node, running=[], finished=[done(first, clock.t)])
    rec = state.jobs[jid]
    assert (rec.state, rec.attempt) == ("running", 1)  # the rerun goes on; the late exit counts for nothing
    assert kinds(store, jid)[-2:] == ["start", "late_exit"]
    state.rank_exited(done(second, clock.t))
    assert (rec.state, rec.exit_status) == ("finished", 0)


def test_a_stale_attempt_still_running_after_the_rerun_started_is_killed(env: tuple[State, Clock, Store]) -> None:
    state, clock, _ = env
    jid = submit(state)
    (first,) = cycle(state)
    node = first.spec.nodes[0]
    silence(state, clock, but="n2" if node == "n1" else "n1")
    cycle(state)
    welcome, _ = register(state, node, running=[RunningJob(jid, 0, 0, 0.0)])
    assert welcome.kill == [RunningJob(jid, 0, 0, 0.0)] and state.jobs[jid].attempt == 1


def test_a_gang_that_lost_one_node_stays_requeued(env: tuple[State, Clock, Store]) -> None:
    state, clock, _ = env
    req = SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=40, ngpus=1, count=2)])
    jid = state.submit(req, "ann").id
    launches = cycle(state)
    launches += [m for _, m in state.started(jid, 0, 0) if isinstance(m, Launch)]  # rank 0 up: the gang goes on
    assert sorted(m.spec.nodes[m.rank] for m in launches) == ["n1", "n2"]
    out = silence(state, clock, but="n2")  # n1 is lost; n2's rank is killed for the gang
    kill = next(m for _, m in out if isinstance(m, Kill))
    state.rank_exited(Exited(jid, 0, kill.rank, 271, "killed", clock.t, clock.t))
    rec = state.jobs[jid]
    assert (rec.state, rec.attempt) == ("queued", 1)
    n1 = next(m for m in launches if m.spec.nodes[m.rank] == "n1")
    welcome, _ = register(state, "n1", running=[RunningJob(jid, 0, n1.rank, 0.0)])
    assert welcome.kill == [RunningJob(jid, 0, n1.rank, 0.0)] and (rec.state, rec.attempt) == ("queued", 1)


def test_a_stall_of_schedd_itself_restarts_every_heartbeat_window(env: tuple[State, Clock, Store]) -> None:
    state, clock, _ = env
    loop = Loop(state, clock)
    loop._check_stall()  # not watching (no run()): nothing to judge by
    assert loop.stalls == 0
    loop._beat = time.monotonic() - 10 * state.settings.heartbeat_timeout_s  # the watch's last beat, long ago
    clock.t += 10 * state.settings.heartbeat_timeout_s
    started = loop.started
    loop._check_stall()
    assert loop.stalls == 1 and loop.started > started
    assert check_nodes(state, clock.t, 0.0) == []
    assert all(e.node.state is NodeState.UP for e in state.fleet)
    loop._check_stall()  # a beat on time: no second stall
    assert loop.stalls == 1


@pytest.mark.asyncio
async def test_a_session_schedd_gave_up_on_is_closed_so_the_agent_registers_anew() -> None:
    clock = Clock()
    settings = load_settings()
    state = State(settings, load_pipeline(settings.policies_path()), None, clock)
    book = TokenBook(None)
    token = book.create("root", "admin", 0.0)
    async with TestClient(TestServer(make_app(state, Loop(state, clock), book))) as client:
        ws = await client.ws_connect("/api/v1/agent", headers={"Authorization": f"Bearer {token}"})
        await ws.send_str(encode(Register("n1", 4, 1000, [], True)).decode())
        assert (await ws.receive()).type is WSMsgType.TEXT  # the Welcome
        heartbeat = encode(Heartbeat(time=0.0, cpu_pct=0.0, mem_used_mb=0, gpus=[], jobs=[])).decode()
        silence(state, clock)
        assert state.fleet.nodes["n1"].node.state is NodeState.DOWN
        await ws.send_str(heartbeat)  # the agent wakes up and speaks
        msg = await ws.receive()
        assert (msg.type, ws.close_code) == (WSMsgType.CLOSE, 4000)
        await ws.close()
        again = await client.ws_connect("/api/v1/agent", headers={"Authorization": f"Bearer {token}"})
        await again.send_str(encode(Register("n1", 4, 1000, [], True)).decode())
        assert (await again.receive()).type is WSMsgType.TEXT
        assert state.fleet.nodes["n1"].node.state is NodeState.UP
        await again.close()
