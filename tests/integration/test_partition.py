"""Network partitions: agents in their own network namespaces, cut off from the daemon.

``schedd serve`` listens on a test bridge; each agent runs in a network
namespace of its own behind a veth (tests/netns.py) and dials in over TCP with
an agent token, as on separate machines. A cut makes every packet to and from
one agent vanish (a ``blackhole`` qdisc on both ends of its veth): no reset,
no error, both sides learn of it from silence only. Every job appends
``<job> <node> start|tick|end <time>`` lines to one shared file (the namespaces share
the filesystem), so the file is the record of every copy's side effects:

* shorter than the fence (half the heartbeat timeout): jobs go on, the agent
  reconnects, nothing is requeued and nothing freezes;
* past the fence but short of the timeout: the agent freezes its ranks (they
  write nothing), the node is never declared down, and once the link is back
  the same attempts go on;
* past the timeout: the node is marked down, its jobs are requeued and run
  elsewhere; the cut-off copies froze before schedd could rerun them, so no
  line of the first copy follows the second copy's start, and when the link is
  back they are killed without ever running again — each job's ``end`` is
  written exactly once.

Needs root, ``ip netns`` and ``tc``'s blackhole qdisc; skipped otherwise.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from schedd.cli.client import Client
from tests import netns
from tests.integration.conftest import CONFIG, ROOT, wait_for

HEARTBEAT_S = 0.2
PING_S = 1.0  # the agent leaves a session whose pong is half of this late


@pytest.fixture
def net() -> Iterator[netns.PodNetwork]:
    why = netns.can_cut()
    if why:
        pytest.skip(f"cannot cut network namespaces off here: {why}")
    network = netns.PodNetwork().up()
    try:
        yield network
    finally:
        network.close()


class Agent:
    """One ``nodeagent`` in its own network namespace."""

    def __init__(self, name: str, ns: netns.PodNet, proc: subprocess.Popen[bytes], log: Path, state: Path) -> None:
        self.name, self.ns, self.proc, self.log, self.state = name, ns, proc, log, state

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))

    def job_procs(self, jid: str) -> list[psutil.Process]:
        """The job's processes in this namespace (the ones carrying its PBS_JOBID)."""
        out = []
        for pid in self.ns.pids():
            try:
                proc = psutil.Process(pid)
                if proc.environ().get("PBS_JOBID", "").split(".")[0] == jid.split(".")[0]:
                    out.append(proc)
            except psutil.Error:
                pass
        return out

    def ranks_left(self) -> list[str]:
        """Rank directories schedd has not acknowledged yet."""
        jobs = self.state / "jobs"
        return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []


class Site:
    """``schedd serve`` on the bridge and ``nodes`` agents, each in its own namespace."""

    def __init__(self, tmp: Path, net: netns.PodNetwork, *, nodes: int, gpus: int, timeout_s: float) -> None:
        self.tmp, self.net, self.gpus = tmp, net, gpus
        self.config = tmp / "schedd.toml"
        text = CONFIG.format(state=tmp / "state", root=ROOT, hb_timeout=timeout_s, grace=30.0)
        assert text.count("heartbeat_s = 0.5\n") == 1
        self.config.write_text(text.replace("heartbeat_s = 0.5\n", f"heartbeat_s = {HEARTBEAT_S}\n"))
        self.daemon_log = tmp / "schedd.log"
        self.token = tmp / "agent.token"
        self.token.write_text(self._schedd("token", "create", "agents", "--role", "admin"))
        self.names = [f"node{i}" for i in range(nodes)]
        self.agents: dict[str, Agent] = {}
        self.proc: subprocess.Popen[str] | None = None
        self.log = tmp / "jobs.log"
        self.gate = tmp / "gate"

    def _schedd(self, *args: str) -> str:
        argv = [sys.executable, "-m", "schedd.main", *args, "--config", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()

    def start(self) -> Site:
        argv = [sys.executable, "-m", "schedd.main", "serve", "--config", str(self.config),
                "--listen", f"{self.net.gateway}:0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.daemon_log.open("a"), text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"SCHEDD_URL=(\S+) or (https?://\S+)", line)
        assert m, f"schedd did not start: {line!r}\n{self.daemon_log.read_text()}"
        self.client, server = Client(m[1]), m[2]
        for name in self.names:
            ns = self.net.add(name, {})
            log, state = self.tmp / f"{name}.log", self.tmp / "agents" / name
            argv = [*ns.exec_prefix(), sys.executable, "-m", "nodeagent.main", "--server", server, "--name", name,
                    "--token-file", str(self.token), "--state-dir", str(state), "--fake-gpus", str(self.gpus),
                    "--cpus", "4", "--mem-mb", "4096", "--no-switch-user", "--heartbeat-s", str(HEARTBEAT_S),
                    "--ping-s", str(PING_S)]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log.open("a"), cwd=ROOT)
            self.agents[name] = Agent(name, ns, proc, log, state)
        wait_for(f"{self.names} up", lambda: all(n["state"] == "up" and n["connected"]
                                                 for n in self.nodes().values()) and len(self.nodes()) == len(self.names))
        return self

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.ns.heal()
            agent.proc.terminate()
        for agent in self.agents.values():
            try:
                agent.proc.wait(30)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        from nodeagent.jobs import stop_supervisors

        for agent in self.agents.values():
            stop_supervisors(agent.state)
            agent.ns.kill_all()

    # ------------------------------------------------------------ the API

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.client.call("GET", "/api/v1/nodes")["nodes"]}

    def job(self, jid: str) -> dict[str, Any]:
        return dict(self.client.call("GET", f"/api/v1/jobs/{jid}")["job"])

    def wait_state(self, jid: str, state: str) -> dict[str, Any]:
        return dict(wait_for(f"job {jid} {state}", lambda: (j := self.job(jid))["state"] == state and j))

    def submit(self, name: str) -> str:
        """A job that says start, ticks every 50 ms until the gate opens, then says end."""
        say = f'echo "$PBS_JOBID $SLURMD_NODENAME' + ' {} $EPOCHREALTIME" >> ' + str(self.log)
        script = "\n".join([say.format("start"),
                            f"while [ ! -e {self.gate} ]; do {say.format('tick')}; sleep 0.05; done",
                            say.format("end"), ""])
        body = {"script": script, "queue": "1xgpu", "name": name, "workdir": str(self.tmp)}
        return str(self.client.call("POST", "/api/v1/jobs", body)["job"]["id"])

    def events(self, jid: str) -> list[dict[str, Any]]:
        return list(self.client.call("GET", f"/api/v1/jobs/{jid}/events")["events"])

    def kinds(self, jid: str) -> list[str]:
        return [e["kind"] for e in self.events(jid)]

    def node_of(self, jid: str) -> str:
        return str(self.job(jid)["exec_nodes"][0]["node"])

    # ------------------------------------------------------------ the jobs' record

    def timed_lines(self) -> list[tuple[str, str, str, float]]:
        """(job, node, what, time) of every line the jobs wrote, in the order written."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            jid, node, what, when = line.split()
            out.append((jid.split(".")[0], node, what, float(when)))
        return out

    def lines(self) -> list[tuple[str, str, str]]:
        """(job, node, what) of every line the jobs wrote, in the order written."""
        return [(j, n, w) for j, n, w, _t in self.timed_lines()]

    def said(self, jid: str, node: str, what: str) -> int:
        short = jid.split(".")[0]
        return sum(1 for j, n, w in self.lines() if (j, n, w) == (short, node, what))

    def run_jobs(self, count: int) -> dict[str, str]:
        """``count`` jobs running and ticking; job id -> node."""
        jids = [self.submit(f"p{i}") for i in range(count)]
        where = {jid: self.node_of(jid) for jid in jids if self.wait_state(jid, "running")}
        wait_for("every job ticking", lambda: all(self.said(j, n, "tick") for j, n in where.items()))
        return where

    def finish(self, jids: list[str]) -> None:
        self.gate.touch()
        for jid in jids:
            job = self.wait_state(jid, "finished")
            assert job["exit_status"] == 0, job


def silent_for(site: Site, name: str, seconds: float) -> bool:
    """schedd has heard nothing from ``name`` for ``seconds`` (its own clock)."""
    node = site.nodes()[name]
    return bool(node["last_seen"]) and time.time() - node["last_seen"] > seconds


def busiest(where: dict[str, str]) -> str:
    nodes = sorted(where.values())
    return max(nodes, key=nodes.count)


def stopped(procs: list[psutil.Process]) -> bool:
    try:
        return bool(procs) and all(p.status() == psutil.STATUS_STOPPED for p in procs)
    except psutil.Error:
        return False


def test_short_partition_jobs_go_on_and_the_agent_reconnects(tmp_path: Path, net: netns.PodNetwork) -> None:
    timeout_s = 10.0  # the fence falls at 5 s: a cut of ~1.5 s stays well short of both
    site = Site(tmp_path, net, nodes=2, gpus=2, timeout_s=timeout_s).start()
    try:
        where = site.run_jobs(2)
        name = busiest(where)
        agent = site.agents[name]
        mine = [j for j, n in where.items() if n == name]
        sessions = agent.count("connected to ")
        t_cut = time.monotonic()
        agent.ns.cut()
        # Until both sides have noticed: the agent left its session, schedd hears nothing.
        wait_for("the agent to leave its dead session", lambda: agent.count("disconnected from ") >= 1)
        wait_for("schedd to hear nothing from it", lambda: silent_for(site, name, 5 * HEARTBEAT_S))
        agent.ns.heal()
        cut_s = time.monotonic() - t_cut
        assert cut_s < timeout_s / 2, f"this machine took {cut_s:.1f} s to see a short partition"
        ticks = {j: site.said(j, name, "tick") for j in mine}
        wait_for("the agent back in a new session", lambda: agent.count("connected to ") > sessions
                 and site.nodes()[name]["connected"])
        wait_for("its jobs ticking on", lambda: all(site.said(j, name, "tick") > ticks[j] for j in mine))
        assert site.nodes()[name]["state"] == "up"
        assert agent.count("fencing") == 0, agent.text()
        for jid in where:
            job = site.job(jid)
            assert job["state"] == "running" and job["attempt"] == 0, job
            assert not {"requeue", "resume"} & set(site.kinds(jid)), site.events(jid)
        site.finish(list(where))
        for jid, node in where.items():
            assert (site.said(jid, node, "start"), site.said(jid, node, "end")) == (1, 1), site.lines()
        print(f"short partition: {cut_s:.2f} s, {len(mine)} job(s) on {name} went on, none requeued")
    finally:
        site.stop()


def test_partition_past_the_fence_freezes_then_thaws(tmp_path: Path, net: netns.PodNetwork) -> None:
    timeout_s = 10.0  # the fence at 5 s, schedd's verdict at 10 s: the link comes back in between
    site = Site(tmp_path, net, nodes=2, gpus=2, timeout_s=timeout_s).start()
    try:
        where = site.run_jobs(2)
        name = busiest(where)
        agent = site.agents[name]
        mine = [j for j, n in where.items() if n == name]
        t_cut = time.monotonic()
        agent.ns.cut()
        wait_for("the agent to fence itself", lambda: agent.count("fencing") == 1)
        wait_for("its jobs frozen", lambda: all(stopped(agent.job_procs(j)) for j in mine))
        frozen = {j: site.said(j, name, "tick") for j in mine}
        agent.ns.heal()
        cut_s = time.monotonic() - t_cut
        assert cut_s < timeout_s, f"this machine took {cut_s:.1f} s to see the fence"
        wait_for("the fence lifted", lambda: agent.count("fence lifted") == 1)
        wait_for("its jobs ticking again", lambda: all(site.said(j, name, "tick") > frozen[j] for j in mine))
        assert site.nodes()[name]["state"] == "up"
        for jid in where:
            job = site.job(jid)
            assert job["state"] == "running" and job["attempt"] == 0, job
            assert not {"requeue", "resume"} & set(site.kinds(jid)), site.events(jid)
        site.finish(list(where))
        for jid, node in where.items():
            assert (site.said(jid, node, "start"), site.said(jid, node, "end")) == (1, 1), site.lines()
        print(f"partition past the fence: {cut_s:.2f} s, {len(mine)} job(s) on {name} frozen and thawed")
    finally:
        site.stop()


def test_long_partition_reruns_elsewhere_and_no_side_effect_happens_twice(tmp_path: Path,
                                                                       net: netns.PodNetwork) -> None:
    timeout_s = 2.0
    site = Site(tmp_path, net, nodes=3, gpus=2, timeout_s=timeout_s).start()
    try:
        where = site.run_jobs(4)
        name = busiest(where)
        agent = site.agents[name]
        mine = [j for j, n in where.items() if n == name]
        agent.ns.cut()
        wait_for(f"{name} down", lambda: site.nodes()[name]["state"] == "down")
        moved: dict[str, str] = {}

        def rerun_elsewhere() -> bool:
            for jid in mine:
                job = site.job(jid)
                if job["state"] != "running" or job["attempt"] < 1:
                    return False
                moved[jid] = site.node_of(jid)
            return all(site.said(j, n, "start") for j, n in moved.items())

        wait_for("the cut-off jobs rerun elsewhere", rerun_elsewhere)
        assert name not in moved.values()
        # The gate opens while the first copies are still cut off: had they gone on,
        # they would see it and say "end" a second time.
        site.finish(list(where))
        agent.ns.heal()
        wait_for(f"{name} back", lambda: site.nodes()[name]["state"] == "up" and site.nodes()[name]["connected"])
        wait_for("the stale copies killed and acknowledged", lambda: not agent.ranks_left())
        assert all(not agent.job_procs(j) for j in mine)

        lines = site.lines()
        for jid in where:
            short = jid.split(".")[0]
            final = moved.get(jid, where[jid])
            ends = [n for j, n, w in lines if j == short and w == "end"]
            assert ends == [final], f"job {jid} said end on {ends}: {[x for x in lines if x[0] == short and x[2] != 'tick']}"
        for jid, node in moved.items():
            short = jid.split(".")[0]
            mine_lines = [i for i, (j, _n, _w) in enumerate(lines) if j == short]
            second = next(i for i in mine_lines if lines[i][1] == node)
            late = [lines[i] for i in mine_lines if i > second and lines[i][1] == name]
            assert not late, f"the first copy of {jid} on {name} went on after the second started: {late}"
        for jid in mine:
            kinds = site.kinds(jid)
            assert kinds.count("requeue") == 1 and "resume" not in kinds, site.events(jid)
        assert agent.count("fencing") >= 1 and agent.count("killed while frozen") == len(mine), agent.text()
        print(f"long partition: {len(mine)} job(s) on {name} frozen, rerun on {sorted(set(moved.values()))}, "
              f"stale copies killed; lost 0, doubled 0")
    finally:
        site.stop()
