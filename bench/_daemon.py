"""``schedd up`` in a subprocess for benchmarks: a temporary state directory and
config, the ``schedd ready`` line parsed, start-up timed, and a clean stop.

Started exactly as a user starts it (``python -m schedd.main up``), talking over
the Unix socket with the stdlib client of :mod:`schedd.cli.client`. Everything
it leaves behind — agents of a daemon that did not stop, job supervisors — is
found by the state directory in its command line and killed by pid.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from schedd.cli.client import Client, Unreachable

__all__ = ["ROOT", "LocalSchedd", "StartTimes"]

ROOT = Path(__file__).resolve().parents[1]

_CONFIG = """
server_name = "bench"
listen = "127.0.0.1:0"
state_dir = "{state}"
policies = "{root}/conf/policies.toml"
heartbeat_s = 0.5
heartbeat_timeout_s = 30.0
kill_delay_s = 1.0
tick_s = 1.0
reconnect_grace_s = 30.0
allow_root_jobs = true  # benchmarks submit as root

[queues.default]
default_chunk = {{ ncpus = 1, mem_mb = 0, ngpus = 0 }}
"""
#: ``schedd.main`` under cProfile timed by the event-loop thread's CPU clock:
#: wall-clock profiles of a daemon on a busy 2-core machine mostly measure
#: preemption (a ``send`` that wakes the reader shows up as milliseconds).
_PROFILED = """
import cProfile, sys, time
from schedd.main import main
out = sys.argv.pop(1)
prof = cProfile.Profile(time.thread_time)
try:
    prof.runcall(main, sys.argv[1:])
finally:
    prof.dump_stats(out)
"""
_READY = re.compile(r"SCHEDD_URL=(\S+) or (\S+)")
_FINISHED = re.compile(r'^schedd_jobs_finished_total\{result="([a-z_]+)"\} ([0-9.e+]+)$', re.M)


@dataclass(frozen=True)
class StartTimes:
    """Seconds from ``Popen`` to: the ready line, the first 200 of /healthz, every node up."""

    ready_s: float
    healthz_s: float
    nodes_s: float


def tree_cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of a process, the children it reaped, and its live children the
    same way (a forkserver: the supervisors it reaped, and those serving rank after
    rank); 0 for a process that is gone (then its parent's reaped sum has it)."""
    try:
        t = proc.cpu_times()
        live = proc.children()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system) + sum(tree_cpu_s(p) for p in live)


class LocalSchedd:
    """One ``schedd up --nodes K --cpus-per-node C --gpus-per-node G`` (K may be 0; G, default 0, fake GPUs)."""

    def __init__(self, tmp: Path, nodes: int, cpus_per_node: int = 64, profile: Path | None = None,
                 pool: str = "", gpus_per_node: int = 0, verbose: bool = False) -> None:
        """``profile``: run under cProfile (CPU time of the event-loop thread), stats written there on stop;
        ``pool``: the text of a pool.toml (its group's runtime, say), else the shipped one;
        ``verbose``: log at DEBUG (``-v``: every cycle that started a job, for instance)."""
        self.tmp = tmp
        self.state = tmp / "state"
        self.nodes, self.cpus, self.gpus = nodes, cpus_per_node, gpus_per_node  # GPUs: fake ones
        self.profile = profile
        self.verbose = verbose
        self.config = tmp / "schedd.toml"
        tmp.mkdir(parents=True, exist_ok=True)
        self.config.write_text(_CONFIG.format(state=self.state, root=ROOT))
        self.log = tmp / "schedd.log"
        self.pool = tmp / "pool.toml" if pool else None
        if self.pool is not None:
            self.pool.write_text(pool)
        self.proc: subprocess.Popen[str] | None = None
        self.client = Client("unix:///nonexistent")
        self.url = ""  # its Unix socket
        self.http_url = ""  # its TCP listener (a browser's way in)
        self._metrics: _UnixHTTP | None = None  # a second keep-alive connection, for text

    def start(self) -> StartTimes:
        """Start and wait until every node is up; raises RuntimeError with the log's tail."""
        cmd = ["-m", "schedd.main"] if self.profile is None else ["-c", _PROFILED, str(self.profile)]
        argv = [sys.executable, *cmd, "up", "--config", str(self.config), "--nodes", str(self.nodes),
                "--cpus-per-node", str(self.cpus), "--gpus-per-node", str(self.gpus)]
        argv += ["--pool", str(self.pool)] if self.pool is not None else []
        argv += ["-v"] if self.verbose else []
        t0 = time.monotonic()
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        ready = time.monotonic() - t0
        m = _READY.search(line)
        if m is None:
            self.stop()
            raise RuntimeError(f"schedd did not start: {line!r}\n{self.tail()}")
        threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True).start()
        self.url, self.http_url = m[1], m[2]
        self.client = Client(self.url)
        healthz = self._until("/healthz answers", lambda: self._healthy(), t0)
        nodes = self._until(f"{self.nodes} nodes up", lambda: len(self.up_nodes()) >= self.nodes, t0)
        return StartTimes(ready, healthz, nodes)

    def _healthy(self) -> bool:
        try:
            return bool(self.client.call("GET", "/healthz").get("ok"))
        except Unreachable:
            return False

    def _until(self, what: str, pred: Any, t0: float, timeout_s: float = 120.0) -> float:
        """Poll ``pred`` (1 ms, then up to 20 ms apart); seconds since ``t0`` when true."""
        delay = 0.001
        while not pred():
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}\n{self.tail()}")
            time.sleep(delay)  # a poll interval for a condition, not a guess at timing
            delay = min(delay * 1.5, 0.02)
        return time.monotonic() - t0

    def up_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.client.call("GET", "/api/v1/nodes")["nodes"] if n["state"] == "up"]

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text, on a keep-alive connection of its own."""
        if self._metrics is None:
            self._metrics = _UnixHTTP(self.url[len("unix://"):])
        self._metrics.request("GET", "/metrics")
        return self._metrics.getresponse().read().decode()

    def finished(self) -> int:
        """Jobs finished since start, every result (the ``schedd_jobs_finished`` counter)."""
        return int(sum(float(n) for _, n in _FINISHED.findall(self.metrics())))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the daemon process itself (its agents are separate processes)."""
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def cpu_s(self) -> tuple[float, float, float]:
        """CPU seconds so far: (the daemon, its agents, what runs the ranks: the agents'
        forkservers and everything they forked and reaped — supervisors and the jobs
        those reaped — plus any supervisor the agents reaped themselves)."""
        me = psutil.Process(self.pid)
        t = me.cpu_times()
        agents = reaped = 0.0
        for child in me.children():
            try:
                c = child.cpu_times()
                below = child.children()  # the agent's forkserver: it forks and reaps the supervisors
            except psutil.Error:
                continue
            agents += c.user + c.system
            reaped += c.children_user + c.children_system
            for server in below:
                reaped += tree_cpu_s(server)
        return t.user + t.system, agents, reaped

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon (its agents stop with it); kill anything left behind."""
        self.client.close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.kill_leftovers()

    def kill_leftovers(self) -> None:
        """Agents and job supervisors started under this state directory, by pid."""
        from nodeagent.jobs import stop_supervisors

        stop_supervisors(self.state)
        out = subprocess.run(["pgrep", "-f", str(self.state)], capture_output=True, text=True, check=False).stdout
        for pid in out.split():
            if int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


def _drain(stream: Any) -> None:
    """Read the daemon's stdout to its end so that nothing there can ever block it."""
    for _ in stream:
        pass


class _UnixHTTP(http.client.HTTPConnection):
    """A keep-alive HTTP connection over a Unix socket, for the non-JSON /metrics."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock
