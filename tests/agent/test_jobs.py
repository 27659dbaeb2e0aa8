"""nodeagent.jobs: the agent's rank table — launch, watch, kill, re-adopt."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from nodeagent import jobs, proctree
from nodeagent.jobdir import EXIT, SPEC, STARTED, ProcessRecord, StartedRecord, SupervisorSpec, read_exit, read_record
from nodeagent.jobdir import write_record
from nodeagent.jobs import JobTable, RankKey
from schedd.protocol import EXIT_LAUNCH_FAILED, EXIT_RERUN, Exited, Started
from tests.agent.conftest import TIMEOUT_S, Fifo, dies, identity, launch, py

pytestmark = pytest.mark.asyncio

KEY = RankKey("7.srv", 0, 0)


async def next_event(table: JobTable) -> Started | Exited:
    return await asyncio.wait_for(table.events.get(), TIMEOUT_S)


async def started_then_exited(table: JobTable) -> tuple[Started, Exited]:
    first, second = await next_event(table), await next_event(table)
    assert isinstance(first, Started) and isinstance(second, Exited), (first, second)
    return first, second


def table_on(tmp_path: Path) -> JobTable:
    return JobTable(tmp_path / "state", node="n1")


async def test_launch_reports_started_then_exited_and_ack_forgets(tmp_path: Path) -> None:
    table = table_on(tmp_path)
    await table.open()
    assert table.launch(launch(tmp_path, script="exit 3"))
    started, exited = await started_then_exited(table)
    assert (started.job_id, started.attempt, started.rank) == tuple(KEY)
    assert (exited.status, exited.how) == (3, "exited")
    assert exited.start_time == started.time
    assert table.finished() == [exited] and table.running() == []
    rank_dir = tmp_path / "state" / "jobs" / "7.srv.0.0"
    assert rank_dir.is_dir()
    assert table.ack(KEY)
    assert not rank_dir.exists() and table.finished() == []
    assert not table.launch(launch(tmp_path, script="exit 3"))  # a replayed Launch: never twice
    await table.close()


async def test_launch_is_idempotent_while_running(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    table = table_on(tmp_path)
    await table.open()
    msg = launch(tmp_path, script=f"echo ran >> {tmp_path / 'runs'}; read x < {fifo.path}")
    assert table.launch(msg)
    assert isinstance(await next_event(table), Started)
    assert not table.launch(msg)
    fifo.write("go\n")
    exited = await next_event(table)
    assert isinstance(exited, Exited) and exited.status == 0
    assert (tmp_path / "runs").read_text() == "ran\n"
    await table.close()


async def test_readoption_of_a_running_rank(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    first = table_on(tmp_path)
    await first.open()
    first.launch(launch(tmp_path, argv=py("import sys; open(sys.argv[1]).readline(); sys.exit(4)", str(fifo.path))))
    started = await next_event(first)
    assert isinstance(started, Started)
    await first.close()
    del first  # the agent is gone; its supervisor is not

    second = table_on(tmp_path)
    await second.open()
    [running] = second.running()
    assert (running.job_id, running.start_time) == ("7.srv", started.time)
    fifo.write("go\n")
    exited = await next_event(second)  # no Started again: it was reported before
    assert isinstance(exited, Exited) and (exited.status, exited.how) == (4, "exited")
    assert second.running() == [] and second.finished() == [exited]
    await second.close()


async def test_readoption_of_an_exit_that_happened_while_away(tmp_path: Path) -> None:
    first = table_on(tmp_path)
    await first.open()
    first.launch(launch(tmp_path, script="exit 9"))
    _, exited = await started_then_exited(first)
    await first.close()

    second = table_on(tmp_path)
    await second.open()
    assert second.finished() == [exited] and second.running() == []
    assert second.ack(KEY)
    await second.close()


async def test_kill_with_a_requeue_status(tmp_path: Path) -> None:
    table = table_on(tmp_path)
    await table.open()
    table.launch(launch(tmp_path, script="sleep 30 & wait"))
    assert isinstance(await next_event(table), Started)
    assert table.kill(KEY, kill_delay_s=5.0, status=EXIT_RERUN)
    exited = await next_event(table)
    assert isinstance(exited, Exited) and (exited.status, exited.how) == (EXIT_RERUN, "killed")
    assert not table.kill(KEY)  # finished: nothing to kill
    await table.close()


async def test_signal_reaches_the_job(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    table = table_on(tmp_path)
    await table.open()
    table.launch(launch(tmp_path, script=f"trap 'exit 6' USR2\necho ready > {fifo.path}\nsleep 30 & wait\n"))
    assert fifo.readline() == "ready"
    assert not table.signal(KEY, "NOSUCHSIG")
    assert table.signal(KEY, "USR2")
    _, exited = await started_then_exited(table)
    assert exited.status == 6
    await table.close()


async def test_supervisor_killed_with_sigkill_is_reported(tmp_path: Path) -> None:
    table = table_on(tmp_path)
    await table.open()
    table.launch(launch(tmp_path, script="sleep 60 & wait"))
    assert isinstance(await next_event(table), Started)
    sup, started, _ = table.get(KEY) or (None, None, None)
    assert sup is not None and started is not None
    job = identity(started.pid)
    os.kill(sup.pid, signal.SIGKILL)
    exited = await next_event(table)
    assert isinstance(exited, Exited)
    assert (exited.status, exited.how) == (256 + signal.SIGKILL, "killed")
    assert "supervisor" in exited.comment and "died" in exited.comment
    assert dies(job)
    await table.close()
    again = table_on(tmp_path)  # written to disk: reported again after a restart
    await again.open()
    assert again.finished() == [exited]
    await again.close()


async def test_supervisor_died_while_the_agent_was_down(tmp_path: Path) -> None:
    first = table_on(tmp_path)
    await first.open()
    first.launch(launch(tmp_path, script="sleep 60 & wait"))
    assert isinstance(await next_event(first), Started)
    sup, started, _ = first.get(KEY) or (None, None, None)
    assert sup is not None and started is not None
    await first.close()
    job = identity(started.pid)
    os.kill(sup.pid, signal.SIGKILL)
    await asyncio.to_thread(_gone_for_good, sup.pid)

    second = table_on(tmp_path)
    await second.open()
    [exited] = second.finished()
    assert exited.status == 256 + signal.SIGKILL and "died" in exited.comment
    assert dies(job)
    await second.close()


async def test_launch_failure_is_an_exit(tmp_path: Path) -> None:
    table = table_on(tmp_path)
    await table.open()
    table.launch(launch(tmp_path, workdir=str(tmp_path / "missing")))
    exited = await next_event(table)  # no Started
    assert isinstance(exited, Exited) and exited.status == EXIT_LAUNCH_FAILED
    await table.close()


async def test_the_records_come_on_the_notify_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launched rank's started and exit records reach the agent on its notify pipe,
    as the files hold them: it reads neither file back."""
    read: list[str] = []

    def reading(path: Path, *kind: type) -> object:
        read.append(str(path))
        return read_record(path, *kind) if kind else read_exit(path)

    monkeypatch.setattr(jobs, "read_exit", reading)
    monkeypatch.setattr(jobs, "read_record", reading)
    table = table_on(tmp_path)
    await table.open()
    table.launch(launch(tmp_path, script="exit 5"))
    started, exited = await started_then_exited(table)
    rank_dir = tmp_path / "state" / "jobs" / "7.srv.0.0"
    assert exited == read_exit(rank_dir) and exited.status == 5
    [_, on_disk, _] = table.get(KEY) or (None, None, None)
    assert on_disk == read_record(rank_dir / STARTED, StartedRecord) and on_disk is not None
    assert started.time == on_disk.start_time
    assert read == []
    await table.close()


async def test_an_exit_too_long_for_the_pipe_is_read_from_its_file(tmp_path: Path) -> None:
    """An exit record longer than one atomic pipe write (a launch failure naming a
    very long program) is told as a bare "E": the agent reads exit.json."""
    program = str(tmp_path / ("x" * 250)) * 20  # over PATH_MAX: the exec fails, the comment names it
    table = table_on(tmp_path)
    await table.open()
    table.launch(launch(tmp_path, argv=[program]))
    exited = await next_event(table)
    assert isinstance(exited, Exited) and exited.status == EXIT_LAUNCH_FAILED
    assert len(exited.comment) > select.PIPE_BUF and program in exited.comment
    assert exited == read_exit(tmp_path / "state" / "jobs" / "7.srv.0.0")
    await table.close()


async def test_a_line_cut_short_by_the_pipes_end_leaves_the_records_to_the_files(tmp_path: Path) -> None:
    """A supervisor that died in the middle of its "E" line (or a line the agent cannot
    decode): the exit it recorded is read from exit.json, the start from started.json."""
    table = table_on(tmp_path)
    await table.open()
    rank_dir = tmp_path / "state" / "jobs" / "7.srv.0.0"
    rank_dir.mkdir(parents=True)
    spec = SupervisorSpec(launch=launch(tmp_path), cookie="c0ffee")
    write_record(rank_dir / SPEC, spec)
    stand_in = subprocess.Popen(["sleep", "60"])  # the supervisor: alive while its pipe speaks
    try:
        started = StartedRecord(stand_in.pid, stand_in.pid, proctree.create_time(stand_in.pid), 1.0)
        on_disk = Exited(job_id="7.srv", attempt=0, rank=0, status=7, how="exited", start_time=1.0, end_time=2.0)
        write_record(rank_dir / STARTED, started)
        told = write_record(rank_dir / EXIT, on_disk)
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        rank = jobs._Rank(KEY, rank_dir, spec, proc=ProcessRecord(stand_in.pid, started.create_time), notify=rfd)
        table._ranks[KEY] = rank
        table._watch(rank, fresh=True)
        os.write(wfd, b"S{not a record}\nE" + told[:10])
        os.close(wfd)
        first, second = await started_then_exited(table)
        assert first.time == 1.0 and second == on_disk
    finally:
        stand_in.kill()
        stand_in.wait()
    await table.close()


async def test_samples_cover_the_process_tree(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    table = table_on(tmp_path)
    await table.open()
    code = "import sys\nblock = b'x' * (40 << 20)\nopen(sys.argv[1], 'w').write('ready\\n')\nimport time\ntime.sleep(60)\n"
    table.launch(launch(tmp_path, argv=py(code, str(fifo.path))))
    assert fifo.readline() == "ready"
    [sample] = await asyncio.to_thread(table.samples)
    assert (sample.job_id, sample.rank) == ("7.srv", 0)
    assert sample.rss_mb >= 40 and sample.peak_rss_mb >= sample.rss_mb
    table.kill(KEY, 0.1)
    _, exited = await started_then_exited(table)
    assert exited.how == "killed"
    await table.close()


def _gone_for_good(pid: int) -> None:
    """Wait for a killed process to end: reap it if it is our child, else (forked
    by the agent's forkserver) until it is gone or a zombie."""
    try:
        os.waitpid(pid, 0)
        return
    except ChildProcessError:
        pass
    try:
        proc = psutil.Process(pid)
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.wait(timeout=30)
    except (psutil.NoSuchProcess, psutil.TimeoutExpired):
        return
