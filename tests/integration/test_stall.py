"""Stalls: the daemon, its agent, or both stopped (SIGSTOP) past the heartbeat timeout.

A paused VM, a machine under memory pressure, a debugger: the processes stop
while the jobs' supervisors (separate processes) go on, so jobs finish during
the pause. Whoever was stopped, afterwards every job's side effect has
happened exactly once, every job ends with its own exit status, and the node
is back within two heartbeat intervals of the resume.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Daemon, wait_for

HEARTBEAT_S = 0.5  # conftest's CONFIG
HB_TIMEOUT_S = 2.0
TICK_S = 1.0


def agent_pids(d: Daemon) -> list[int]:
    """The node agents ``schedd up`` started: its children running nodeagent.main."""
    assert d.proc is not None
    kids = psutil.Process(d.proc.pid).children()
    return [p.pid for p in kids if "nodeagent.main" in " ".join(p.cmdline())]


def exit_records(d: Daemon) -> list[Path]:
    """Every exit.json a supervisor wrote (the job has ended on its node)."""
    return list((d.state / "agents").glob("*/jobs/*/exit.json"))


@contextmanager
def stopped(pids: list[int]) -> Iterator[float]:
    """SIGSTOP ``pids`` for the block, SIGCONT after it (even on failure); yields the stop time."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def node_states(d: Daemon) -> dict[str, str]:
    return {n["name"]: n["state"] for n in d.client.call("GET", "/api/v1/nodes")["nodes"]}


def seconds_until_up(d: Daemon, deadline: float = 30.0) -> float:
    """Seconds from now until every node is up (polled finely: this is what we measure)."""
    t0 = time.monotonic()
    while set(node_states(d).values()) != {"up"}:
        assert time.monotonic() - t0 < deadline, f"nodes not back: {node_states(d)}"
        time.sleep(0.02)  # a poll interval for a condition, not a guess at timing
    return time.monotonic() - t0


@pytest.mark.parametrize("who", ["daemon", "agent", "both"])
def test_stall_past_the_timeout_runs_every_job_once_and_keeps_the_node(tmp_path: Path, who: str) -> None:
    d = Daemon(tmp_path, nodes=1, gpus=4, hb_timeout=HB_TIMEOUT_S).start()
    try:
        soon, later = tmp_path / "soon", tmp_path / "later"
        runs = tmp_path / "runs"
        runs.mkdir()

        def job(gate: Path, name: str) -> str:
            script = f"echo run >> {runs}/$PBS_JOBID; while [ ! -e {gate} ]; do sleep 0.05; done\n"
            return d.submit(script=script, queue="1xgpu", name=name)

        finishing = [job(soon, f"f{i}") for i in range(2)]  # end during the pause
        lasting = [job(later, f"l{i}") for i in range(2)]  # still running after it
        for jid in finishing + lasting:
            d.wait_state(jid, "running")
        wait_for("every job's side effect", lambda: len(list(runs.iterdir())) == 4)
        (agent,) = agent_pids(d)
        assert d.proc is not None
        targets = {"daemon": [d.proc.pid], "agent": [agent], "both": [d.proc.pid, agent]}[who]
        with stopped(targets) as t_stop:
            soon.touch()
            # Holding the STOP for longer than the heartbeat timeout (plus a tick, so
            # that a running daemon has checked) *is* the scenario, hence a duration.
            wait_for("the finishing jobs' exit records and a pause past the timeout",
                     lambda: len(exit_records(d)) == 2 and time.monotonic() - t_stop > HB_TIMEOUT_S + TICK_S)
            if who == "agent":  # the daemon runs: it declares the silent node down
                wait_for("node down", lambda: node_states(d) == {"node01": "down"})
        back = seconds_until_up(d)
        print(f"{who}: node up {back:.3f} s after the resume")
        assert back <= 2 * HEARTBEAT_S, f"node back {back:.2f} s after the resume"
        for jid in finishing:
            job_ = d.wait_state(jid, "finished")
            assert job_["exit_status"] == 0, job_
        for jid in lasting:
            assert d.wait_state(jid, "running")["attempt"] == 0
        later.touch()
        for jid in lasting:
            job_ = d.wait_state(jid, "finished")
            assert job_["exit_status"] == 0, job_
        for jid in finishing + lasting:
            assert (runs / f"{jid}.testsrv").read_text() == "run\n", jid  # exactly once
        assert node_states(d) == {"node01": "up"}
    finally:
        d.stop()
