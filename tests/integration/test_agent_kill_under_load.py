"""Issue #12's guard on throughput work: 2,000 short jobs stream through two
agents, one agent is ``kill -9``'d in the middle and the pool restarts it, and
every job still runs exactly once — its side effect (a line in a shared
ledger) appears once, and it finishes once, with exit status 0."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
from pathlib import Path

from tests.integration.conftest import Daemon, wait_for

JOBS = 2000


def _agent_pids(daemon: Daemon, node: str) -> list[str]:
    pattern = f"nodeagent.main .*--state-dir {daemon.state}/agents/{node} "
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()


def _lines(ledger: Path) -> list[str]:
    return ledger.read_text().split() if ledger.exists() else []


def test_2000_jobs_with_an_agent_killed_midway_each_run_exactly_once(daemon: Daemon, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    job = {"argv": ["sh", "-c", f'echo "$PBS_JOBID" >> {ledger}'], "workdir": str(tmp_path),
           "stdout_path": "/dev/null", "stderr_path": "/dev/null"}
    answer = daemon.client.call("POST", "/api/v1/jobs/batch", {"jobs": [job] * JOBS})
    ids = [i.split(".")[0] for i in answer["ids"]]
    assert len(set(ids)) == JOBS

    wait_for("a quarter of the jobs to have run", lambda: len(_lines(ledger)) >= JOBS // 4, timeout=300)
    (pid,) = _agent_pids(daemon, "node01")
    os.kill(int(pid), signal.SIGKILL)
    wait_for("the pool to restart node01's agent", lambda: (p := _agent_pids(daemon, "node01")) and p != [pid])

    wait_for("every job to finish", lambda: daemon.client.call("GET", "/api/v1/jobs")["jobs"] == [], timeout=600)
    finished = daemon.client.pages("/api/v1/jobs?finished=1")["jobs"]
    mine = {str(j["id"]): j for j in finished if str(j["id"]) in set(ids)}
    assert set(mine) == set(ids)
    failed = {i: (j["state"], j.get("exit_status"), j.get("comment")) for i, j in mine.items()
              if j.get("exit_status") != 0}
    assert not failed, list(failed.items())[:5]
    counts = collections.Counter(line.split(".")[0] for line in _lines(ledger))
    twice = {i: n for i, n in counts.items() if n != 1}
    assert not twice, f"ran more than once: {list(twice.items())[:10]}"
    assert set(counts) == set(ids), f"never ran: {sorted(set(ids) - set(counts))[:10]}"
