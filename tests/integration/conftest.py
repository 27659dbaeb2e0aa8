"""Start the real daemon with real agents, as a user would (``schedd up``).

Each test gets its own state directory and port. Waiting is always for a
condition read from the API (``wait_for``), with a generous deadline for a
loaded 2-core machine — never a sleep that guesses how long something takes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schedd.cli.client import Client

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0

CONFIG = """
server_name = "testsrv"
listen = "127.0.0.1:0"
state_dir = "{state}"
policies = "{root}/conf/policies.toml"
heartbeat_s = 0.5
heartbeat_timeout_s = {hb_timeout}
kill_delay_s = 1.0
tick_s = 1.0
reconnect_grace_s = {grace}
allow_root_jobs = true  # the tests submit as root (tests/security acts as ordinary users)

[queues.default]
default_chunk = {{ ncpus = 1, mem_mb = 0, ngpus = 0 }}
preempts = ["low"]

[queues.1xgpu]
default_chunk = {{ ncpus = 1, mem_mb = 0, ngpus = 1 }}
preempts = ["low"]

[queues.low]
tier = 0
default_chunk = {{ ncpus = 1, mem_mb = 0, ngpus = 1 }}
"""


def wait_for(what: str, pred: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    """Poll ``pred`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)  # a poll interval for a condition, not a guess at timing
        delay = min(delay * 1.5, 0.2)


class Daemon:
    """``schedd up`` in a subprocess, plus a client for its Unix socket."""

    def __init__(self, tmp: Path, nodes: int = 2, gpus: int = 4, hb_timeout: float = 30.0, grace: float = 30.0,
                 policies: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.nodes, self.gpus = nodes, gpus
        self.config = tmp / "schedd.toml"
        self.config.write_text(CONFIG.format(state=self.state, root=ROOT, hb_timeout=hb_timeout, grace=grace))
        if policies:  # the shipped policies with some keys changed
            text = (ROOT / "conf" / "policies.toml").read_text()
            for key, value in policies.items():
                text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
                assert n == 1, key
            (tmp / "policies.toml").write_text(text)
            self.config.write_text(self.config.read_text().replace(f"{ROOT}/conf/policies.toml", str(tmp / "policies.toml")))
        # Test users (tokens for ann, bob...) do not exist here: run their jobs as ourselves.
        self.pool = tmp / "pool.toml"
        self.pool.write_text('[[groups]]\nname = "node"\nswitch_user = false\n')
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.http_url = ""
        self.log = tmp / "schedd.log"

    def start(self) -> Daemon:
        argv = [sys.executable, "-m", "schedd.main", "up", "--config", str(self.config),
                "--nodes", str(self.nodes), "--gpus-per-node", str(self.gpus), "--cpus-per-node", "8",
                "--pool", str(self.pool)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"SCHEDD_URL=(\S+) or (\S+)", line)
        assert m, f"schedd did not start: {line!r}\n{self.log.read_text()}"
        self.url, self.http_url = m[1], m[2]
        self.client = Client(self.url)
        wait_for(f"{self.nodes} nodes up", lambda: len(self.up_nodes()) == self.nodes)
        return self

    def up_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.client.call("GET", "/api/v1/nodes")["nodes"] if n["state"] == "up"]

    def submit(self, **body: Any) -> str:
        body.setdefault("workdir", str(self.tmp))
        return str(self.client.call("POST", "/api/v1/jobs", body)["job"]["id"])

    def job(self, jid: str) -> dict[str, Any]:
        return dict(self.client.call("GET", f"/api/v1/jobs/{jid}")["job"])

    def wait_state(self, jid: str, *states: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        return dict(wait_for(f"job {jid} in {states}", lambda: (j := self.job(jid))["state"] in states and j, timeout))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        if sig == signal.SIGTERM:  # a clean stop leaves no job running behind the test
            _kill_leftovers(self.state)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.client.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path).start()
    yield d
    d.stop()
    _kill_leftovers(d.state)


def _kill_leftovers(state: Path) -> None:
    """Agents of a SIGKILLed daemon, and their jobs, must not outlive the test."""
    from nodeagent.jobs import stop_supervisors

    stop_supervisors(state)
    out = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True).stdout.split()
    for pid in out:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
