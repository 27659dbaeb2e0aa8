"""Rank directories in a run directory (nodeagent.rundir), and the agent's --run-dir."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.main import _lock
from nodeagent.rundir import JOBS, LOCK, link_jobs, prepare, release


def test_state_jobs_becomes_a_link_to_the_run_dir(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    real = link_jobs(state, run)
    assert real == run.absolute() / JOBS and real.is_dir()
    assert (state / JOBS).is_symlink() and (state / JOBS).resolve() == real.resolve()
    (state / JOBS / "7.srv.0.0").mkdir()  # what the table writes lands in the run dir
    assert (real / "7.srv.0.0").is_dir()
    assert link_jobs(state, run) == real  # a restart: the same link, the ranks kept
    assert (real / "7.srv.0.0").is_dir()


def test_a_real_jobs_dir_holding_ranks_is_kept(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    (state / JOBS / "7.srv.0.0").mkdir(parents=True)
    assert link_jobs(state, run) == state / JOBS
    assert not (state / JOBS).is_symlink() and (state / JOBS / "7.srv.0.0").is_dir()
    (state / JOBS / "7.srv.0.0").rmdir()  # done: the next start switches
    assert link_jobs(state, run) == run.absolute() / JOBS
    assert (state / JOBS).is_symlink()


def test_a_link_to_another_run_dir_is_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    link_jobs(state, tmp_path / "old")
    assert link_jobs(state, tmp_path / "new") == (tmp_path / "new").absolute() / JOBS
    assert (state / JOBS).resolve() == ((tmp_path / "new") / JOBS).resolve()


def test_release_removes_only_an_empty_run_dir_and_what_it_made(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    fd = _lock(run)
    try:
        real = link_jobs(state, run)
        (real / "7.srv.0.0").mkdir()
        release(state, run)  # a rank left: all stays
        assert (real / "7.srv.0.0").is_dir() and (state / JOBS).is_symlink()
        (real / "7.srv.0.0").rmdir()
        release(state, run)
        assert not run.exists() and not (state / JOBS).exists()
    finally:
        os.close(fd)


def test_release_never_removes_other_files_of_a_shared_run_dir(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    link_jobs(state, run)
    (run / "someone-else").write_text("x")
    release(state, run)
    assert (run / "someone-else").read_text() == "x" and not (run / JOBS).exists()
    assert not (run / LOCK).exists()


def test_agent_refuses_a_run_dir_another_agent_holds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fd = _lock(run)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "nodeagent.main", "--server", "unix:///nonexistent.sock", "--name", "n1",
             "--state-dir", str(tmp_path / "state"), "--run-dir", str(run), "--enforcement", "proctree"],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.close(fd)
    assert proc.returncode == 2
    assert f"another agent is using {run}" in proc.stderr
    assert not (tmp_path / "state" / JOBS).exists()


def test_prepare_makes_a_private_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "pool" / "n1"
    prepare(run)
    assert run.is_dir() and stat.S_IMODE(run.stat().st_mode) == 0o700


def test_a_run_dir_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="not a directory"):
        prepare(tmp_path / "run")


def test_a_run_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable, not sticky: anyone could swap the agent's directory
    with pytest.raises(OSError, match="writable by others"):
        prepare(shared / "n1")
    shared.chmod(0o1777)  # sticky, as /dev/shm and /tmp: entries are their owners' alone
    prepare(shared / "n1")


def test_jobs_in_the_run_dir_must_not_be_a_link(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    prepare(run)
    (tmp_path / "victim").mkdir()
    (run / JOBS).symlink_to(tmp_path / "victim")
    with pytest.raises(OSError, match="not a directory"):
        link_jobs(state, run)
    assert not (state / JOBS).exists()


def test_a_run_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)
    with pytest.raises(OSError, match="belongs to uid 65534"):
        prepare(run)
