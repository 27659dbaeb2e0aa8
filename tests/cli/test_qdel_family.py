"""qdel, qhold, qrls, qalter, qsig and qrerun as users run them, and every PBS exit code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.pbs_commands import module_daemon, q, seq, token
from tests.integration.conftest import Daemon, wait_for

TRAP = """#!/bin/bash
trap 'echo "got USR1 attempt $SCHEDD_ATTEMPT"' USR1
echo started
while true; do sleep 0.1; done
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("qdel"))


def submit(d: Daemon, cwd: Path, *argv: str) -> str:
    out = q(d, cwd, "qsub", *argv)
    assert out.returncode == 0, out
    return out.stdout.strip()


def test_a_job_through_alter_hold_release_signal_rerun_and_delete(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "loop.sh").write_text(TRAP)
    jid = submit(daemon, tmp_path, "-h", "-N", "loop", "loop.sh")
    n = seq(jid)
    assert daemon.job(n)["state"] == "held"
    out = q(daemon, tmp_path, "qalter", "-l", "walltime=00:10:00", "-p", "10", "-N", "renamed", "-q", "1xgpu", jid)
    assert (out.returncode, out.stderr) == (0, "")
    job = daemon.job(n)
    assert (job["walltime_s"], job["priority"], job["name"], job["queue"]) == (600.0, 10, "renamed", "1xgpu")
    assert q(daemon, tmp_path, "qhold", jid).returncode == 0  # already held: still fine
    assert q(daemon, tmp_path, "qrls", n).returncode == 0
    daemon.wait_state(n, "running")
    log = Path(daemon.job(n)["stdout_path"])
    wait_for("the script to start", lambda: log.exists() and "started" in log.read_text())
    assert q(daemon, tmp_path, "qsig", "-s", "USR1", jid).returncode == 0
    wait_for("the trap to run", lambda: "got USR1" in log.read_text())
    assert q(daemon, tmp_path, "qrerun", jid).returncode == 0
    wait_for("attempt 1 running", lambda: (j := daemon.job(n))["attempt"] == 1 and j["state"] == "running")
    assert q(daemon, tmp_path, "qdel", jid).returncode == 0
    assert daemon.wait_state(n, "finished")["finish_reason"] == "cancelled"
    again = q(daemon, tmp_path, "qdel", jid)
    assert (again.returncode, again.stderr) == (35, f"qdel: Job has finished {jid}\n")
    purge = q(daemon, tmp_path, "qdel", "-x", jid)
    assert (purge.returncode, purge.stderr) == (0, "")
    gone = q(daemon, tmp_path, "qdel", "-x", jid)
    assert (gone.returncode, gone.stderr) == (153, f"qdel: Unknown Job Id {jid}\n")


def test_force_deletes_a_running_job_at_once(daemon: Daemon, tmp_path: Path) -> None:
    jid = submit(daemon, tmp_path, "--", "/bin/sleep", "300")
    daemon.wait_state(seq(jid), "running")
    out = q(daemon, tmp_path, "qdel", "-W", "force", jid)
    assert (out.returncode, out.stderr) == (0, "")
    assert daemon.wait_state(seq(jid), "finished")["finish_reason"] == "cancelled"


def test_array_operands(daemon: Daemon, tmp_path: Path) -> None:
    parent = submit(daemon, tmp_path, "-h", "-J", "1-4", "--", "/bin/true")
    n = seq(parent).removesuffix("[]")
    out = q(daemon, tmp_path, "qdel", f"{n}[2-3].testsrv")
    assert (out.returncode, out.stderr) == (0, "")
    states = [daemon.job(f"{n}[{i}]")["state"] for i in range(1, 5)]
    assert states == ["held", "finished", "finished", "held"]
    assert q(daemon, tmp_path, "qrls", f"{n}[]").returncode == 0
    daemon.wait_state(f"{n}[]", "finished")
    assert [daemon.job(f"{n}[{i}]")["exit_status"] for i in (1, 4)] == [0, 0]


def test_several_operands_report_every_failure_and_exit_with_the_last(daemon: Daemon, tmp_path: Path) -> None:
    a = submit(daemon, tmp_path, "-h", "--", "/bin/true")
    b = submit(daemon, tmp_path, "-h", "--", "/bin/true")
    out = q(daemon, tmp_path, "qdel", a, "99999.testsrv", "x1", b)
    assert out.returncode == 1
    assert out.stderr == "qdel: Unknown Job Id 99999.testsrv\nqdel: illegally formed job identifier: x1\n"
    assert [daemon.job(seq(j))["finish_reason"] for j in (a, b)] == ["cancelled", "cancelled"]
    out = q(daemon, tmp_path, "qhold", "x1", "99999")
    assert (out.returncode, out.stderr) == (153, "qhold: illegally formed job identifier: x1\nqhold: Unknown Job Id 99999\n")


def test_every_exit_code(daemon: Daemon, tmp_path: Path) -> None:
    held = submit(daemon, tmp_path, "-h", "--", "/bin/true")
    running = submit(daemon, tmp_path, "--", "/bin/sleep", "300")
    daemon.wait_state(seq(running), "running")
    done = submit(daemon, tmp_path, "-W", "block=true", "--", "/bin/true")
    bob = token(daemon, "bob")
    cases = [
        (["qdel", "12x"], 1, "qdel: illegally formed job identifier: 12x\n"),
        (["qdel"], 2, "usage: qdel [-W force|suppress_email=N] [-x] job_identifier...\n"),
        (["qdel", "-W", "gently", held], 2, "qdel: -W gently: expected force or suppress_email=N\nusage: qdel "),
        (["qrls", "-x", held], 2, "qrls: invalid option -- 'x'\nusage: qrls [-h u|o|s] job_identifier...\n"),
        (["qalter", "-a", "1200", held], 2, "qalter: -a is not supported: schedd can alter -l walltime=, -p, -N and -q\n"
                                            "usage: qalter "),
        (["qalter", "-l", "select=1:ngpus=2", held], 2, "qalter: -l select: not supported: schedd can alter -l walltime=, "
                                                        "-p, -N and -q\nusage: qalter "),
        (["qalter", "-l", "walltime=soon", held], 2, "qalter: illegal -l value\n"
                                                     "qalter: walltime: 'soon': expected [[HH:]MM:]SS, e.g. 01:30:00\n"),
        (["qhold", "-h", "n", held], 2, None),
        (["qsig", "-s", "suspend", running], 2, None),
        (["qdel", done], 35, f"qdel: Job has finished {done}\n"),
        (["qsig", "424242"], 153, "qsig: Unknown Job Id 424242\n"),
        (["qrls", running], 168, f"qrls: Request invalid for state of job {running}\n"),
        (["qsig", "-s", "USR1", held], 168, f"qsig: Request invalid for state of job {held}\n"),
        (["qrerun", held], 168, f"qrerun: Request invalid for state of job {held}\n"),
        (["qhold", running], 168, f"qhold: Request invalid for state of job {running}\n"),
        (["qalter", "-p", "1", running], 168, f"qalter: Request invalid for state of job {running}\n"),
        (["qalter", "-q", "nope", held], 170, f"qalter: unknown queue 'nope' {held}\n"),
    ]
    for argv, code, stderr in cases:
        out = q(daemon, tmp_path, *argv)
        assert out.returncode == code, (argv, out)
        assert out.stderr.startswith(stderr) if stderr is not None else "usage:" in out.stderr, (argv, out.stderr)
    for argv in (["qdel", held], ["qhold", held], ["qrls", held], ["qalter", "-p", "5", held], ["qsig", running],
                 ["qrerun", running]):
        out = q(daemon, tmp_path, *argv, url=daemon.http_url, SCHEDD_TOKEN=bob)  # bob's token; the jobs are root's
        assert out.returncode == 159, (argv, out)
        assert out.stderr.startswith(f"{argv[0]}: Unauthorized Request: job {argv[-1]} belongs to"), out.stderr
    for argv in (["qdel", held], ["qhold", held], ["qrls", held], ["qalter", "-p", "1", held], ["qsig", held],
                 ["qrerun", held]):
        out = q(daemon, tmp_path, *argv, url="unix:///nonexistent.sock")
        assert out.returncode == 186 and out.stderr.startswith(f"{argv[0]}: cannot connect to server"), out
    assert daemon.job(seq(held))["state"] == "held"  # nothing above touched it
    assert q(daemon, tmp_path, "qdel", held, running).returncode == 0
    daemon.wait_state(seq(running), "finished")
