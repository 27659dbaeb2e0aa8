"""Environment packaging end to end: ``qsub -- python train.py`` from a git work tree
with a venv, against the real daemon and agent, offline (a local wheel directory
that the agent's pip is pointed at through its environment)."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.cli.pbs_commands import BIN, seq
from nodeagent.env.cache import venv_key
from schedd.protocol import EnvSpec
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for
from tests.pyenvs import install, make_repo, make_venv, make_wheel, offline_env

TRAIN = """\
import os, sys, tinypkg
from settings import MESSAGE
print("tinypkg", tinypkg.__version__)
print("message", MESSAGE)
print("prefix", sys.prefix)
print("cwd", os.getcwd())
"""


def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a git repo with an uncommitted change, the python of a venv with tinypkg 1.0);
    the daemon about to start (so its agents) gets pip settings for the local wheels."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinypkg", "1.0")
    make_wheel(wheels, "tinypkg", "2.0")
    python = make_venv(tmp_path / "venv")
    install(python, wheels, "tinypkg==1.0")
    repo = tmp_path / "repo"
    make_repo(repo, {"train.py": TRAIN, "settings.py": "MESSAGE = 'committed'\n"})
    (repo / "settings.py").write_text("MESSAGE = 'uncommitted'\n")
    for key, value in offline_env(wheels).items():
        monkeypatch.setenv(key, value)  # the daemon's, hence its agents' environment
    return repo, python


def qsub_env(daemon: Daemon, python: Path) -> dict[str, str]:
    """qsub's environment: the user's venv first on PATH, the daemon's socket."""
    env = {k: v for k, v in os.environ.items() if k != "SCHEDD_TOKEN"}
    env.update(SCHEDD_URL=daemon.url, PATH=f"{python.parent}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    return env


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, Path, dict[str, str]]]:
    """(daemon with one node, a repo with an uncommitted change, qsub's environment with the user's venv)."""
    repo, python = user_project(tmp_path, monkeypatch)
    daemon = Daemon(tmp_path, nodes=1).start()
    try:
        yield daemon, repo, qsub_env(daemon, python)
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)


def qsub(repo: Path, env: dict[str, str], *argv: str) -> str:
    out = subprocess.run([str(BIN / "qsub"), *argv], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out
    return seq(out.stdout)


def output(repo: Path, jid: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in (repo / f"STDIN.o{jid}").read_text().splitlines())


def test_a_python_job_runs_in_its_rebuilt_environment_cached_by_packages(setup: tuple[Daemon, Path, dict[str, str]]) -> None:
    daemon, repo, env = setup
    first = qsub(repo, env, "--", "python", "train.py")
    job = daemon.wait_state(first, "finished")
    assert job["exit_status"] == 0, (job, (repo / f"STDIN.e{first}").read_text())
    out = output(repo, first)
    envs = daemon.state / "envs"
    assert out["tinypkg"] == "1.0" and out["message"] == "uncommitted"  # the venv's version; the diff applied
    assert out["prefix"].startswith(str(envs)) and not out["cwd"].startswith(str(repo))  # a checkout
    full = subprocess.run([str(BIN / "qstat"), "-xf", first], env=env, capture_output=True, text=True).stdout
    assert f"    env_hash = {job['env_hash']}\n" in full and len(job["env_hash"]) == 64
    (key,) = [p for p in envs.iterdir() if p.is_dir()]
    built = (key / "ready").stat().st_ino, (key / "build.log").stat().st_mtime_ns

    (repo / "settings.py").write_text("MESSAGE = 'edited again'\n")  # new code, same packages
    second = qsub(repo, env, "--", "python", "train.py")
    job2 = daemon.wait_state(second, "finished")
    assert job2["exit_status"] == 0 and output(repo, second)["message"] == "edited again"
    assert job2["env_hash"] != job["env_hash"]  # the job's environment differs...
    assert [p for p in envs.iterdir() if p.is_dir()] == [key]  # ...its venv is the cached one
    assert ((key / "ready").stat().st_ino, (key / "build.log").stat().st_mtime_ns) == built


def test_a_requirement_that_cannot_be_installed_fails_the_job_before_it_runs(
        setup: tuple[Daemon, Path, dict[str, str]]) -> None:
    daemon, repo, env = setup
    (repo / "requirements.txt").write_text("tinypkg==9.9\n")
    jid = qsub(repo, env, "--env", "requirements.txt", "--", "python", "train.py")
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == -1 and job["finish_reason"] == "failed", job
    assert job["comment"].startswith(f"environment {job['env_hash'][:12]}: "), job["comment"]
    assert "install failed" in job["comment"] and "tinypkg==9.9" in job["comment"]
    assert (repo / f"STDIN.o{jid}").read_text() == ""  # train.py never ran
    assert "could not be rebuilt" in (repo / f"STDIN.e{jid}").read_text()


def test_a_job_waiting_for_its_environment_says_so_in_its_comment(setup: tuple[Daemon, Path, dict[str, str]]) -> None:
    """Another job's build of the same environment is in progress (its lock held):
    the job is R with a comment saying what it waits for, then what it builds,
    and the comment goes once the job has started."""
    daemon, repo, env = setup
    jid = qsub(repo, env, "-h", "--", "python", "train.py")
    key = venv_key(msgspec.convert(daemon.job(jid)["env_spec"], EnvSpec))
    envs = daemon.state / "envs"
    envs.mkdir(parents=True, exist_ok=True)
    with open(envs / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a builder holds it
        daemon.client.call("POST", f"/api/v1/jobs/{jid}/release", {})
        job = wait_for("the waiting comment", lambda: (j := daemon.job(jid))["comment"] and j)
        assert job["state"] == "running", job
        assert job["comment"] == f"Preparing: waiting for another job's build of environment venv {key[:12]}"
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == 0 and job["comment"] == "", job
    events = daemon.client.call("GET", f"/api/v1/jobs/{jid}/events")["events"]
    said = [e["data"]["comment"] for e in events if e["kind"] == "preparing"]
    assert said == [f"Preparing: waiting for another job's build of environment venv {key[:12]}",
                    f"Preparing: building environment venv {key[:12]} (1 requirement)"]
