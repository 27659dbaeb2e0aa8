"""The Kubernetes pool end to end: a real ``schedd serve --pool`` runs the driver
against the stand-in API server, the simulator turns its StatefulSet into pods,
and each Running pod runs a real ``nodeagent`` (in its own network namespace
where this machine allows).

- from nothing: the daemon applies the group, 3 pods become 3 free nodes, a job runs;
- a pod deleted mid-job: its node is down at once, from the watch event (the
  heartbeat timeout is 60 s here, so nothing else could explain it), the job is
  requeued and finishes on another node, the recreated pod rejoins;
- the daemon restarted: one StatefulSet still, the nodes reconciled, a running job kept;
- ``manage = false``: the daemon only watches; a pod that fits nowhere is a node
  ``reserving`` with the scheduler's words in qnodes and /metrics, until it fits.

Times are printed (``-s``) for bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from schedd.config import Settings, load_pool
from tests.integration.conftest import ROOT, wait_for
from tests.kube import netns
from tests.kube.agents import Kubelet
from tests.kube.apiserver import ApiServer
from tests.kube.cluster import Cluster, SimNode
from tests.kube.conftest import NS
from tests.kube.test_agents_e2e import SERVICE, Served, _apply, network  # noqa: F401 (fixture)

NODES = {"gpu-0", "gpu-1", "gpu-2"}


def pool_toml(kubeconfig: Path, port: int, manage: bool) -> str:
    return f"""
driver = "kubernetes"
[kubernetes]
namespace = "{NS}"
manage = {str(manage).lower()}
image = "registry.example.com/schedd:test"
server_url = "http://{SERVICE}:{port}"
kubeconfig = "{kubeconfig}"

[[groups]]
name = "gpu"
count = 3
gpus = 1
cpus = 1
mem_mb = 2048
switch_user = false
termination_grace_period_s = 30
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _poll_tight(pred: Any, timeout_s: float = 30.0) -> Any:
    """Like wait_for, but every 5 ms: the time it returns at is what the bench reports."""
    end = time.monotonic() + timeout_s
    while not (value := pred()):
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)
    return value


@dataclass
class Pool:
    apiserver: ApiServer
    daemon: Served
    kubelet: Kubelet
    cluster: Cluster
    k8s: Any  # the official client, as kubectl would act

    def nodes(self) -> dict[str, dict[str, Any]]:
        return self.daemon.nodes()

    def free(self) -> dict[str, dict[str, Any]] | None:
        assert not self.kubelet.errors, self.kubelet.errors
        nodes = {n: v for n, v in self.nodes().items() if v["state"] == "up" and v["connected"]}
        return nodes if set(nodes) == NODES else None

    def job(self, jid: str) -> dict[str, Any]:
        return dict(self.daemon.client.call("GET", f"/api/v1/jobs/{jid}")["job"])

    def submit(self, script: str, workdir: Path) -> str:
        body = {"argv": ["sh", "-c", script], "queue": "1xgpu", "workdir": str(workdir)}
        return str(self.daemon.client.call("POST", "/api/v1/jobs", body)["job"]["id"])

    def statefulsets(self) -> list[dict[str, Any]]:
        items, _ = self.apiserver.store.list("statefulsets", NS)
        return items

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.daemon.host}:{self.daemon.port}/metrics", timeout=10) as r:
            return str(r.read().decode())


@pytest.fixture
def make_pool(tmp_path: Path, apiserver: ApiServer, kubeconfig: Path,
              network: netns.PodNetwork | None) -> Iterator[Any]:
    made: list[Pool] = []

    def make(manage: bool, capacity: list[int]) -> Pool:
        host = network.gateway if network is not None else "127.0.0.1"
        port = _free_port(host)
        (tmp_path / "pool.toml").write_text(pool_toml(kubeconfig, port, manage))
        daemon = Served(tmp_path, host, hb_timeout=60.0, grace=30.0, pool=tmp_path / "pool.toml", port=port)
        token = daemon.token("agents", "admin")
        apiserver.store.create("secrets", NS, {"metadata": {"name": "schedd-agent-token"}, "type": "Opaque",
                                               "data": {"token": base64.b64encode(token.encode()).decode()}})
        kubelet = Kubelet(apiserver, tmp_path / "pods", network=network, daemon_host=host, services=[SERVICE],
                          prestop_cap_s=0.5)
        cluster = Cluster(apiserver, [SimNode(f"k8s-{i}", {"nvidia.com/gpu": n}) for i, n in enumerate(capacity)],
                          on_running=kubelet.on_running, on_deleted=kubelet.on_deleted)
        pool = Pool(apiserver, daemon, kubelet, cluster, kconfig.new_client_from_config(str(kubeconfig)))  # type: ignore[no-untyped-call]
        made.append(pool)
        cluster.start()
        return pool

    yield make
    for p in made:
        p.cluster.stop()
        p.kubelet.close()
        p.k8s.close()
        p.daemon.stop()


def test_a_managed_pool_comes_up_loses_a_pod_mid_job_and_survives_a_restart(tmp_path: Path, make_pool: Any) -> None:
    pool: Pool = make_pool(manage=True, capacity=[2, 2])
    t0 = time.monotonic()
    pool.daemon.start()
    free = wait_for("3 pods -> 3 free nodes\n" + pool.kubelet.logs(), pool.free)
    print(f"\nserve (apply) -> 3 nodes free: {time.monotonic() - t0:.2f} s")
    (sts,) = pool.statefulsets()
    assert sts["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "schedd" and sts["spec"]["replicas"] == 3
    assert all(n["ngpus"] == 1 and n["pod"]["phase"] == "ready" for n in free.values())

    # A job that runs until its pod is deleted; its second attempt finds the marker and ends at once.
    marker, out = tmp_path / "marker", tmp_path / "job.out"
    jid = pool.submit(f'if [ -e {marker} ]; then echo "second on $(hostname)" >> {out}; exit 0; fi; '
                      f'touch {marker}; exec sleep 120', tmp_path)
    job = wait_for(f"job {jid} running", lambda: (j := pool.job(jid))["state"] == "running" and marker.exists() and j)
    victim, attempt = job["exec_nodes"][0]["node"], job["attempt"]
    old_uid = pool.nodes()[victim]["pod"]["uid"]

    kclient.CoreV1Api(pool.k8s).delete_namespaced_pod(victim, NS)
    t_delete = time.monotonic()  # the API server has the deletion (the client's own call takes ~0.4 s here)
    requeued = _poll_tight(lambda: (j := pool.job(jid))["attempt"] > attempt and j)  # a close measure, not a guess
    t_requeued = time.monotonic()
    node = pool.nodes()[victim]
    assert node["state"] in ("down", "reserving"), node  # out of service at once, not 60 s later
    assert "pod deleted" in requeued["comment"] or "pod deleted" in node["comment"], (requeued["comment"], node)
    done = wait_for("the job finished elsewhere", lambda: (j := pool.job(jid))["state"] == "finished" and j)
    assert done["exit_status"] == 0 and done["exec_nodes"][0]["node"] != victim, done
    back = wait_for(f"{victim} recreated and rejoined", lambda: (n := pool.nodes()[victim])["state"] == "up"
                    and n["connected"] and n["pod"]["uid"] != old_uid and n)
    t_back = time.monotonic()
    print(f"pod deletion accepted -> job requeued: {t_requeued - t_delete:.3f} s; -> node {victim} free again: "
          f"{t_back - t_delete:.2f} s (heartbeat timeout 60 s)")
    assert back["comment"] == ""  # the new incarnation speaks for itself
    assert t_requeued - t_delete < 5.0  # ms in practice; bounded loosely for a loaded 2-core machine

    # A restart of the daemon keeps the job that runs and creates nothing twice.
    go = tmp_path / "go"
    jid2 = pool.submit(f"while [ ! -e {go} ]; do sleep 0.05; done; echo kept", tmp_path)
    job2 = wait_for(f"job {jid2} running", lambda: (j := pool.job(jid2))["state"] == "running" and j)
    pool.daemon.stop()
    t_restart = time.monotonic()
    pool.daemon.start()
    wait_for("the nodes reconciled after the restart", pool.free)
    print(f"daemon restart -> 3 nodes free again: {time.monotonic() - t_restart:.2f} s")
    (again,) = pool.statefulsets()
    assert again["metadata"]["uid"] == sts["metadata"]["uid"]
    after = pool.job(jid2)
    assert (after["state"], after["attempt"]) == ("running", job2["attempt"]), after
    go.touch()
    end = wait_for("the kept job finished", lambda: (j := pool.job(jid2))["state"] == "finished" and j)
    assert (end["exit_status"], end["attempt"]) == (0, job2["attempt"]), end


def test_a_watch_only_pool_shows_why_a_pod_is_pending(tmp_path: Path, make_pool: Any, kubeconfig: Path) -> None:
    pool: Pool = make_pool(manage=False, capacity=[1, 1])
    pool.daemon.start()
    wait_for("the pod watch listed", lambda: re.search(r"^schedd_pool_relists_total [1-9]", pool.metrics(), re.M))
    assert pool.statefulsets() == []  # manage = false: nothing applied
    assert not [c for c in pool.apiserver.calls if c[0] not in ("get", "list", "watch")]

    # GitOps applies the group; 2 of its 3 pods fit.
    settings = Settings(listen=f"0.0.0.0:{pool.daemon.port}", kill_delay_s=1.0)
    assert asyncio.run(_apply(kubeconfig, load_pool(tmp_path / "pool.toml"), settings)) == ["gpu"]
    why = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."

    def pending() -> str | None:
        nodes = pool.nodes()
        up = [n for n, v in nodes.items() if v["state"] == "up" and v["connected"]]
        waiting = [n for n, v in nodes.items() if v["state"] == "reserving" and v["comment"] == why]
        return waiting[0] if len(up) == 2 and len(waiting) == 1 else None

    name = wait_for("2 nodes free and 1 reserving", pending)
    env = os.environ | {"SCHEDD_URL": pool.daemon.client.url}
    listed = subprocess.run([sys.executable, "-m", "schedd.cli.qnodes", "-l"], capture_output=True, text=True,
                            env=env, cwd=ROOT, check=True).stdout
    assert re.search(rf"^{name}\s+reserving {re.escape(why)}$", listed, re.M), listed
    metrics = pool.metrics()
    assert 'schedd_pool_pods{group="gpu",phase="reserving",reason="Unschedulable"} 1.0' in metrics, metrics
    assert 'schedd_pool_pods{group="gpu",phase="ready",reason="Running"} 2.0' in metrics
    assert 'schedd_pool_size{driver="kubernetes",group="gpu"} 3.0' in metrics

    # The cluster grows: the pod is scheduled, its agent registers, the node is free.
    pool.cluster.nodes["k8s-1"].capacity["nvidia.com/gpu"] = 2
    pool.cluster.kick()
    wait_for(f"{name} free once it fits", pool.free)
    assert not [c for c in pool.apiserver.calls if c[0] not in ("get", "list", "watch")
                and c[1] != "statefulsets"]  # only the test's apply wrote
    assert {(v, r) for v, r in pool.apiserver.verbs() if r == "pods"} <= _allowed(manage=False)


def _allowed(manage: bool) -> set[tuple[str, str]]:
    from schedd.pool.kube.manifests import role_rules

    return {(v, r) for rule in role_rules(manage) for r in rule["resources"] for v in rule["verbs"]}


def test_scale_down_drains_first_kills_nothing_and_busy_pods_are_labelled(tmp_path: Path, make_pool: Any) -> None:
    pool: Pool = make_pool(manage=True, capacity=[2, 2])
    pool.daemon.start()
    wait_for("3 pods -> 3 free nodes\n" + pool.kubelet.logs(), pool.free)

    def labels(name: str) -> dict[str, str] | None:
        try:
            return dict(pool.apiserver.store.get("pods", NS, name)["metadata"].get("labels") or {})
        except Exception:  # the pod is gone
            return None

    def busy() -> set[str]:
        return {n for n in NODES if (labels(n) or {}).get("schedd.io/busy") == "true"}

    # One job per node, each running until its own file appears.
    jids = [pool.submit(f"while [ ! -e {tmp_path}/go-{i} ]; do sleep 0.05; done", tmp_path) for i in range(3)]
    running = wait_for("3 jobs running", lambda: all((j := pool.job(jid))["state"] == "running" for jid in jids)
                       and {pool.job(jid)["exec_nodes"][0]["node"]: (i, pool.job(jid)) for i, jid in enumerate(jids)})
    assert set(running) == NODES
    wait_for("every busy pod labelled schedd.io/busy=true", lambda: busy() == NODES)

    # Down to 1: gpu-1 and gpu-2 drain at once; nothing is removed while their jobs run.
    answer = pool.daemon.client.call("POST", "/api/v1/pool/gpu/scale", {"count": 1})["pool"]
    assert (answer["count"], answer["replicas"], answer["draining"]) == (1, 3, ["gpu-1", "gpu-2"]), answer
    nodes = pool.nodes()
    assert [nodes[n]["state"] for n in ("gpu-0", "gpu-1", "gpu-2")] == ["up", "draining", "draining"], nodes
    extra = pool.submit("true", tmp_path)  # must not land on a draining node
    (sts,) = pool.statefulsets()
    assert sts["spec"]["replicas"] == 3

    # gpu-2's job ends: the StatefulSet goes to 2, gpu-1's job runs on.
    (tmp_path / f"go-{running['gpu-2'][0]}").touch()
    wait_for("replicas 2 once gpu-2 is empty", lambda: pool.statefulsets()[0]["spec"]["replicas"] == 2)
    wait_for("gpu-2's pod gone", lambda: labels("gpu-2") is None)
    wait_for("gpu-2 down, removed by scale-down",
             lambda: (n := pool.nodes()["gpu-2"])["state"] == "down" and n["comment"] == "removed by scale-down")
    assert pool.job(running["gpu-1"][1]["id"])["state"] == "running"
    assert pool.statefulsets()[0]["spec"]["replicas"] == 2
    # gpu-1's job ends: down to 1. The extra job ran on gpu-0 once it was free.
    (tmp_path / f"go-{running['gpu-1'][0]}").touch()
    wait_for("replicas 1 once gpu-1 is empty", lambda: pool.statefulsets()[0]["spec"]["replicas"] == 1)
    wait_for("gpu-1's pod gone", lambda: labels("gpu-1") is None)
    assert busy() == {"gpu-0"}
    (tmp_path / f"go-{running['gpu-0'][0]}").touch()
    for jid in [*jids, extra]:  # each in its first attempt: nothing was killed or requeued
        end = wait_for(f"job {jid} finished", lambda: (j := pool.job(jid))["state"] == "finished" and j)
        assert (end["exit_status"], end["attempt"]) == (0, 0), end
    assert pool.job(extra)["exec_nodes"][0]["node"] == "gpu-0"
    wait_for("idle pods unlabelled", lambda: busy() == set())

    # Up to 3 again: at once, the new pods' agents register and the nodes are free.
    pool.daemon.client.call("POST", "/api/v1/pool/gpu/scale", {"count": 3})
    wait_for("3 free nodes again\n" + pool.kubelet.logs(), pool.free)
    assert pool.statefulsets()[0]["spec"]["replicas"] == 3
    metrics = pool.metrics()
    patches = int(float(re.search(r"^schedd_pool_busy_patches_total (\S+)", metrics, re.M)[1]))  # type: ignore[index]
    assert 6 <= patches <= 8, patches  # one per busy<->idle transition (+ a replay of a stale watch event at most)

    # RBAC: every call the real daemon made is allowed by the rendered Role (manage = true).
    made = pool.apiserver.verbs()
    assert {("patch", "pods"), ("patch", "statefulsets"), ("watch", "pods")} <= made, made
    assert made - _allowed(manage=True) == set(), f"calls the Role does not allow: {made - _allowed(manage=True)}"
    assert {ns for _, _, ns in pool.apiserver.calls} == {NS}
