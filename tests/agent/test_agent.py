"""nodeagent.agent end to end: a real agent against a small in-test WebSocket server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeagent.agent import Agent, AgentConfig
from nodeagent.gpu import FAKE_MODEL, FakeBackend
from nodeagent.jobdir import StartedRecord, read_record
from nodeagent.jobs import JobTable
from schedd.protocol import BATCH_VERSION, Ack, Exited, Kill, Register, RunningJob, Started
from tests.agent.conftest import TIMEOUT_S, Fifo, dies, identity, launch
from tests.agent.fakeserver import FakeServer

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def running_agent(server: FakeServer, state: Path, name: str = "n1", ping_s: float = 20.0) -> AsyncIterator[Agent]:
    config = AgentConfig(server=server.url, name=name, cpus=4, mem_mb=2048, token="s3cret",
                         heartbeat_s=0.2, backoff_max_s=0.3, ping_s=ping_s)
    table = JobTable(state, node=name)
    await table.open()
    agent = Agent(config, table, FakeBackend(2, name))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)
        await table.close()


@contextlib.asynccontextmanager
async def serving(autoping: bool = True, version: int = 1, **start: object) -> AsyncIterator[FakeServer]:
    server = FakeServer(autoping=autoping, version=version)
    await server.start(**start)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()


def ack(msg: Exited) -> Ack:
    return Ack(job_id=msg.job_id, attempt=msg.attempt, rank=msg.rank)


async def test_register_launch_started_exited_ack(tmp_path: Path) -> None:
    async with serving() as server, running_agent(server, tmp_path / "state"):
        reg = await server.expect(Register)
        assert (reg.name, reg.cpus, reg.mem_mb, reg.fake_gpus) == ("n1", 4, 2048, True)
        assert [(g.index, g.uuid, g.model) for g in reg.gpus] == [
            (0, "GPU-fake-n1-0", FAKE_MODEL), (1, "GPU-fake-n1-1", FAKE_MODEL)]
        assert reg.running == [] and reg.finished == []
        assert server.headers[-1]["Authorization"] == "Bearer s3cret"
        await server.send(launch(tmp_path, script="exit 4", gpus=[1]))
        started = await server.expect(Started)
        exited = await server.expect(Exited)
        assert (started.job_id, exited.job_id, exited.status, exited.how) == ("7.srv", "7.srv", 4, "exited")
        await server.send(ack(exited))
        await server.drop()  # the next Register shows the ack was applied
        reg = await server.expect(Register)
        assert reg.finished == [] and reg.running == []


async def test_a_version_5_session_takes_and_sends_several_messages_a_frame(tmp_path: Path) -> None:
    """Protocol 5: Launches in one frame run every rank; their reports come in frames
    of one or several, each once; Acks in one frame forget them all."""
    async with serving(version=BATCH_VERSION) as server, running_agent(server, tmp_path / "state"):
        await server.expect(Register)
        await server.send_frame([launch(tmp_path, job_id=f"{i}.srv", script="exit 3") for i in range(3)])
        reports = [await asyncio.wait_for(server.received.get(), TIMEOUT_S) for _ in range(6)]
        exits = [m for m in reports if isinstance(m, Exited)]
        assert sorted((m.job_id, m.status) for m in exits) == [(f"{i}.srv", 3) for i in range(3)]
        assert sorted(m.job_id for m in reports if isinstance(m, Started)) == [f"{i}.srv" for i in range(3)]
        await server.send_frame([ack(m) for m in exits])
        await server.drop()  # the next Register shows the acks were applied
        reg = await server.expect(Register)
        assert reg.finished == [] and reg.running == []


async def test_a_version_5_frame_is_taken_from_the_welcome_on_and_a_bad_message_skips_only_itself(
        tmp_path: Path) -> None:
    """What schedd sends right behind the Welcome, in its frame, is obeyed; a malformed
    message in a frame is skipped, the others in it obeyed, and the session goes on."""
    async with serving(version=BATCH_VERSION) as server:
        server.with_welcome = [launch(tmp_path, job_id="1.srv")]
        async with running_agent(server, tmp_path / "state") as agent:
            await server.expect(Register)
            assert (await server.expect(Started)).job_id == "1.srv"
            first = await server.expect(Exited)
            await server.send_frame(['{"type": "launch", "job_id": 2}', ack(first), launch(tmp_path, job_id="3.srv")])
            assert (await server.expect(Started)).job_id == "3.srv"
            assert (await server.expect(Exited)).job_id == "3.srv"
            assert agent.sessions == 1  # the bad message did not end the session
            await server.drop()  # the next Register shows what was applied
            reg = await server.expect(Register)
            assert [e.job_id for e in reg.finished] == ["3.srv"]


async def test_unacked_exit_is_resent_after_reconnect(tmp_path: Path) -> None:
    async with serving() as server, running_agent(server, tmp_path / "state"):
        await server.expect(Register)
        await server.send(launch(tmp_path, script="exit 2"))
        await server.expect(Started)
        exited = await server.expect(Exited)
        await server.drop()  # no Ack: schedd "lost" it
        again = await server.expect(Register)
        assert again.finished == [exited]
        await server.send(ack(exited))
        await server.drop()
        assert (await server.expect(Register)).finished == []


async def test_heartbeats_carry_job_samples_and_kill_works(tmp_path: Path) -> None:
    async with serving() as server, running_agent(server, tmp_path / "state"):
        await server.expect(Register)
        await server.send(launch(tmp_path, script="sleep 30 & wait"))
        await server.expect(Started)
        # the first samples may catch the job between fork and exec: wait for one with memory
        while not (hb := await asyncio.wait_for(server.heartbeats.get(), TIMEOUT_S)).jobs or not hb.jobs[0].rss_mb:
            pass
        assert [g.index for g in hb.gpus] == [0, 1]
        assert (hb.jobs[0].job_id, hb.jobs[0].rank) == ("7.srv", 0)
        await server.send(Kill(job_id="7.srv", attempt=0, rank=0, kill_delay_s=0.2, status=-11))
        exited = await server.expect(Exited)
        assert (exited.status, exited.how) == (-11, "killed")


async def test_duplicate_launch_runs_once(tmp_path: Path) -> None:
    async with serving() as server, running_agent(server, tmp_path / "state"):
        await server.expect(Register)
        once = launch(tmp_path, script=f"echo x >> {tmp_path / 'runs'}")
        await server.send(once)
        await server.expect(Started)
        await server.expect(Exited)
        await server.send(once)  # replayed before and after the ack
        await server.send(Ack(job_id="7.srv", attempt=0, rank=0))
        await server.send(once)
        await server.send(launch(tmp_path, job_id="8.srv", script="true"))  # a barrier: handled after them
        assert (await server.expect(Started)).job_id == "8.srv"
        assert (await server.expect(Exited)).job_id == "8.srv"
        assert (tmp_path / "runs").read_text() == "x\n"


async def test_reconnects_after_server_restart_and_reports_what_happened(tmp_path: Path) -> None:
    sock = tmp_path / "schedd.sock"
    fifo = Fifo(tmp_path / "fifo")
    server = FakeServer()
    await server.start(path=sock)
    async with running_agent(server, tmp_path / "state"):
        await server.expect(Register)
        await server.send(launch(tmp_path, script=f"read x < {fifo.path}; exit 5"))
        await server.expect(Started)
        await server.stop()  # schedd goes down; the job ends meanwhile
        fifo.write("go\n")
        server = FakeServer()
        await server.start(path=sock)
        reg = await server.expect(Register)
        if reg.finished:  # the agent may reconnect before or after it saw the exit
            [exited] = reg.finished
        else:
            assert [r.job_id for r in reg.running] == ["7.srv"]
            exited = await server.expect(Exited)
        assert (exited.status, exited.how) == (5, "exited")
        await server.stop()


async def test_welcome_kills_ranks_schedd_does_not_know(tmp_path: Path) -> None:
    async with serving() as server, running_agent(server, tmp_path / "state"):
        await server.expect(Register)
        await server.send(launch(tmp_path, script="sleep 30 & wait"))
        started = await server.expect(Started)
        server.kill_on_welcome = [RunningJob(job_id="7.srv", attempt=0, rank=0, start_time=started.time)]
        await server.drop()
        reg = await server.expect(Register)
        assert [r.job_id for r in reg.running] == ["7.srv"]
        exited = await server.expect(Exited)
        assert exited.how == "killed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_cli_agent_leaves_jobs_running_across_a_restart(tmp_path: Path, sig: signal.Signals) -> None:
    """``nodeagent`` as a process: stopped or killed, it leaves the job; the next agent re-adopts it."""
    token = tmp_path / "token"
    token.write_text("tok\n")
    state = tmp_path / "state"
    async with serving(path=tmp_path / "s.sock") as server:
        cmd = [sys.executable, "-m", "nodeagent.main", "--server", server.url, "--name", "cli",
               "--fake-gpus", "3", "--state-dir", str(state), "--token-file", str(token), "--heartbeat-s", "0.5"]
        agent = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        reg = await server.expect(Register)
        assert (reg.name, len(reg.gpus), reg.fake_gpus) == ("cli", 3, True)
        assert server.headers[-1]["Authorization"] == "Bearer tok"
        await server.send(launch(tmp_path, script="sleep 60 & wait"))
        await server.expect(Started)
        agent.send_signal(sig)
        _, err = await asyncio.to_thread(agent.communicate, timeout=TIMEOUT_S)
        assert agent.returncode == (0 if sig == signal.SIGTERM else -sig), err.decode()
        assert b"connected to" in err  # a rank's launch is logged at DEBUG only (hot path)
        started = read_record(next(state.glob("jobs/*/started.json")), StartedRecord)
        assert started is not None
        job = identity(started.pid)  # still running without its agent

        agent = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        try:
            reg = await server.expect(Register)
            assert [(r.job_id, r.rank) for r in reg.running] == [("7.srv", 0)]
            await server.send(Kill(job_id="7.srv", attempt=0, rank=0, kill_delay_s=0.2))
            exited = await server.expect(Exited)
            assert exited.how == "killed" and dies(job)
        finally:
            agent.send_signal(signal.SIGTERM)
            await asyncio.to_thread(agent.wait, TIMEOUT_S)
        assert agent.returncode == 0


async def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodeagent.main", "--server", "ftp://x", "--name", "n",
        "--state-dir", str(tmp_path), stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"server must be" in err
    assert os.listdir(tmp_path) == []


async def test_agent_started_before_schedd_connects_when_it_appears(tmp_path: Path) -> None:
    sock = tmp_path / "late.sock"
    server = FakeServer()
    server.url = f"unix://{sock}"  # nothing listens yet: the agent backs off and retries
    async with running_agent(server, tmp_path / "state"):
        await server.start(path=sock)
        reg = await server.expect(Register)
        assert reg.name == "n1"
        await server.stop()


async def test_a_malformed_message_does_not_break_the_session(tmp_path: Path) -> None:
    async with serving() as server, running_agent(server, tmp_path / "state") as agent:
        await server.expect(Register)
        assert server.ws is not None
        await server.ws.send_str('{"type": "launch", "job_id": 1}')
        await server.send(launch(tmp_path, script="true"))
        assert (await server.expect(Started)).job_id == "7.srv"
        await server.expect(Exited)
        assert agent.sessions == 1


async def test_a_silent_server_is_left_and_dialled_again(tmp_path: Path) -> None:
    """A server that takes our messages but answers nothing, not even a ping (hung,
    stopped, black-holed): the agent gives the session up and registers anew."""
    async with serving(autoping=False) as server, running_agent(server, tmp_path / "state", ping_s=0.3) as agent:
        await server.expect(Register)
        await server.expect(Register)  # dialled again: the pong never came
        assert agent.sessions >= 1
