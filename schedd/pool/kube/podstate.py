"""Pod -> (virtual node phase, the reason a human needs). Pure; table-tested.

The reason is Kubernetes' own words wherever it has some (the scheduler's
``0/12 nodes are available: 12 Insufficient nvidia.com/gpu.``, the kubelet's
image pull error, the DisruptionTarget condition of an eviction or
preemption), prefixed with what it means for the node. A pod being deleted is
already ``down``: the daemon must stop placing work there at once and let the
grace period warn the jobs it has.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["Phase", "is_final", "pod_code", "pod_state"]


class Phase(str, enum.Enum):
    """What a pod means for its virtual node."""

    RESERVING = "reserving"  # Kubernetes has not started it yet (scheduling, pulling, creating)
    READY = "ready"  # running: the node is usable once its agent registers
    DOWN = "down"  # deleted, evicted, preempted, failed or on a lost Kubernetes node


_IMAGE_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                           "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
_DISRUPTIONS = {
    "PreemptionByScheduler": "preempted by Kubernetes",
    "DeletionByTaintManager": "Kubernetes node {node} lost",
    "EvictionByEvictionAPI": "evicted (node drain)",
    "DeletionByPodGC": "Kubernetes node {node} gone",
    "TerminationByKubelet": "terminated by the kubelet",
}


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in pod.get("status", {}).get("conditions") or [] if c.get("type") == type_), {})


def _waiting(pod: dict[str, Any]) -> tuple[str, str]:
    for c in pod.get("status", {}).get("containerStatuses") or []:
        if waiting := (c.get("state") or {}).get("waiting"):
            return str(waiting.get("reason", "")), str(waiting.get("message", ""))
    return "", ""


def _join(head: str, detail: str) -> str:
    return f"{head}: {detail}" if detail else head


def pod_state(pod: dict[str, Any]) -> tuple[Phase, str]:
    """The node phase of this pod and why.

    >>> pod_state({"metadata": {}, "spec": {"nodeName": "k1"}, "status": {"phase": "Running"}})
    (<Phase.READY: 'ready'>, 'pod running on k1')
    """
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    node = spec.get("nodeName") or "?"
    phase = status.get("phase", "Pending")
    if meta.get("deletionTimestamp"):
        cond = _condition(pod, "DisruptionTarget")
        if cond.get("status") == "True" and (head := _DISRUPTIONS.get(cond.get("reason", ""))):
            return Phase.DOWN, _join(head.format(node=node), cond.get("message", ""))
        return Phase.DOWN, "pod deleted"
    if phase == "Failed":
        if status.get("reason") == "Evicted":
            return Phase.DOWN, _join("evicted by Kubernetes", status.get("message", ""))
        return Phase.DOWN, _join("pod failed", " ".join(filter(None, (status.get("reason"), status.get("message")))))
    if phase == "Succeeded":
        return Phase.DOWN, "agent container exited"
    if phase == "Unknown":
        return Phase.DOWN, f"Kubernetes node {node} unreachable"
    reason, message = _waiting(pod)
    if phase == "Running":
        if reason == "CrashLoopBackOff":
            return Phase.DOWN, _join("agent container CrashLoopBackOff", message)
        return Phase.READY, f"pod running on {node}"
    if reason in _IMAGE_ERRORS:
        return Phase.RESERVING, _join(reason, message)
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False":
        return Phase.RESERVING, scheduled.get("message") or scheduled.get("reason") or "unschedulable"
    if spec.get("nodeName"):
        return Phase.RESERVING, _join(f"starting on {node}", reason)
    return Phase.RESERVING, "waiting for the Kubernetes scheduler"


def is_final(pod: dict[str, Any]) -> bool:
    """The pod can never run again: being deleted, or Failed / Succeeded (its
    StatefulSet makes a new pod, with a new UID). Not so for Unknown (its
    Kubernetes node may come back) nor a crash loop (the container restarts)."""
    return bool(pod.get("metadata", {}).get("deletionTimestamp")) or \
        pod.get("status", {}).get("phase") in ("Failed", "Succeeded")


def pod_code(pod: dict[str, Any]) -> str:
    """Kubernetes' one-word reason, a bounded label for metrics (the reason text names nodes).

    >>> pod_code({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
    ...                                                          "reason": "Unschedulable"}]}})
    'Unschedulable'
    """
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    if meta.get("deletionTimestamp"):
        cond = _condition(pod, "DisruptionTarget")
        return str(cond.get("reason")) if cond.get("status") == "True" and cond.get("reason") else "Deleting"
    phase = status.get("phase", "Pending")
    if phase == "Failed":
        return str(status.get("reason") or "Failed")
    if phase in ("Succeeded", "Unknown"):
        return str(phase)
    reason, _ = _waiting(pod)
    if phase == "Running":
        return reason if reason == "CrashLoopBackOff" else "Running"
    if reason:
        return reason
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False":
        return str(scheduled.get("reason") or "Unschedulable")
    return "ContainerCreating" if pod.get("spec", {}).get("nodeName") else "Scheduling"
