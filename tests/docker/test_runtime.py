"""The docker runtime end to end: ``schedd up`` with a node group whose runtime is
docker, real agents, a real engine, containers of an image built here."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from schedd.protocol import EXIT_MEM, EXIT_WALLTIME
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for


def node_containers(client: docker.DockerClient, daemon: Daemon) -> list[Any]:
    """Containers the test's agents made (their state dirs are under the test's tmp)."""
    # sparse: one list call, no inspect per container (one removed meanwhile by another test's cleanup is a 404)
    return [c for c in client.containers.list(all=True, sparse=True, filters={"label": "schedd.node"})
            if (c.attrs.get("Labels") or {}).get("schedd.jobs", "").startswith(str(daemon.state))]


def docker_daemon(tmp: Path, image: str, nodes: int = 1) -> Daemon:
    daemon = Daemon(tmp, nodes=nodes)
    daemon.pool.write_text(f'[[groups]]\nname = "node"\nswitch_user = false\nruntime = "docker"\n'
                           f'docker_image = "{image}"\n')
    return daemon.start()


@pytest.fixture
def cluster(tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient) -> Iterator[Daemon]:
    daemon = docker_daemon(tmp_path, busybox_image)
    try:
        yield daemon
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)
        for c in node_containers(docker_client, daemon):
            c.remove(force=True)


def running_container(client: docker.DockerClient, daemon: Daemon, jid: str) -> Any:
    def find() -> Any:
        for c in node_containers(client, daemon):
            if c.attrs["Labels"].get("schedd.job", "").startswith(jid + ".") and c.attrs.get("State") == "running":
                return client.containers.get(c.id)  # the full object (labels, HostConfig)
        return None

    return wait_for(f"a running container of job {jid}", find)


def test_a_script_runs_in_a_container_with_the_pbs_environment_and_leaves_nothing(
        cluster: Daemon, docker_client: docker.DockerClient) -> None:
    script = ("#!/bin/sh\n[ -f /.dockerenv ] && echo in-container\necho job=$PBS_JOBID cvd=$CUDA_VISIBLE_DEVICES\n"
              "echo uid=$(id -u) cwd=$(pwd)\ncat $PBS_NODEFILE\necho oops >&2\nexit 3\n")
    jid = cluster.submit(script=script, chunks=[{"ncpus": 1, "ngpus": 2}])
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == 3, job
    out = (cluster.tmp / f"STDIN.o{jid}").read_text().splitlines()
    gpus = ",".join(str(g) for g in job["exec_nodes"][0]["gpus"])
    assert out == ["in-container", f"job={jid}.testsrv cvd={gpus}", f"uid={os.getuid()} cwd={cluster.tmp}", "node01"]
    assert (cluster.tmp / f"STDIN.e{jid}").read_text() == "oops\n"
    assert node_containers(docker_client, cluster) == []


def test_qdel_sends_sigterm_into_the_container_and_removes_it(cluster: Daemon, docker_client: docker.DockerClient) -> None:
    script = "trap 'echo got TERM; exit 7' TERM\necho ready\nsleep 300 &\nwait\n"
    jid = cluster.submit(script=script)
    container = running_container(docker_client, cluster, jid)
    assert container.labels["schedd.rank"] == "0" and container.attrs["HostConfig"]["NetworkMode"] == "host"
    out = cluster.tmp / f"STDIN.o{jid}"
    wait_for("the trap installed", lambda: out.exists() and "ready" in out.read_text())
    cluster.client.call("DELETE", f"/api/v1/jobs/{jid}")
    job = cluster.wait_state(jid, "finished")
    assert out.read_text() == "ready\ngot TERM\n"
    assert job["exit_status"] == 7, job  # its trap's exit, as for a process
    assert node_containers(docker_client, cluster) == []


def test_qsig_reaches_the_job_inside_the_container(cluster: Daemon, docker_client: docker.DockerClient) -> None:
    script = "trap 'echo got USR1; exit 0' USR1\necho ready\nsleep 300 &\nwait\n"
    jid = cluster.submit(script=script)
    out = cluster.tmp / f"STDIN.o{jid}"
    wait_for("the trap installed", lambda: out.exists() and "ready" in out.read_text())
    cluster.client.call("POST", f"/api/v1/jobs/{jid}/signal", {"signal": "USR1"})
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == 0 and out.read_text() == "ready\ngot USR1\n", job


def test_walltime_kills_a_term_proof_container(cluster: Daemon, docker_client: docker.DockerClient) -> None:
    jid = cluster.submit(script="trap '' TERM\nwhile true; do sleep 1; done\n", walltime_s=1.0)
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == EXIT_WALLTIME, job
    assert "walltime" in job["comment"]
    assert node_containers(docker_client, cluster) == []


def test_memory_over_the_request_is_an_oom_kill_by_the_cgroup(cluster: Daemon, docker_client: docker.DockerClient) -> None:
    jid = cluster.submit(script="dd if=/dev/zero of=/dev/null bs=256M count=1\necho survived\n",
                         chunks=[{"ncpus": 1, "mem_mb": 32}])
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == EXIT_MEM, job
    assert "OOM" in job["comment"] and "32 MB" in job["comment"]
    assert node_containers(docker_client, cluster) == []


def test_an_image_that_does_not_exist_fails_the_launch_with_the_engines_reason(
        cluster: Daemon, docker_client: docker.DockerClient) -> None:
    jid = cluster.submit(script="echo never\n", container="schedd-test/absent:0")
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == -1, job
    assert "schedd-test/absent:0" in job["comment"] and "container" in job["comment"], job
    assert node_containers(docker_client, cluster) == []


def test_an_agent_killed_and_restarted_finds_its_container_still_followed(
        cluster: Daemon, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    jid = cluster.submit(script=f"echo before\nwhile [ ! -f {gate} ]; do sleep 0.05; done\necho after\n")
    container = running_container(docker_client, cluster, jid)
    agent = _agent(cluster, "node01")
    agent.kill()  # SIGKILL: the pool restarts it, the container and its runner live on
    agent.wait(30)
    wait_for("a new node01 agent", lambda: (a := _agent(cluster, "node01", missing_ok=True)) and a.pid != agent.pid)
    wait_for("node01 up again", lambda: len(cluster.up_nodes()) == 1)
    container.reload()
    assert container.status == "running"  # not swept: its rank is known and running
    gate.write_text("")
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == 0 and job["attempt"] == 0, job
    assert (cluster.tmp / f"STDIN.o{jid}").read_text() == "before\nafter\n"
    assert node_containers(docker_client, cluster) == []


def _agent(daemon: Daemon, name: str, missing_ok: bool = False) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "nodeagent.main" in cmd and name in cmd and any(str(daemon.state) in c for c in cmd):
            return proc
    assert missing_ok, f"no agent {name} running"
    return None


def test_a_containers_usage_is_its_cgroups_live_and_at_the_end(
        tmp_path: Path, python_image: str, docker_client: docker.DockerClient) -> None:
    daemon = docker_daemon(tmp_path, python_image)
    try:
        gate = tmp_path / "gate"
        code = ("import os, time\nx = bytearray(96 << 20)\nend = time.process_time() + 1.5\n"
                "while time.process_time() < end: pass\nprint('held', flush=True)\n"
                f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n")
        jid = daemon.submit(argv=["python3", "-c", code], name="usage")
        live = wait_for("the container's memory in the job's live usage",
                        lambda: (u := daemon.client.call("GET", f"/api/v1/jobs/{jid}")["live"]) and u["rss_mb"] >= 90 and u)
        assert live["rss_mb"] < 200  # the container's, not the runner's interpreter plus it
        out = tmp_path / f"usage.o{jid}"
        wait_for("the CPU burnt", lambda: out.exists() and "held" in out.read_text())
        gate.write_text("")
        job = daemon.wait_state(jid, "finished")
        assert job["exit_status"] == 0, job
        # the cgroup read every 0.2 s: most of the 1.5 s burnt, far more than the runner uses
        assert job["used"]["cpu_s"] >= 1.0 and 96 <= job["used"]["peak_rss_mb"] < 400, job["used"]
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)


def test_a_container_outlives_its_agent_supervisor_and_runner_and_is_followed_again(
        cluster: Daemon, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    """As when the agent's pod restarts: every process of ours on the node dies, the
    sibling container does not; the new agent finds it and follows it to its end."""
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    script = (f"echo before\nwhile [ ! -f {gate1} ]; do sleep 0.05; done\necho during\n"
              f"while [ ! -f {gate2} ]; do sleep 0.05; done\necho after >&2\nexit 4\n")
    jid = cluster.submit(script=script)
    container = running_container(docker_client, cluster, jid)
    out = cluster.tmp / f"STDIN.o{jid}"
    wait_for("the first line", lambda: out.exists() and out.read_text() == "before\n")
    (rank_dir,) = (cluster.state / "agents" / "node01" / "jobs").iterdir()
    supervisor = psutil.Process(json.loads((rank_dir / "supervisor.pid").read_text())["pid"])
    runner = psutil.Process(json.loads((rank_dir / "started.json").read_text())["pid"])
    agent = _agent(cluster, "node01")
    assert agent is not None
    agent.suspend()  # frozen first, so it cannot see its supervisor die and end the job
    for proc in (runner, supervisor, agent):
        proc.kill()
    gate1.write_text("")  # output while nothing of ours follows the container
    wait_for("a new node01 agent", lambda: (a := _agent(cluster, "node01", missing_ok=True)) and a.pid != agent.pid)
    wait_for("a new supervisor", lambda: json.loads((rank_dir / "supervisor.pid").read_text())["pid"] != supervisor.pid)
    container.reload()
    assert container.status == "running"
    gate2.write_text("")
    job = cluster.wait_state(jid, "finished")
    assert job["exit_status"] == 4 and job["attempt"] == 0, job
    assert out.read_text() == "before\nduring\n"
    assert (cluster.tmp / f"STDIN.e{jid}").read_text() == "after\n"
    assert node_containers(docker_client, cluster) == []
