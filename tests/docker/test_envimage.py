"""A captured environment on a docker node: ``qsub -- python train.py`` from a git work
tree with a venv; the node builds an image FROM its base with the exact packages,
tagged by hash, and runs the checkout in it. Offline: the wheels come from a
local directory that the agent's pip settings point at."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.docker.test_runtime import docker_daemon, node_containers
from tests.integration.conftest import Daemon, _kill_leftovers
from tests.integration.test_envpack import output, qsub, qsub_env, user_project


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_image: str,
          docker_client: docker.DockerClient) -> Iterator[tuple[Daemon, Path, dict[str, str]]]:
    repo, python = user_project(tmp_path, monkeypatch)
    for image in docker_client.images.list(name="schedd-env"):  # left by an earlier run: build afresh
        docker_client.images.remove(image.id, force=True)
    daemon = docker_daemon(tmp_path, python_image)
    try:
        yield daemon, repo, qsub_env(daemon, python)
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)
        for c in node_containers(docker_client, daemon):
            c.remove(force=True)


def test_a_python_job_runs_in_an_image_of_its_environment_built_once(
        setup: tuple[Daemon, Path, dict[str, str]], docker_client: docker.DockerClient) -> None:
    daemon, repo, env = setup
    first = qsub(repo, env, "--", "python", "train.py")
    job = daemon.wait_state(first, "finished", timeout=180)
    assert job["exit_status"] == 0, (job, (repo / f"STDIN.e{first}").read_text())
    out = output(repo, first)
    assert out["tinypkg"] == "1.0" and out["message"] == "uncommitted"  # the exact version; the diff applied
    assert out["prefix"] == "/opt/schedd/venv"  # the image's venv, not the host's
    assert not out["cwd"].startswith(str(repo))  # a clean checkout, mounted
    built = {t: i.id for i in docker_client.images.list(name="schedd-env") for t in i.tags}
    assert len(built) == 1, built

    (repo / "settings.py").write_text("MESSAGE = 'edited again'\n")  # new code, same packages
    since = f"{time.time():.9f}"  # to the nanosecond: the first build may have tagged within this second
    second = qsub(repo, env, "--", "python", "train.py")
    job2 = daemon.wait_state(second, "finished", timeout=180)
    assert job2["exit_status"] == 0 and output(repo, second)["message"] == "edited again"
    after = {t: i.id for i in docker_client.images.list(name="schedd-env") for t in i.tags}
    assert after == built  # the same image: nothing rebuilt
    events = docker_client.events(since=since, until=int(time.time()) + 1,  # type: ignore[arg-type]
                                  decode=True, filters={"type": "image"})
    tagged = [e for e in events if e.get("Action") == "tag"]
    assert tagged == [], (since, [(e["time"], e["timeNano"], e["Actor"]) for e in tagged])  # no build tagged anything
    assert node_containers(docker_client, daemon) == []


def test_a_base_image_with_another_python_fails_before_the_job_runs(
        setup: tuple[Daemon, Path, dict[str, str]], busybox_image: str) -> None:
    daemon, repo, env = setup
    jid = qsub(repo, env, "-l", f"container={busybox_image}", "--", "python", "train.py")
    job = daemon.wait_state(jid, "finished", timeout=180)
    assert job["exit_status"] == -1, job
    assert job["comment"].startswith(f"environment {job['env_hash'][:12]}: image build failed"), job["comment"]
    assert (repo / f"STDIN.o{jid}").read_text() == ""
    assert "could not be rebuilt" in (repo / f"STDIN.e{jid}").read_text()
