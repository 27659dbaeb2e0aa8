"""qsub as users run it: the installed console script against a real daemon."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.pbs_commands import BIN, COMMANDS, env_for, module_daemon, q, seq, sh
from tests.integration.conftest import Daemon

ID = re.compile(r"^(\d+)\.testsrv\n$")

HELLO = """#!/bin/bash
#PBS -N hello
#PBS -l select=1:ncpus=1:ngpus=1
#PBS -l walltime=00:05:00
echo "gpus=$CUDA_VISIBLE_DEVICES"
echo "workdir=$PBS_O_WORKDIR"
echo "job=$PBS_JOBID name=$PBS_JOBNAME"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("qsub"))


def probe(d: Daemon) -> int:
    """The number the next job gets (a held probe job, deleted again): job numbers only
    grow, so equal probes around a command prove that it queued nothing."""
    jid = d.submit(argv=["true"], hold=True)
    d.client.call("DELETE", f"/api/v1/jobs/{jid}")
    return int(jid)


def test_a_pbs_script_prints_only_its_id_and_writes_name_o_seq(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "job.sh").write_text(HELLO)
    out = sh(daemon, tmp_path, 'jid=$(qsub job.sh) && echo "jid=$jid"')
    assert out.returncode == 0 and out.stderr == "", out.stderr
    jid = out.stdout.removeprefix("jid=")
    assert ID.match(jid), out.stdout
    job = daemon.wait_state(seq(jid), "finished")
    assert (job["exit_status"], job["name"], job["walltime_s"]) == (0, "hello", 300.0)
    assert job["chunks"] == [{"ncpus": 1, "mem_mb": 0, "ngpus": 1, "count": 1}]
    text = (tmp_path / f"hello.o{seq(jid)}").read_text()
    assert re.fullmatch(r"gpus=\d\n", text.splitlines(keepends=True)[0]), text  # exactly one GPU
    assert f"workdir={tmp_path}\n" in text and f"job={jid.strip()} name=hello\n" in text


def test_a_command_after_dashes_and_a_script_on_stdin(daemon: Daemon, tmp_path: Path) -> None:
    echo = q(daemon, tmp_path, "qsub", "--", "/bin/echo", "hi", "there")
    piped = q(daemon, tmp_path, "qsub", "-N", "piped", stdin="#PBS -l walltime=60\necho from-stdin $PBS_JOBNAME\n")
    for out in (echo, piped):
        assert out.returncode == 0 and ID.match(out.stdout), out
    daemon.wait_state(seq(echo.stdout), "finished")
    daemon.wait_state(seq(piped.stdout), "finished")
    assert (tmp_path / f"STDIN.o{seq(echo.stdout)}").read_text() == "hi there\n"
    assert (tmp_path / f"piped.o{seq(piped.stdout)}").read_text() == "from-stdin piped\n"
    assert daemon.job(seq(piped.stdout))["walltime_s"] == 60.0
    quiet = q(daemon, tmp_path, "qsub", "-z", "-h", "--", "/bin/true")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_block_exits_with_the_jobs_status_or_3_if_deleted_before_it_ran(daemon: Daemon, tmp_path: Path) -> None:
    out = q(daemon, tmp_path, "qsub", "-W", "block=true", "--", "/bin/sh", "-c", "exit 7")
    assert out.returncode == 7 and ID.match(out.stdout), out
    ok = q(daemon, tmp_path, "qsub", "-Wblock=true", "--", "/bin/true")
    assert ok.returncode == 0 and ID.match(ok.stdout)
    with subprocess.Popen([str(BIN / "qsub"), "-W", "block=true", "-h", "--", "/bin/true"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(daemon.url)) as p:
        assert p.stdout is not None
        jid = p.stdout.readline()  # printed before it blocks
        assert ID.match(jid)
        assert q(daemon, tmp_path, "qdel", jid.strip()).returncode == 0
        assert p.wait(60) == 3


def test_an_array_with_a_running_limit_sees_its_index(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "arr.sh").write_text("#!/bin/bash\necho \"index=$PBS_ARRAY_INDEX of $PBS_ARRAY_ID\"\n")
    out = q(daemon, tmp_path, "qsub", "-J", "1-4%2", "arr.sh")
    assert out.returncode == 0 and re.fullmatch(r"\d+\[\]\.testsrv\n", out.stdout), out
    parent = seq(out.stdout)
    job = daemon.wait_state(parent, "finished")
    assert job["array"] == {"start": 1, "end": 4, "step": 1, "max_running": 2}
    number = parent.removesuffix("[]")
    for i in range(1, 5):
        text = (tmp_path / f"arr.sh.o{number}.{i}").read_text()
        assert text == f"index={i} of {out.stdout.strip()}\n"
    subs = [daemon.job(f"{number}[{i}]") for i in range(1, 5)]
    for s in subs:  # never more than 2 at once
        overlapping = [t for t in subs if t["start_time"] <= s["start_time"] < t["end_time"]]
        assert len(overlapping) <= 2


def test_afterok_dependency_as_users_write_it(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "a.sh").write_text("#!/bin/bash\nsleep 0.5\necho made-by-a > a.txt\n")
    (tmp_path / "b.sh").write_text("#!/bin/bash\ncat a.txt\n")
    out = sh(daemon, tmp_path, "jid=$(qsub a.sh); qsub -W depend=afterok:$jid b.sh")
    assert out.returncode == 0 and ID.match(out.stdout), out
    b = daemon.wait_state(seq(out.stdout), "finished")
    assert b["exit_status"] == 0 and b["depend"][0]["kind"] == "afterok"
    assert (tmp_path / f"b.sh.o{seq(out.stdout)}").read_text() == "made-by-a\n"
    a = daemon.job(b["depend"][0]["ids"][0])
    assert b["start_time"] >= a["end_time"]


def test_held_waiting_and_queue_default_chunks(daemon: Daemon, tmp_path: Path) -> None:
    later = time.time() + 7200
    at = time.strftime("%Y%m%d%H%M", time.localtime(later))
    waiting = q(daemon, tmp_path, "qsub", "-a", at, "--", "/bin/true")
    held = q(daemon, tmp_path, "qsub", "-h", "-q", "1xgpu", "-l", "select=1:ncpus=2", "-p", "9", "--", "/bin/true")
    assert waiting.returncode == 0 and held.returncode == 0, (waiting, held)
    w = daemon.job(seq(waiting.stdout))
    assert w["state"] == "waiting" and abs(w["eligible_time"] - later) < 61
    h = daemon.job(seq(held.stdout))
    assert (h["state"], h["queue"], h["priority"]) == ("held", "1xgpu", 9)
    assert h["chunks"] == [{"ncpus": 2, "mem_mb": 0, "ngpus": 1, "count": 1}]  # ngpus: the queue's default chunk
    assert q(daemon, tmp_path, "qdel", waiting.stdout.strip(), held.stdout.strip()).returncode == 0


@pytest.mark.parametrize(("argv", "code", "stderr"), [
    (["-q", "nope", "--", "true"], 170, "qsub: Unknown queue 'nope'; queues are: 1xgpu, default, low\n"),
    (["-l", "select=1:ngpus=99", "--", "true"], 166, "qsub: the request (per node: ncpus=1 mem=0mb ngpus=99) exceeds every node"),
    (["-l", "qos=gold", "--", "true"], 166, "qsub: qos: unknown QoS 'gold'\n"),
    (["-W", "depend=afterok:424242.testsrv", "--", "true"], 153, "qsub: depend: unknown job 424242\n"),
    (["-l", "walltime=1:2:3:4", "--", "true"], 2,
     "qsub: illegal -l value\nqsub: walltime: '1:2:3:4': expected [[HH:]MM:]SS, e.g. 01:30:00\nusage: qsub "),
    (["-l", "select=2:ncpus", "--", "true"], 2, "qsub: illegal -l value\nqsub: select: '2:ncpus': expected"),
    (["-l", "container=Not An Image", "--", "true"], 166,
     "qsub: container: 'Not An Image': not a docker image reference"),
    (["-W", "depend=beforeok:1", "--", "true"], 2,
     "qsub: illegal -W value\nqsub: depend=beforeok: beforeok dependencies are not supported yet"),
    (["-J", "4-1", "--", "true"], 2, "qsub: illegal -J value\nqsub: '4-1': the end must be greater than the start\n"),
    (["-a", "9999", "--", "true"], 2, "qsub: illegal -a value\n"),
    (["-q", "a b", "--", "true"], 2, "qsub: illegally formed destination: a b\n"),
    (["-Z", "--", "true"], 2, "qsub: invalid option -- 'Z'\nusage: qsub"),
    (["nosuch.sh"], 2, "qsub: script file nosuch.sh: No such file or directory\n"),
])
def test_bad_submissions_fail_with_pbs_codes_and_queue_nothing(daemon: Daemon, tmp_path: Path, argv: list[str],
                                                               code: int, stderr: str) -> None:
    before = probe(daemon)
    out = q(daemon, tmp_path, "qsub", *argv)
    assert (out.returncode, out.stdout) == (code, ""), out
    assert out.stderr.startswith(stderr), out.stderr
    assert probe(daemon) == before + 1


def test_no_server_is_186(daemon: Daemon, tmp_path: Path) -> None:
    out = q(daemon, tmp_path, "qsub", "--", "true", url="unix:///nonexistent.sock")
    assert (out.returncode, out.stdout) == (186, "")
    assert out.stderr.startswith("qsub: cannot connect to server")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(daemon: Daemon, tmp_path: Path, command: str) -> None:
    out = q(daemon, tmp_path, command, "--help")
    assert out.returncode == 0 and f"usage: {command}" in out.stdout and "examples:" in out.stdout, out


def test_usage_errors_exit_2(daemon: Daemon, tmp_path: Path) -> None:
    for argv in (["qdel"], ["qhold", "-h", "z", "1"], ["qsig", "-s", "NOPE", "1"], ["qrerun"], ["qrls", "-x", "1"]):
        out = q(daemon, tmp_path, *argv)
        assert out.returncode == 2 and "usage:" in out.stderr, (argv, out)

