"""The simulator behaves like the parts of a cluster the driver relies on:
StatefulSet replicas become named pods, pods that fit nowhere stay Pending with
the scheduler's message, and deletions go through the kubelet's hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.apiserver import ApiServer
from tests.kube.cluster import Cluster, SimNode
from tests.kube.conftest import NS

pytestmark = pytest.mark.asyncio


def _sts(name: str, replicas: int, gpus: int, image: str = "agent:1") -> dict[str, Any]:
    labels = {"app": name}
    return {"metadata": {"name": name}, "spec": {
        "replicas": replicas, "serviceName": name, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [
            {"name": "agent", "image": image,
             "resources": {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}}}]}}}}


@pytest.fixture
def events() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def cluster(apiserver: ApiServer, events: list[tuple[str, str]]) -> Iterator[Cluster]:
    c = Cluster(apiserver, [SimNode(f"k8s-{i}") for i in range(3)],
                on_running=lambda pod: events.append(("running", pod["metadata"]["name"])),
                on_deleted=lambda pod: events.append(("deleted", pod["metadata"]["name"])))
    c.start()
    yield c
    c.stop()


def _phases(cluster: Cluster) -> dict[str, str]:
    return {n: p["status"]["phase"] for n, p in cluster.pods(NS).items()}


async def test_replicas_become_pods_and_the_ones_that_do_not_fit_stay_pending(
        apiserver: ApiServer, cluster: Cluster, events: list[tuple[str, str]]) -> None:
    apiserver.store.create("statefulsets", NS, _sts("gpu8", 4, 8))
    await apiserver.store.wait_until(lambda: len(events) == 3 and len(_phases(cluster)) == 4)
    assert _phases(cluster) == {"gpu8-0": "Running", "gpu8-1": "Running", "gpu8-2": "Running", "gpu8-3": "Pending"}
    pending = cluster.pods(NS)["gpu8-3"]
    (cond,) = pending["status"]["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert cond["message"] == "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    (event,) = apiserver.store.list("events", NS)[0]
    assert (event["reason"], event["message"], event["involvedObject"]["name"]) == ("FailedScheduling", cond["message"], "gpu8-3")
    await apiserver.store.wait_until(
        lambda: apiserver.store.get("statefulsets", NS, "gpu8").get("status", {}).get("readyReplicas") == 3)


async def test_scale_down_removes_the_highest_ordinal_and_a_deleted_pod_comes_back_with_a_new_uid(
        apiserver: ApiServer, cluster: Cluster, events: list[tuple[str, str]]) -> None:
    apiserver.store.create("statefulsets", NS, _sts("g", 2, 1))
    await apiserver.store.wait_until(lambda: list(_phases(cluster).values()) == ["Running", "Running"])
    old_uid = cluster.pods(NS)["g-0"]["metadata"]["uid"]
    apiserver.store.delete("pods", NS, "g-0")
    await apiserver.store.wait_until(lambda: cluster.pods(NS).get("g-0", {}).get("metadata", {}).get("uid", old_uid) != old_uid
                                     and _phases(cluster).get("g-0") == "Running")
    assert ("deleted", "g-0") in events
    apiserver.store.patch("statefulsets", NS, "g", {"spec": {"replicas": 1}})
    await apiserver.store.wait_until(lambda: list(cluster.pods(NS)) == ["g-0"])
    assert events.count(("deleted", "g-1")) == 1


async def test_selector_mismatch_and_image_pull_errors_keep_pods_pending(apiserver: ApiServer, cluster: Cluster) -> None:
    cluster.fail_image("agent:bad")
    apiserver.store.create("statefulsets", NS, _sts("bad", 1, 1, image="agent:bad"))
    sel = _sts("sel", 1, 1)
    sel["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "h100"}
    cluster.nodes["k8s-0"].labels["gpu"] = "h100"
    cluster.nodes["k8s-0"].capacity["nvidia.com/gpu"] = 0
    apiserver.store.create("statefulsets", NS, sel)

    def waiting() -> str:
        statuses = cluster.pods(NS).get("bad-0", {}).get("status", {}).get("containerStatuses") or [{}]
        return str(statuses[0].get("state", {}).get("waiting", {}).get("reason", ""))

    def sel_message() -> str:
        conds = cluster.pods(NS).get("sel-0", {}).get("status", {}).get("conditions") or [{}]
        return str(conds[0].get("message", ""))

    await apiserver.store.wait_until(lambda: waiting() == "ErrImagePull" and sel_message() != "")
    assert sel_message() == ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, "
                             "2 node(s) didn't match Pod's node affinity/selector.")
    assert _phases(cluster) == {"bad-0": "Pending", "sel-0": "Pending"}


async def test_lost_node_pods_are_evicted_and_rescheduled_elsewhere(apiserver: ApiServer, cluster: Cluster) -> None:
    apiserver.store.create("statefulsets", NS, _sts("g", 1, 8))
    await apiserver.store.wait_until(lambda: _phases(cluster) == {"g-0": "Running"})
    first = cluster.pods(NS)["g-0"]
    cluster.lose_node(first["spec"]["nodeName"])
    await apiserver.store.wait_until(lambda: cluster.pods(NS).get("g-0", first)["metadata"]["uid"] != first["metadata"]["uid"]
                                     and _phases(cluster) == {"g-0": "Running"})
    assert cluster.pods(NS)["g-0"]["spec"]["nodeName"] != first["spec"]["nodeName"]
