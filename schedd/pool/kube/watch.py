"""The pool's pods as a stream of node events: list, watch, relist on 410, resync.

The loop an informer runs, kept small: list the pods of the groups by label
selector, watch from the list's ``resourceVersion`` with bookmarks and a
server-side timeout, and on 410 Gone relist and *diff* against what was
already reported, so a relist never repeats a node and a pod that vanished
meanwhile is reported gone. A connection error reconnects from the last
version after an exponential backoff; a full relist also runs every
``resync_s`` to catch anything a watch could have missed.

Fail closed: a failed call reports nothing — a node is only ever declared
gone because Kubernetes said its pod is gone or going, never because a
lookup failed.

Events, deduplicated per pod name and UID (the node's incarnation):
:class:`NodeSeen` when the phase, reason or busy label of a pod changes,
:class:`NodeGone` when the pod object is gone (DELETED, missing on relist, or
replaced by a pod of the same name with a new UID).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from schedd.pool.kube.client import Gone, KubeApi, KubeError
from schedd.pool.kube.manifests import BUSY_LABEL, GROUP_LABEL
from schedd.pool.kube.podstate import Phase, is_final, pod_code, pod_state

__all__ = ["RETRYABLE", "NodeEvent", "NodeGone", "NodeSeen", "PodWatcher", "backoff_s"]

log = logging.getLogger("schedd.pool.kube")


@dataclass(frozen=True, slots=True)
class NodeSeen:
    """Pod ``name`` (= node name), incarnation ``uid``, is now in ``phase`` because ``reason``."""

    name: str
    uid: str
    phase: Phase
    reason: str
    group: str = ""
    k8s_node: str = ""
    final: bool = False  # the pod can never run again (deleting, Failed, Succeeded)
    code: str = ""  # Kubernetes' one-word reason, for metrics
    busy: bool = False  # the pod carries schedd.io/busy=true (what the PDB protects)


@dataclass(frozen=True, slots=True)
class NodeGone:
    """Incarnation ``uid`` of node ``name`` no longer exists; its jobs take the node-lost path."""

    name: str
    uid: str
    reason: str


NodeEvent = NodeSeen | NodeGone


def backoff_s(failures: int, base_s: float = 0.2, cap_s: float = 30.0, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter in [half, full] of ``base * 2^(n-1)``, capped.

    >>> backoff_s(1, rand=lambda: 1.0), backoff_s(4, rand=lambda: 0.0), backoff_s(99, rand=lambda: 1.0)
    (0.2, 0.8, 30.0)
    """
    full = min(cap_s, base_s * 2 ** max(0, failures - 1))
    return float(full * (0.5 + rand() / 2))


@dataclass(frozen=True, slots=True)
class _Known:
    uid: str
    phase: Phase
    reason: str
    busy: bool


#: What a call to the API server may raise that a retry can cure.
RETRYABLE = (KubeError, aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, KeyError)


class PodWatcher:
    """Runs until cancelled, calling ``emit`` for each node event, in order."""

    def __init__(self, api: KubeApi, selector: str, emit: Callable[[NodeEvent], None], *,
                 watch_timeout_s: int = 300, resync_s: float = 600.0) -> None:
        self.api, self.selector, self.emit = api, selector, emit
        self.watch_timeout_s, self.resync_s = watch_timeout_s, resync_s
        self.known: dict[str, _Known] = {}
        # Counters for /metrics and tests.
        self.relists = 0
        self.gone_410 = 0
        self.failures = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        since: str | None = None
        resync_at = 0.0
        failures = 0
        while True:
            try:
                if since is None:
                    since = await self._relist()
                    resync_at = loop.time() + self.resync_s
                left = max(1, min(self.watch_timeout_s, int(resync_at - loop.time())))
                since = await self._watch(since, left)
                failures = 0
                if loop.time() >= resync_at:
                    since = None
            except Gone as e:
                self.gone_410 += 1
                log.info("pod watch expired (%s); relisting", e)
                since = None
            except RETRYABLE as e:
                failures += 1
                self.failures += 1
                delay = backoff_s(failures)
                log.warning("kubernetes pod list/watch failed (%s: %s); retrying in %.1f s", type(e).__name__, e, delay)
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        pods, version = await self.api.list_pods(self.selector)
        self.relists += 1
        names = set()
        for pod in pods:
            names.add(pod["metadata"]["name"])
            self._seen(pod)
        for name in sorted(set(self.known) - names):
            old = self.known.pop(name)
            self.emit(NodeGone(name, old.uid, "pod deleted (missing when the pods were listed again)"))
        return version

    async def _watch(self, since: str, timeout_s: int) -> str:
        async for event in self.api.watch_pods(self.selector, since, timeout_s):
            if event.type == "DELETED":
                self._deleted(event.obj)
            elif event.type in ("ADDED", "MODIFIED"):
                self._seen(event.obj)
            since = event.resource_version or since
        return since

    def _seen(self, pod: dict[str, Any]) -> None:
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        phase, reason = pod_state(pod)
        old = self.known.get(name)
        if old is not None and old.uid != uid:
            self.emit(NodeGone(name, old.uid, "pod replaced by a new one of the same name"))
            old = None
        labels = pod["metadata"].get("labels") or {}
        now = _Known(uid, phase, reason, labels.get(BUSY_LABEL) == "true")
        if old != now:
            self.known[name] = now
            self.emit(NodeSeen(name, uid, phase, reason, labels.get(GROUP_LABEL, ""), pod.get("spec", {}).get("nodeName", ""),
                               is_final(pod), pod_code(pod), now.busy))

    def _deleted(self, pod: dict[str, Any]) -> None:
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        old = self.known.get(name)
        if old is None or old.uid != uid:
            return  # an older incarnation, already reported gone
        del self.known[name]
        phase, reason = pod_state(pod)
        self.emit(NodeGone(name, uid, reason if phase is Phase.DOWN else "pod deleted"))
