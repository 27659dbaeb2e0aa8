"""Kubernetes pool at 64 pods: apply -> every node free, and the pod watch under 1,000 events/s.

``python -m bench.kube [--pods 64] [--rate 1000] [--seconds 10]``

A real ``schedd serve --pool`` (driver ``kubernetes``, ``manage = true``)
against the stand-in API server of tests/kube and its StatefulSet/kubelet
simulator. Each Running pod runs a real :class:`nodeagent.agent.Agent` with a
fake GPU, but *in this process* (one asyncio task per pod on the stand-in's
loop), not one process in its own network namespace as in the e2e tests:
64 Python processes would measure interpreter start-up on two cores, not the
driver.

Measured:

1. apply -> all ``N`` nodes reserving (every pod seen by the watch) and -> all
   free (every agent registered), from the daemon's start; the StatefulSet's
   creation time is printed too;
2. scheduling cycles (``schedd_cycle_seconds`` on ``/metrics``: count, mean,
   the p99 bucket) while 1-s jobs are submitted at a steady rate, first without
   pod events, then while every pod is modified at ``--rate`` events per second
   in all (kubelet-style status noise: an annotation bump per event);
3. the watch's lag after the burst: a busy label set by hand on a drained pod
   is a watch event the driver must answer with a patch taking it away; the
   time from our write to its patch says how far behind the watch stream is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from nodeagent.agent import Agent, AgentConfig
from nodeagent.gpu import open_backend
from nodeagent.jobs import JobTable
from tests.kube.apiserver import ApiServer
from tests.kube.cluster import Cluster, SimNode
from tests.kube.test_agents_e2e import Served

NS = "schedd"
POOL = """
driver = "kubernetes"
[kubernetes]
namespace = "{ns}"
image = "registry.example.com/schedd:bench"
server_url = "http://127.0.0.1:{port}"
kubeconfig = "{kubeconfig}"

[[groups]]
name = "gpu"
count = {pods}
gpus = 1
cpus = 1
mem_mb = 2048
switch_user = false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, pred: Any, timeout_s: float = 120.0) -> Any:
    """Poll every 5 ms up to a deadline: the time it returns at is what is reported."""
    end = time.monotonic() + timeout_s
    while not (value := pred()):
        if time.monotonic() > end:
            raise TimeoutError(what)
        time.sleep(0.005)
    return value


class InProcessKubelet:
    """Cluster hooks: a real Agent task per Running pod, on the stand-in's event loop."""

    def __init__(self, root: Path, server: str, token: str) -> None:
        self.root, self.server, self.token = root, server, token
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def on_running(self, pod: dict[str, Any]) -> None:
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        stop = self.stops[uid] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._agent(name, uid, stop))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop_all(self) -> None:
        for stop in self.stops.values():
            stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def on_deleted(self, pod: dict[str, Any]) -> None:
        if (stop := self.stops.pop(pod["metadata"]["uid"], None)) is not None:
            stop.set()

    async def _agent(self, name: str, uid: str, stop: asyncio.Event) -> None:
        state = self.root / f"{name}-{uid[:8]}"
        gpus = open_backend(1, name)
        table = JobTable(state, node=name, switch_user=False, env_cache=str(state / "envs"))
        await table.open()
        config = AgentConfig(self.server, name, 1, 2048, token=self.token, heartbeat_s=5.0, incarnation=uid)
        try:
            await Agent(config, table, gpus).run(stop)
        finally:
            await table.close()
            gpus.close()


class Bench:
    def __init__(self, tmp: Path, pods: int) -> None:
        self.tmp, self.pods = tmp, pods
        self.api = ApiServer(log_size=100_000, bookmark_interval_s=1.0)
        self.api.start()
        self.api.store.create("namespaces", "", {"metadata": {"name": NS}})
        port = _free_port()
        (tmp / "pool.toml").write_text(POOL.format(ns=NS, port=port, pods=pods,
                                                   kubeconfig=self.api.kubeconfig(tmp / "kubeconfig", NS)))
        self.daemon = Served(tmp, "127.0.0.1", hb_timeout=60.0, grace=30.0, pool=tmp / "pool.toml", port=port)
        token = self.daemon.token("agents", "admin")
        self.api.store.create("secrets", NS, {"metadata": {"name": "schedd-agent-token"},
                                               "data": {"token": base64.b64encode(token.encode()).decode()}})
        self.kubelet = InProcessKubelet(tmp / "pods", f"http://127.0.0.1:{port}", token)
        self.cluster = Cluster(self.api, [SimNode(f"k8s-{i}", {"nvidia.com/gpu": 8}) for i in range((pods + 7) // 8)],
                               on_running=self.kubelet.on_running, on_deleted=self.kubelet.on_deleted)
        self.cluster.start()

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.daemon.client.call("GET", "/api/v1/nodes")["nodes"])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.daemon.port}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def close(self) -> None:
        self.daemon.stop()
        self.cluster.stop()
        self.api.call(self.kubelet.stop_all()).result(timeout=60)
        self.api.stop()


def _cycles(text: str) -> tuple[float, float, dict[float, float]]:
    """(count, sum, cumulative bucket counts) of schedd_cycle_seconds."""
    count = float(re.search(r"^schedd_cycle_seconds_count (\S+)", text, re.M)[1])  # type: ignore[index]
    total = float(re.search(r"^schedd_cycle_seconds_sum (\S+)", text, re.M)[1])  # type: ignore[index]
    buckets = {float(le): float(v) for le, v in re.findall(r'^schedd_cycle_seconds_bucket\{le="([^"]+)"\} (\S+)', text, re.M)}
    return count, total, buckets


def _window(before: str, after: str) -> str:
    """Cycles between two scrapes: n, mean, and the bucket holding the 99th percentile."""
    c0, s0, b0 = _cycles(before)
    c1, s1, b1 = _cycles(after)
    n = c1 - c0
    if n <= 0:
        return "no cycles"
    p99 = next(le for le in sorted(b1) if b1[le] - b0.get(le, 0.0) >= 0.99 * n)
    return f"{n:.0f} cycles, mean {1000 * (s1 - s0) / n:.2f} ms, p99 <= {1000 * p99:g} ms"


def _submit_while(bench: Bench, stop: threading.Event, per_s: float) -> int:
    n, t0 = 0, time.monotonic()
    while not stop.is_set():
        bench.daemon.client.call("POST", "/api/v1/jobs", {"argv": ["sleep", "1"], "queue": "1xgpu",
                                                          "workdir": str(bench.tmp)})
        n += 1
        stop.wait(max(0.0, t0 + n / per_s - time.monotonic()))  # a paced generator, not a timing guess
    return n


def _phase(bench: Bench, seconds: float, rate: float, jobs_per_s: float) -> tuple[str, int]:
    """Submit jobs for ``seconds``; with ``rate`` > 0 modify pods at that rate meanwhile."""
    before = bench.metrics()
    stop, events = threading.Event(), 0
    submitter = threading.Thread(target=_submit_while, args=(bench, stop, jobs_per_s))
    submitter.start()
    names = [f"gpu-{i}" for i in range(bench.pods)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if rate > 0:
            bench.api.store.patch("pods", NS, names[events % len(names)],
                                  {"metadata": {"annotations": {"bench.schedd.io/seq": str(events)}}})
            events += 1
            stop.wait(max(0.0, t0 + events / rate - time.monotonic()))
        else:
            stop.wait(0.05)
    stop.set()
    submitter.join()
    return _window(before, bench.metrics()), events


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.kube", description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=64)
    ap.add_argument("--rate", type=float, default=1000.0, help="pod events per second in the burst")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--jobs-per-s", type=float, default=20.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-kube-") as tmp:
        bench = Bench(Path(tmp), args.pods)
        try:
            t0 = time.monotonic()
            bench.daemon.start()
            _wait("the StatefulSet", lambda: bench.api.store.list("statefulsets", NS)[0])
            t_sts = time.monotonic()
            _wait("every pod seen", lambda: len(bench.nodes()) == args.pods)
            t_seen = time.monotonic()
            _wait("every node free", lambda: sum(n["state"] == "up" and n["connected"] for n in bench.nodes()) == args.pods)
            t_free = time.monotonic()
            print(f"{args.pods} pods: serve -> StatefulSet applied {t_sts - t0:.2f} s; -> every pod a node "
                  f"(reserving or up) {t_seen - t0:.2f} s; -> every node free {t_free - t0:.2f} s")
            quiet, _ = _phase(bench, args.seconds, 0.0, args.jobs_per_s)
            print(f"no pod events, {args.jobs_per_s:g} jobs/s for {args.seconds:g} s: {quiet}")
            idle = "gpu-0"
            bench.daemon.client.call("POST", f"/api/v1/nodes/{idle}/drain", {"comment": "bench: lag probe"})
            _wait("the probe node idle", lambda: not next(n for n in bench.nodes() if n["name"] == idle)["jobs"])
            t_burst = time.monotonic()
            busy, events = _phase(bench, args.seconds, args.rate, args.jobs_per_s)
            achieved = events / (time.monotonic() - t_burst)
            print(f"{events} pod events at {achieved:.0f}/s, {args.jobs_per_s:g} jobs/s: {busy}")
            # Watch lag: a label the driver must take away again, on a node drained before the
            # burst (it takes no job, so its label must be false), written right after the burst.
            t_write = time.monotonic()
            bench.api.store.patch("pods", NS, idle, {"metadata": {"labels": {"schedd.io/busy": "true"}}})
            _wait("the driver's answer", lambda: "schedd.io/busy" not in
                  (bench.api.store.get("pods", NS, idle)["metadata"].get("labels") or {}))
            print(f"after the burst: a wrong busy label on {idle} taken away in {1000 * (time.monotonic() - t_write):.0f} ms")
            m = bench.metrics()
            for key in ("events", "busy_patches", "applies", "relists", "watch_failures"):
                got = re.search(rf"^schedd_pool_{key}_total (\S+)", m, re.M)
                print(f"  schedd_pool_{key}_total {got[1] if got else '?'}")
        finally:
            bench.close()


if __name__ == "__main__":
    main()
