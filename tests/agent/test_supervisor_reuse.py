"""A supervisor process serves rank after rank (nodeagent.forkserver): what it
carries from one rank to the next, and when it is not reused."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from nodeagent.forkserver import Forkserver
from nodeagent.jobdir import EXIT, LOG, SPEC, SupervisorSpec, write_record
from nodeagent.jobs import JobTable, RankKey
from schedd.protocol import Exited, Launch, Started
from tests.agent.conftest import TIMEOUT_S, dies, launch, py


async def _run(table: JobTable, msg: Launch) -> tuple[int, Exited]:
    """Launch ``msg``, wait for its exit and acknowledge it: (supervisor pid, exit)."""
    assert table.launch(msg)
    key = RankKey(msg.job_id, msg.attempt, msg.rank)
    record = table.get(key)
    assert record is not None and record[0] is not None
    pid = record[0].pid
    while True:
        event = await asyncio.wait_for(table.events.get(), TIMEOUT_S)
        if isinstance(event, Exited):
            assert (event.job_id, event.rank) == (msg.job_id, msg.rank)
            assert table.ack(key)
            return pid, event
        assert isinstance(event, Started)


@pytest.mark.asyncio
async def test_a_plain_rank_leaves_its_supervisor_to_the_next(tmp_path: Path) -> None:
    table = JobTable(tmp_path / "state", node="n1")
    await table.open()
    try:
        first, a = await _run(table, launch(tmp_path, job_id="1.srv", script="exit 3"))
        second, b = await _run(table, launch(tmp_path, job_id="2.srv", script="exit 4"))
    finally:
        await table.close()
    assert first == second  # one process, two ranks, one after the other
    assert (a.status, b.status) == (3, 4)


@pytest.mark.asyncio
async def test_each_rank_is_charged_its_own_cpu(tmp_path: Path) -> None:
    """The job's CPU is what this rank's children used, not what the process's
    children used since it was forked."""
    busy = py("import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass")
    table = JobTable(tmp_path / "state", node="n1")
    await table.open()
    try:
        first, a = await _run(table, launch(tmp_path, job_id="1.srv", argv=busy))
        second, b = await _run(table, launch(tmp_path, job_id="2.srv", argv=["true"]))
    finally:
        await table.close()
    assert first == second
    assert a.cpu_s >= 0.3
    assert b.cpu_s < 0.1, b.cpu_s


def _spawn_rank(fs: Forkserver, tmp_path: Path, name: str, subreaper: bool) -> int:
    """A rank directory with its spec, supervised by ``fs``; the supervisor's pid
    once the rank is over (its notify pipe closed)."""
    jobdir = tmp_path / name
    jobdir.mkdir()
    write_record(jobdir / SPEC, SupervisorSpec(launch=launch(tmp_path, job_id=f"{name}.srv", script="true"),
                                               cookie=os.urandom(6).hex(), subreaper=subreaper))
    rfd, wfd = os.pipe()
    log = os.open(jobdir / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid, _created = fs.spawn(str(jobdir), {}, wfd, log)
    finally:
        os.close(wfd)
        os.close(log)
    try:
        while os.read(rfd, 64):  # "S", then "E", then EOF: the rank is over
            pass
    finally:
        os.close(rfd)
    assert (jobdir / EXIT).exists()
    return pid


def test_a_rank_that_changed_its_process_ends_it(tmp_path: Path) -> None:
    """Without the subreaper the process is not as the forkserver made it: it
    serves no further rank, and the next one gets a fresh fork."""
    fs = Forkserver(sys.executable)
    try:
        plain = _spawn_rank(fs, tmp_path, "a", subreaper=True)
        identity = (plain, psutil.Process(plain).create_time())
        assert _spawn_rank(fs, tmp_path, "b", subreaper=True) == plain
        assert _spawn_rank(fs, tmp_path, "c", subreaper=False) == plain  # the idle one took it...
        assert dies(identity)  # ...and ended after it
        assert _spawn_rank(fs, tmp_path, "d", subreaper=True) != plain
    finally:
        fs.close()


@pytest.mark.asyncio
async def test_idle_supervisors_end_with_their_agent(tmp_path: Path) -> None:
    table = JobTable(tmp_path / "state", node="n1")
    await table.open()
    pid, _ = await _run(table, launch(tmp_path, job_id="1.srv", script="true"))
    idle = psutil.Process(pid)
    assert idle.is_running()  # waiting for a next rank
    await table.close()  # the agent goes: its forkserver exits, and the idle supervisor with it
    assert dies((pid, idle.create_time()))


@pytest.mark.asyncio
async def test_an_idle_supervisor_ends_on_sigterm(tmp_path: Path) -> None:
    """Between ranks it holds no job: SIGTERM (a service stop) ends it, as it would
    have ended a supervisor that exited with its rank."""
    table = JobTable(tmp_path / "state", node="n1")
    await table.open()
    try:
        pid, _ = await _run(table, launch(tmp_path, job_id="1.srv", script="true"))
        identity = (pid, psutil.Process(pid).create_time())
        os.kill(pid, signal.SIGTERM)
        assert dies(identity)
        second, b = await _run(table, launch(tmp_path, job_id="2.srv", script="exit 5"))
        assert second != pid and b.status == 5  # the server let the dead one go and forked anew
    finally:
        await table.close()
