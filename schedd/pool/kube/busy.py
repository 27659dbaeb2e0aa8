"""The ``schedd.io/busy`` label: ``true`` on an agent pod while its node runs a job.

Each group's rendered PodDisruptionBudget (``maxUnavailable: 0``) selects only
the group's pods that carry ``schedd.io/busy=true``. So ``kubectl drain``, a
cluster autoscaler's scale-down and every other eviction through the Eviction
API wait while a node runs a job, and take an idle pod at once: Kubernetes
cannot see the jobs, this label is how it learns of them.

Level-triggered and bounded. The wanted label (from the daemon's running
jobs) is compared with the label each pod was last seen with (the watch, or
this driver's own patch), and only pods that differ are patched: one JSON merge
patch per busy<->idle transition at most, and a job that starts and ends
between two passes costs nothing. A pass runs when the fleet says some node's
work changed, one pass at a time, so a burst of a thousand job ends is a
handful of passes. Only pods the watcher lists (its selector requires
``app.kubernetes.io/managed-by=schedd``) and only running ones are labelled:
a pod on its way out needs no protection and may be gone already.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from schedd.pool.kube.client import KubeApi, KubeError
from schedd.pool.kube.manifests import BUSY_LABEL

__all__ = ["BusyLabels"]

log = logging.getLogger("schedd.pool.kube")


@dataclass(frozen=True, slots=True)
class _Seen:
    uid: str
    running: bool
    busy: bool


class BusyLabels:
    """The busy label of every pod of the pool: what it is, and the patches that make it what it should be."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.pods: dict[str, _Seen] = {}
        self.patches = 0  # for /metrics: every call this made
        self.failures = 0

    def seen(self, name: str, uid: str, running: bool, busy: bool) -> None:
        """The watch saw pod ``name`` (incarnation ``uid``) with this label."""
        self.pods[name] = _Seen(uid, running, busy)

    def gone(self, name: str, uid: str) -> None:
        if (p := self.pods.get(name)) is not None and p.uid == uid:
            del self.pods[name]

    def changes(self, busy: set[str] | frozenset[str]) -> list[tuple[str, str, bool]]:
        """(pod, uid, wanted) for each running pod whose label is not what its node's work says."""
        return [(name, p.uid, name in busy) for name, p in sorted(self.pods.items())
                if p.running and p.busy != (name in busy)]

    async def sync(self, busy: set[str] | frozenset[str]) -> int:
        """Patch the pods whose label is wrong; the number patched. A pod gone
        meanwhile (404) is skipped; other errors propagate (the caller retries)."""
        done = 0
        for name, uid, want in self.changes(busy):
            self.patches += 1
            try:
                await self.api.label_pod(name, {BUSY_LABEL: "true" if want else None})
            except KubeError as e:
                if e.status != 404:
                    self.failures += 1
                    raise
                continue
            done += 1
            if (p := self.pods.get(name)) is not None and p.uid == uid:
                self.pods[name] = replace(p, busy=want)
        return done
