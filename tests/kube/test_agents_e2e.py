"""End to end on the stand-in: the driver applies the group's StatefulSet, the
simulator makes its pods Running, each pod runs a real ``nodeagent`` (in its
own network namespace when this machine allows), the agents register with a
real ``schedd serve`` through the Service's name and the token Secret, and a
job runs on one of them. A deleted pod's agent gets preStop and SIGTERM, its
replacement (same name, new UID, new address) registers again; a pod scaled
away takes its agent with it and the daemon's disconnect path marks the node.

Here the daemon runs without ``--pool``: it sees agents dial in as a
``static`` pool's would, so the node goes down by the agent's disconnection.
With the pool (the daemon applying and watching the pods itself), see
test_pool_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from schedd.cli.client import Client
from schedd.pool.kube.apply import apply_groups
from schedd.pool.kube.client import KubeApi
from schedd.config import PoolSettings, Settings, load_pool
from tests.integration.conftest import CONFIG, ROOT, wait_for
from tests.kube import netns
from tests.kube.agents import Kubelet
from tests.kube.apiserver import ApiServer
from tests.kube.cluster import Cluster, SimNode
from tests.kube.conftest import NS

SERVICE = f"schedd.{NS}.svc"
POOL = f"""
driver = "kubernetes"
[kubernetes]
namespace = "{NS}"
manage = true
image = "registry.example.com/schedd:test"
token_secret = "schedd-agent-token"

[[groups]]
name = "gpu"
count = 3
gpus = 1
cpus = 1
mem_mb = 2048
switch_user = false
termination_grace_period_s = 30
"""


class Served:
    """``schedd serve`` on ``host`` (the pods' bridge, or loopback), with an agent token made first;
    ``--pool`` when given one (then on a fixed ``port``, the one its Service names)."""

    def __init__(self, tmp: Path, host: str, *, hb_timeout: float = 3.0, grace: float = 1.0,
                 pool: Path | None = None, port: int = 0) -> None:
        self.tmp, self.host, self.pool = tmp, host, pool
        self.config = tmp / "schedd.toml"
        self.config.write_text(CONFIG.format(state=tmp / "state", root=ROOT, hb_timeout=hb_timeout, grace=grace))
        self.log = tmp / "schedd.log"
        self.proc: subprocess.Popen[str] | None = None
        self.port = port

    def token(self, user: str, role: str) -> str:
        out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", user, "--role", role,
                              "--config", str(self.config)], capture_output=True, text=True, check=True, cwd=ROOT)
        return out.stdout.strip()

    def start(self) -> Served:
        argv = [sys.executable, "-m", "schedd.main", "serve", "--config", str(self.config),
                "--listen", f"{self.host}:{self.port}"] + (["--pool", str(self.pool)] if self.pool else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"SCHEDD_URL=(\S+) or https?://[^:]+:(\d+)", line)
        assert m, f"schedd did not start: {line!r}\n{self.log.read_text()}"
        self.client, self.port = Client(m[1]), int(m[2])
        return self

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.client.call("GET", "/api/v1/nodes")["nodes"]}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def network() -> Iterator[netns.PodNetwork | None]:
    """A bridge for the pods' namespaces; None (agents in this namespace) where netns cannot be made."""
    why = netns.available()
    if why:
        print(f"no network namespaces ({why}): agents run in this namespace")
        yield None
        return
    net = netns.PodNetwork().up()
    try:
        yield net
    finally:
        net.close()


def _pool(tmp: Path) -> PoolSettings:
    (tmp / "pool.toml").write_text(POOL)
    return load_pool(tmp / "pool.toml")


async def _apply(kubeconfig: Path, pool: PoolSettings, settings: Settings) -> list[str]:
    api = await KubeApi.connect(NS, str(kubeconfig))
    try:
        return (await apply_groups(api, pool, settings)).applied
    finally:
        await api.close()


def test_statefulset_pods_run_real_agents(tmp_path: Path, apiserver: ApiServer, kubeconfig: Path,
                                          network: netns.PodNetwork | None) -> None:
    host = network.gateway if network is not None else "127.0.0.1"
    daemon = Served(tmp_path, host)
    token = daemon.token("agents", "admin")
    daemon.start()
    kubelet = Kubelet(apiserver, tmp_path / "pods", network=network, daemon_host=host, services=[SERVICE],
                      prestop_cap_s=0.5)
    cluster = Cluster(apiserver, [SimNode("k8s-0", {"nvidia.com/gpu": 2}), SimNode("k8s-1", {"nvidia.com/gpu": 2})],
                      on_running=kubelet.on_running, on_deleted=kubelet.on_deleted)
    k8s = kconfig.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        # What the admin does once: the token Secret (kubectl create secret generic ... --from-literal=token=...).
        apiserver.store.create("secrets", NS, {"metadata": {"name": "schedd-agent-token"}, "type": "Opaque",
                                               "data": {"token": base64.b64encode(token.encode()).decode()}})
        cluster.start()
        settings = Settings(listen=f"0.0.0.0:{daemon.port}", kill_delay_s=1.0)  # the port the Service would expose
        started = time.monotonic()
        assert asyncio.run(_apply(kubeconfig, _pool(tmp_path), settings)) == ["gpu"]

        def registered() -> dict[str, dict[str, Any]] | None:
            assert not kubelet.errors, kubelet.errors
            nodes = {n: v for n, v in daemon.nodes().items() if v["state"] == "up" and v["connected"]}
            return nodes if set(nodes) == {"gpu-0", "gpu-1", "gpu-2"} else None

        nodes = wait_for("3 agents registered\n" + kubelet.logs(), registered)
        print(f"apply -> 3 agents up: {time.monotonic() - started:.2f} s")
        pods = cluster.pods(NS)
        for name, node in nodes.items():
            assert node["ngpus"] == 1 and node["fake_gpus"], node  # the pod's GPU request
            if network is not None:  # each agent dialled from its own pod's address
                assert node["address"] == pods[name]["status"]["podIP"], (name, node["address"])
        if network is not None:
            assert len({pods[n]["status"]["podIP"] for n in nodes}) == 3

        # A real job on a pod's agent, with the pod's one GPU.
        out = tmp_path / "job.out"
        body = {"argv": ["sh", "-c", f'echo "gpus=$CUDA_VISIBLE_DEVICES" > {out}'], "queue": "1xgpu",
                "workdir": str(tmp_path)}
        jid = daemon.client.call("POST", "/api/v1/jobs", body)["job"]["id"]
        job = wait_for(f"job {jid} finished", lambda: (j := daemon.client.call("GET", f"/api/v1/jobs/{jid}")["job"])
                       ["state"] == "finished" and j)
        assert job["exit_status"] == 0 and job["exec_nodes"][0]["node"] in nodes, job
        assert out.read_text() == "gpus=0\n"

        # kubectl delete pod gpu-1: preStop, SIGTERM; the StatefulSet recreates it, its new agent registers.
        (old,) = kubelet.of("gpu-1")
        kclient.CoreV1Api(k8s).delete_namespaced_pod("gpu-1", NS)
        wait_for("the old gpu-1 agent stopped", lambda: old.proc.poll() is not None and old.ended)
        assert old.ended == "SIGTERM", f"it needed SIGKILL:\n{old.log_tail()}"
        if network is not None:
            assert old.net is not None and old.net.pids() == [], "a process of the deleted pod outlived it"
        new = wait_for("gpu-1 recreated", lambda: len(kubelet.of("gpu-1")) == 2 and kubelet.of("gpu-1")[1])
        assert new.uid != old.uid and new.env["SCHEDD_NODE_UID"] == new.uid

        def reregistered() -> bool:
            node = daemon.nodes()["gpu-1"]
            here = new.net is None or node["address"] == new.net.address  # from the new pod's address
            return bool(node["state"] == "up" and node["connected"] and here)

        wait_for("the new gpu-1 registered", reregistered)

        # kubectl scale --replicas=2: gpu-2's pod goes, its agent stops, the daemon takes the node down.
        kclient.AppsV1Api(k8s).patch_namespaced_stateful_set_scale("gpu", NS, {"spec": {"replicas": 2}})
        (last,) = kubelet.of("gpu-2")
        wait_for("gpu-2's agent stopped", lambda: last.proc.poll() is not None and last.ended == "SIGTERM")
        gone = wait_for("gpu-2 down in the daemon", lambda: not (n := daemon.nodes()["gpu-2"])["connected"]
                        and n["state"] != "up" and n)
        print(f"gpu-2 after its pod went: {gone['state']!r} {gone['comment']!r}")
        assert set(cluster.pods(NS)) == {"gpu-0", "gpu-1"}
    finally:
        cluster.stop()
        kubelet.close()
        k8s.close()
        daemon.stop()
