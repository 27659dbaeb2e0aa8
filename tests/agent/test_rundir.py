"""Rank directories in a run directory (nodeagent.rundir), and the agent's --run-dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nodeagent.main import _lock
from nodeagent.rundir import JOBS, LOCK, link_jobs, release


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
