"""pod -> (node phase, reason): one row per way a pod lives or dies."""

from __future__ import annotations

from typing import Any

import pytest

from schedd.pool.kube.podstate import Phase, pod_state

SCHED_MSG = "0/12 nodes are available: 12 Insufficient nvidia.com/gpu."


def _pod(phase: str = "Pending", node: str = "", deleting: bool = False, conditions: list[dict[str, Any]] | None = None,
         waiting: tuple[str, str] | None = None, **status: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {"metadata": {"name": "gpu8-3"}, "spec": {}, "status": {"phase": phase, **status}}
    if node:
        pod["spec"]["nodeName"] = node
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    if conditions:
        pod["status"]["conditions"] = conditions
    if waiting:
        pod["status"]["containerStatuses"] = [{"name": "nodeagent", "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]
    return pod


def _disrupted(reason: str, message: str) -> list[dict[str, Any]]:
    return [{"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message}]


@pytest.mark.parametrize(("pod", "phase", "reason"), [
    (_pod(), Phase.RESERVING, "waiting for the Kubernetes scheduler"),
    (_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": SCHED_MSG}]),
     Phase.RESERVING, SCHED_MSG),
    (_pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]),
     Phase.RESERVING, "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims."),
    (_pod(node="k1", waiting=("ImagePullBackOff", 'Back-off pulling image "reg/agent:9"')),
     Phase.RESERVING, 'ImagePullBackOff: Back-off pulling image "reg/agent:9"'),
    (_pod(node="k1", waiting=("ErrImagePull", "not found")), Phase.RESERVING, "ErrImagePull: not found"),
    (_pod(node="k1", waiting=("ContainerCreating", "")), Phase.RESERVING, "starting on k1: ContainerCreating"),
    (_pod("Running", node="k1"), Phase.READY, "pod running on k1"),
    (_pod("Running", node="k1", waiting=("CrashLoopBackOff", "back-off 5m0s restarting failed container")),
     Phase.DOWN, "agent container CrashLoopBackOff: back-off 5m0s restarting failed container"),
    (_pod("Running", node="k1", deleting=True), Phase.DOWN, "pod deleted"),
    (_pod("Running", node="k1", deleting=True, conditions=_disrupted("PreemptionByScheduler", "preempting for prio")),
     Phase.DOWN, "preempted by Kubernetes: preempting for prio"),
    (_pod("Running", node="k1", deleting=True, conditions=_disrupted("DeletionByTaintManager", "NoExecute taint")),
     Phase.DOWN, "Kubernetes node k1 lost: NoExecute taint"),
    (_pod("Running", node="k1", deleting=True, conditions=_disrupted("EvictionByEvictionAPI", "Eviction API: evicting")),
     Phase.DOWN, "evicted (node drain): Eviction API: evicting"),
    (_pod("Failed", node="k1", reason="Evicted", message="The node was low on resource: memory."),
     Phase.DOWN, "evicted by Kubernetes: The node was low on resource: memory."),
    (_pod("Failed", node="k1", reason="OutOfnvidia.com/gpu", message="Pod was rejected"),
     Phase.DOWN, "pod failed: OutOfnvidia.com/gpu Pod was rejected"),
    (_pod("Succeeded", node="k1"), Phase.DOWN, "agent container exited"),
    (_pod("Unknown", node="k1"), Phase.DOWN, "Kubernetes node k1 unreachable"),
])
def test_pod_state(pod: dict[str, Any], phase: Phase, reason: str) -> None:
    assert pod_state(pod) == (phase, reason)
