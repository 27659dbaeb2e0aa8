"""A controller-and-kubelet simulator beside the stand-in API server.

It plays the parts of a cluster that the driver never calls but always sees:

- the StatefulSet controller: replicas become pods ``<sts>-<ordinal>`` (all at
  once, as ``podManagementPolicy: Parallel``), extra ordinals are deleted,
  a deleted or Failed pod is recreated under the same name with a new UID, and
  the StatefulSet's status counts them;
- the scheduler: simulated Kubernetes nodes with a GPU capacity and labels; a
  pod that fits nowhere stays Pending with ``PodScheduled=False``,
  ``Unschedulable`` and an Event in the real scheduler's words
  (``0/3 nodes are available: 3 Insufficient nvidia.com/gpu.``);
- the kubelet: a bound pod becomes Running (or stays Pending with an image pull
  error); a terminating pod is removed once :attr:`on_deleted` returns.

The hooks :attr:`on_running` and :attr:`on_deleted` are where a real
``nodeagent`` per pod is started and stopped (preStop, SIGTERM, SIGKILL) once
the daemon integration lands. Fault knobs: :meth:`evict`, :meth:`preempt`,
:meth:`lose_node`, :meth:`fail_image`. Runs as a task on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tests.kube.apiserver import ApiServer
from tests.kube.store import ApiError, Obj, now_rfc3339

__all__ = ["Cluster", "SimNode"]

Hook = Callable[[Obj], Awaitable[None] | None]


@dataclass
class SimNode:
    """A Kubernetes node as the scheduler sees it: allocatable extended resources and labels."""

    name: str
    capacity: dict[str, int] = field(default_factory=lambda: {"nvidia.com/gpu": 8})
    labels: dict[str, str] = field(default_factory=dict)
    ready: bool = True


def _requests(pod: Obj) -> Counter[str]:
    need: Counter[str] = Counter()
    for c in pod["spec"].get("containers", []):
        res = c.get("resources") or {}
        for name, amount in (res.get("limits") or res.get("requests") or {}).items():
            if "/" in name:  # extended resources (GPUs); CPU and memory are not simulated
                need[name] += int(amount)
    return need


def _ordinal(name: str, sts: str) -> int | None:
    head, _, tail = name.rpartition("-")
    return int(tail) if head == sts and tail.isdigit() else None


def _condition(pod: Obj, type_: str) -> Obj | None:
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == type_), None)


class Cluster:
    """Reconciles StatefulSets, schedules and runs pods, on every write to the store."""

    def __init__(self, server: ApiServer, nodes: list[SimNode], on_running: Hook | None = None,
                 on_deleted: Hook | None = None) -> None:
        self.server, self.store = server, server.store
        self.nodes = {n.name: n for n in nodes}
        self.on_running, self.on_deleted = on_running, on_deleted
        self.bad_images: dict[str, tuple[str, str]] = {}
        self._finishing: set[str] = set()
        self._future: Future[None] | None = None
        self._ended = threading.Event()  # set when the reconcile task has really ended
        self._ip = 0

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.store.kubelet_finalizes = True
        self._ended.clear()
        self._future = self.server.call(self._run())

    def stop(self) -> None:
        """Stop reconciling, and return only once no pass can write any more: the
        cancellation lands on the server's loop, where a pass may be running (and,
        say, recreate a pod the test is about to delete)."""
        if self._future is not None:
            self._future.cancel()
            if not self._ended.wait(10.0):
                raise TimeoutError("the stand-in cluster did not stop within 10 s")
            self._future = None

    async def _run(self) -> None:
        w = self.store.changes(asyncio.get_running_loop())
        try:
            while True:
                self.reconcile()
                entry = await w.queue.get()
                while not w.queue.empty():  # coalesce a burst of writes into one pass
                    entry = w.queue.get_nowait()
                del entry
        finally:
            self.store.unwatch(w)
            self._ended.set()

    def kick(self) -> None:
        """Reconcile soon (after a change that is not a write, e.g. a node's capacity)."""
        self.server.loop.call_soon_threadsafe(self.reconcile)

    # -- one pass -------------------------------------------------------------------------

    def reconcile(self) -> None:
        with self.store.lock:
            for (r, ns, name), sts in list(self.store.objects.items()):
                if r == "statefulsets":
                    self._statefulset(ns, sts)
            pods = [(ns, o) for (r, ns, _), o in list(self.store.objects.items()) if r == "pods"]
            for ns, pod in pods:
                self._kubelet(ns, pod)
            for ns, pod in pods:
                if not pod["spec"].get("nodeName") and "deletionTimestamp" not in pod["metadata"]:
                    self._schedule(ns, pod)

    def _pods_of(self, ns: str, sts: Obj) -> dict[int, Obj]:
        uid = sts["metadata"]["uid"]
        out = {}
        for (r, n, name), pod in self.store.objects.items():
            if r == "pods" and n == ns and any(o.get("uid") == uid for o in pod["metadata"].get("ownerReferences", [])):
                if (i := _ordinal(name, sts["metadata"]["name"])) is not None:
                    out[i] = pod
        return out

    def _statefulset(self, ns: str, sts: Obj) -> None:
        name, replicas = sts["metadata"]["name"], sts["spec"].get("replicas", 1)
        pods = self._pods_of(ns, sts)
        for i, pod in sorted(pods.items(), reverse=True):
            terminating = "deletionTimestamp" in pod["metadata"]
            if not terminating and (i >= replicas or pod["status"].get("phase") == "Failed"):
                self.store.delete("pods", ns, pod["metadata"]["name"])
        for i in range(replicas):
            if i not in pods:
                self.store.create("pods", ns, self._pod_for(sts, i))
        pods = self._pods_of(ns, sts)
        ready = sum(1 for p in pods.values() if (_condition(p, "Ready") or {}).get("status") == "True")
        status = {"observedGeneration": sts["metadata"].get("generation", 1), "replicas": len(pods),
                  "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": len(pods)}
        if sts.get("status") != status:
            self.store.patch("statefulsets", ns, name, {"status": status}, status_only=True)

    def _pod_for(self, sts: Obj, i: int) -> Obj:
        name = sts["metadata"]["name"]
        template: Obj = copy.deepcopy(sts["spec"]["template"])
        meta = template.setdefault("metadata", {})
        meta["name"] = f"{name}-{i}"
        meta["labels"] = dict(meta.get("labels") or {}) | {"statefulset.kubernetes.io/pod-name": f"{name}-{i}",
                                                            "apps.kubernetes.io/pod-index": str(i)}
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                    "uid": sts["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        template["spec"] |= {"hostname": f"{name}-{i}", "subdomain": sts["spec"].get("serviceName", name)}
        template["status"] = {"phase": "Pending"}
        return template

    def _schedule(self, ns: str, pod: Obj) -> None:
        need = _requests(pod)
        selector = pod["spec"].get("nodeSelector") or {}
        used: dict[str, Counter[str]] = {n: Counter() for n in self.nodes}
        for (r, _, _), other in self.store.objects.items():
            node = other.get("spec", {}).get("nodeName") if r == "pods" else None
            if node in used and other["status"].get("phase") not in ("Succeeded", "Failed"):
                used[node] += _requests(other)
        reasons: Counter[str] = Counter()
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            if not node.ready:
                reasons["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"] += 1
            elif any(node.labels.get(k) != v for k, v in selector.items()):
                reasons["node(s) didn't match Pod's node affinity/selector"] += 1
            elif short := [res for res, n in need.items() if node.capacity.get(res, 0) - used[node.name][res] < n]:
                reasons.update(f"Insufficient {res}" for res in short)
            else:
                self._bind(ns, pod, node)
                return
        if not self.nodes:
            message = "no nodes available to schedule pods"
        else:
            parts = sorted(f"{count} {reason}" for reason, count in reasons.items())
            message = f"0/{len(self.nodes)} nodes are available: {', '.join(parts)}."
        if (_condition(pod, "PodScheduled") or {}).get("message") == message:
            return
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                "lastTransitionTime": now_rfc3339()}
        self.store.patch("pods", ns, pod["metadata"]["name"], {"status": {"conditions": [cond]}}, status_only=True)
        self._event(ns, pod, "Warning", "FailedScheduling", message)

    def _event(self, ns: str, pod: Obj, type_: str, reason: str, message: str) -> None:
        self.store.create("events", ns, {
            "metadata": {"generateName": f"{pod['metadata']['name']}."},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"],
                               "uid": pod["metadata"]["uid"]},
            "type": type_, "reason": reason, "message": message, "source": {"component": "default-scheduler"},
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1})

    def _bind(self, ns: str, pod: Obj, node: SimNode) -> None:
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = node.name
        new["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]
        self.store.replace("pods", ns, pod["metadata"]["name"], new, check_rv=False)

    def _kubelet(self, ns: str, pod: Obj) -> None:
        name, node = pod["metadata"]["name"], pod["spec"].get("nodeName")
        if not node:
            return
        if "deletionTimestamp" in pod["metadata"]:
            key = pod["metadata"]["uid"]
            if key not in self._finishing:
                self._finishing.add(key)
                asyncio.get_running_loop().create_task(self._finish(ns, pod))
            return
        if pod["status"].get("phase") != "Pending":
            return
        image = pod["spec"]["containers"][0].get("image", "")
        if image in self.bad_images:
            reason, message = self.bad_images[image]
            waiting = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}}} for c in pod["spec"]["containers"]]
            if pod["status"].get("containerStatuses") != waiting:
                self.store.patch("pods", ns, name, {"status": {"containerStatuses": waiting}}, status_only=True)
            return
        self._ip += 1
        now = now_rfc3339()
        conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        status = {"phase": "Running", "conditions": conditions, "podIP": f"10.244.0.{self._ip % 250 + 2}",
                  "hostIP": "192.168.0.1", "startTime": now,
                  "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "ready": True, "restartCount": 0,
                                         "started": True, "state": {"running": {"startedAt": now}},
                                         # required strings in the API (the official client refuses a status without them)
                                         "imageID": f"sim://{c.get('image', '')}",
                                         "containerID": f"sim://{pod['metadata']['uid']}-{c['name']}"}
                                        for c in pod["spec"]["containers"]]}
        running = self.store.patch("pods", ns, name, {"status": status}, status_only=True)
        if self.on_running is not None:
            asyncio.get_running_loop().create_task(self._call(self.on_running, running))

    async def _finish(self, ns: str, pod: Obj) -> None:
        """The kubelet's part of a deletion: the hook (preStop, signals), then the pod is gone."""
        try:
            node = self.nodes.get(pod["spec"].get("nodeName", ""))
            if self.on_deleted is not None and node is not None and node.ready:
                await self._call(self.on_deleted, pod)
            with contextlib.suppress(ApiError):
                current = self.store.get("pods", ns, pod["metadata"]["name"])
                if current["metadata"]["uid"] == pod["metadata"]["uid"]:
                    self.store.remove("pods", ns, pod["metadata"]["name"])
        finally:
            self._finishing.discard(pod["metadata"]["uid"])

    @staticmethod
    async def _call(hook: Hook, pod: Obj) -> None:
        result = hook(pod)
        if inspect.isawaitable(result):
            await result

    # -- fault knobs (callable from any thread) ---------------------------------------------

    def fail_image(self, image: str, reason: str = "ErrImagePull", message: str = "") -> None:
        """Pods of this image stay Pending with a waiting container, as when the registry refuses."""
        self.bad_images[image] = (reason, message or f'failed to pull and unpack image "{image}": not found')
        self.kick()

    def evict(self, ns: str, name: str, message: str = "The node was low on resource: memory.") -> None:
        """The kubelet's node-pressure eviction: the pod Fails with reason Evicted (then its StatefulSet replaces it)."""
        self.store.patch("pods", ns, name, {"status": {"phase": "Failed", "reason": "Evicted", "message": message}},
                         status_only=True)

    def preempt(self, ns: str, name: str) -> None:
        """The scheduler preempts the pod for a higher-priority one: DisruptionTarget, then a graceful delete."""
        self._disrupt(ns, name, "PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod")
        self.store.delete("pods", ns, name)

    def lose_node(self, node: str) -> None:
        """The node stops answering: its pods are evicted by the taint manager and, with no
        kubelet to confirm, removed without their hooks (pod garbage collection)."""
        self.nodes[node].ready = False
        with self.store.lock:
            doomed = [(ns, o["metadata"]["name"]) for (r, ns, _), o in self.store.objects.items()
                      if r == "pods" and o["spec"].get("nodeName") == node]
            for ns, name in doomed:
                self._disrupt(ns, name, "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")
                self.store.delete("pods", ns, name)

    def _disrupt(self, ns: str, name: str, reason: str, message: str) -> None:
        with self.store.lock:
            pod = self.store.get("pods", ns, name)
            conditions = [c for c in pod["status"].get("conditions", []) if c["type"] != "DisruptionTarget"]
            conditions.append({"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message,
                               "lastTransitionTime": now_rfc3339()})
            self.store.patch("pods", ns, name, {"status": {"conditions": conditions}}, status_only=True)

    def pods(self, ns: str) -> dict[str, Any]:
        items, _ = self.store.list("pods", ns)
        return {p["metadata"]["name"]: p for p in items}
