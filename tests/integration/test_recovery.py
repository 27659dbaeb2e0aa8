"""Crashes: schedd killed -9 and restarted, an agent killed -9 for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import ROOT, Daemon, wait_for


def test_schedd_kill9_restart_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=2, gpus=2).start()
    log = tmp_path / "runs.log"
    try:
        gate = tmp_path / "gate"
        body = f"echo $PBS_JOBID >> {log}; while [ ! -e {gate} ]; do sleep 0.05; done\n"
        running = [d.submit(script=body, queue="1xgpu", name=f"r{i}") for i in range(4)]
        queued = [d.submit(script=f"echo $PBS_JOBID >> {log}\n", queue="1xgpu", name=f"q{i}") for i in range(3)]
        for jid in running:
            d.wait_state(jid, "running")
        wait_for("4 jobs logged", lambda: log.exists() and len(log.read_text().split()) == 4)
        d.stop(signal.SIGKILL)  # schedd dies; its agents lose their server
        gate.touch()  # the running jobs end while schedd is down
        d2 = Daemon(tmp_path, nodes=2, gpus=2)
        d2.start()
        try:
            for jid in running + queued:
                job = d2.wait_state(jid, "finished")
                assert job["exit_status"] == 0, job
            runs = log.read_text().split()
            assert sorted(runs) == sorted(f"{j}.testsrv" for j in running + queued)  # each exactly once
        finally:
            d2.stop()
    finally:
        d.stop()


def test_agent_killed_for_good_node_goes_down_and_job_requeues(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=0, gpus=1, hb_timeout=2.0)
    d.nodes = 0
    d.start()
    agents: list[subprocess.Popen[bytes]] = []

    def agent(name: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "nodeagent.main", "--server", d.url, "--name", name,
                              "--fake-gpus", "1", "--cpus", "4", "--heartbeat-s", "0.5",
                              "--state-dir", str(tmp_path / "state" / "agents" / name)],
                             cwd=ROOT, stderr=(tmp_path / f"{name}.log").open("a"))
        agents.append(p)
        return p

    try:
        first = agent("a1")
        wait_for("a1 up", lambda: len(d.up_nodes()) == 1)
        jid = d.submit(argv=["sleep", "300"], queue="1xgpu", name="victim")
        assert d.wait_state(jid, "running")["exec_nodes"][0]["node"] == "a1"
        first.send_signal(signal.SIGKILL)
        first.wait()
        job = d.wait_state(jid, "queued")
        assert job["attempt"] == 1 and "a1" in job["comment"]
        nodes = {n["name"]: n["state"] for n in d.client.call("GET", "/api/v1/nodes")["nodes"]}
        assert nodes == {"a1": "down"}
        agent("a2")
        job = d.wait_state(jid, "running")
        assert job["exec_nodes"][0]["node"] == "a2" and job["attempt"] == 1
    finally:
        for p in agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        d.stop()
        # a1's supervisor still runs attempt 0 (its agent never came back to be told): end it
        out = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_agent_kill9_is_restarted_and_readopts_its_running_job(daemon: Daemon, tmp_path: Path) -> None:
    gate, began = tmp_path / "gate", tmp_path / "began"
    script = f"touch {began}; while [ ! -e {gate} ]; do sleep 0.05; done; exit 5\n"
    jid = daemon.submit(script=script, name="survivor")
    node = daemon.wait_state(jid, "running")["exec_nodes"][0]["node"]
    # R is schedd's decision; kill the agent only once the job really runs under
    # its supervisor (killed before the Launch arrived, the job is rightly requeued).
    wait_for("the job to begin", began.exists)
    pattern = f"nodeagent.main .*--state-dir {daemon.state}/agents/{node} "

    def agent_pids() -> list[str]:
        return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()

    (pid,) = agent_pids()
    os.kill(int(pid), signal.SIGKILL)
    # The pool restarts the agent, which finds the job's supervisor still running it.
    wait_for("a new agent process", lambda: (p := agent_pids()) and p != [pid])
    wait_for("the node back up", lambda: any(n["name"] == node for n in daemon.up_nodes()))
    gate.touch()
    job = daemon.wait_state(jid, "finished")
    assert (job["exit_status"], job["attempt"]) == (5, 0)  # same attempt: never relaunched
