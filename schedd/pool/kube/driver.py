"""The daemon-facing ``kubernetes`` driver: apply the groups, watch their pods, tell the fleet.

Entered on the daemon's exit stack (:mod:`schedd.daemon.server`), it runs
three things for the daemon's life and stops them in reverse on any exit:

- a controller pass, run whenever something it acts on changed (a node's
  work, a pod event, the operator's scale command), one pass at a time, each
  failure retried with backoff: with ``manage = true`` it server-side applies
  every group's StatefulSet with the replicas the :class:`~.resize.Resizer`
  allows (a scale-down drains first and never removes a pod with a job on it;
  a daemon whose API server is briefly unreachable still starts and
  schedules on the agents it has); then it keeps each pod's ``schedd.io/busy``
  label true while its node runs a job (:mod:`.busy`);
- the :class:`~.watch.PodWatcher`, whose events change the fleet *at once*,
  on the watcher's own task: a deleted pod's node is DOWN and its jobs are
  requeued before the next event is read (:func:`schedd.daemon.reconcile.pod_gone`);
- a sender that commits and delivers what those changes produced (kills of
  the dying pod's ranks) in order, through the loop's ``dispatch``.

The operator's ``POST /api/v1/pool/GROUP/scale`` reaches :meth:`KubeDriver.resize`
through the fleet's :class:`~schedd.daemon.fleet.PoolView`, and so does a
reload with a group's changed ``count`` in pool.toml (:mod:`schedd.daemon.reload`;
other pool.toml changes need a restart); a restart with a lower count drains
first too, since the StatefulSet's live replicas are read before anything is applied.

This is the code that runs against a real cluster; the tests point it at the
stand-in API server through ``[kubernetes].kubeconfig``, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType

from schedd.config import PoolSettings, Settings
from schedd.daemon.fleet import PoolView
from schedd.daemon.loop import Loop
from schedd.daemon.reconcile import pod_gone, pod_seen
from schedd.daemon.state import Outbox, State
from schedd.errors import InputError, UnknownJob, WrongState
from schedd.pool.kube.apply import apply_groups
from schedd.pool.kube.busy import BusyLabels
from schedd.pool.kube.client import KubeApi
from schedd.pool.kube.manifests import MANAGED_BY, group_selector
from schedd.pool.kube.podstate import Phase
from schedd.pool.holding import holding
from schedd.pool.kube.resize import Resizer
from schedd.pool.kube.watch import RETRYABLE, NodeEvent, NodeSeen, PodWatcher, backoff_s

__all__ = ["KubeDriver"]

log = logging.getLogger("schedd.pool.kube")


class KubeDriver:
    """``async with KubeDriver(pool, settings, state, loop):`` for the daemon's life."""

    def __init__(self, pool: PoolSettings, settings: Settings, state: State, loop: Loop) -> None:
        self.pool, self.settings, self.state, self.loop = pool, settings, state, loop
        self.kube = pool.kube()
        self.api: KubeApi | None = None
        self.watcher: PodWatcher | None = None
        self.busy: BusyLabels | None = None
        self.resizer = Resizer(state.fleet, {g.name: g.count for g in pool.groups})
        self.applied = False
        self._applied: dict[str, int] = {}  # the replicas last applied, by group
        self.apply_failures = 0
        self.applies = 0
        self.events = 0
        #: Seconds spent applying each watch event to the state (the requeue included), newest last.
        self.handle_s: list[float] = []
        self._out: Outbox = []
        self._ready = asyncio.Event()
        self._kick = asyncio.Event()  # something the controller pass acts on changed
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> KubeDriver:
        self.api = await KubeApi.connect(self.kube.namespace, self.kube.kubeconfig)
        groups = [g.name for g in self.pool.groups]
        self.watcher = PodWatcher(self.api, group_selector(groups), self._on_event,
                                  watch_timeout_s=self.kube.watch_timeout_s, resync_s=self.kube.resync_s)
        self.busy = BusyLabels(self.api)
        self.state.fleet.pool = PoolView("kubernetes", {g.name: g.count for g in self.pool.groups},
                                         counters=self.counters, touched=self._kick.set,
                                         resize=self.resize if self.kube.manage else None)
        self._tasks.append(asyncio.create_task(self._send(), name="kube-send"))
        self._tasks.append(asyncio.create_task(self._control(), name="kube-control"))
        self._tasks.append(asyncio.create_task(self.watcher.run(), name="kube-watch"))
        log.info("kubernetes pool: namespace %s, groups %s, %s", self.kube.namespace, ", ".join(groups),
                 "managing the StatefulSets" if self.kube.manage else "watching only (manage = false)")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in reversed(self._tasks):
            task.cancel()
        for task in reversed(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.api is not None:
            await self.api.close()
            self.api = None

    def counters(self) -> dict[str, int]:
        """For /metrics: what the driver has done and failed to do."""
        w = self.watcher
        return {"relists": w.relists if w else 0, "watch_expired": w.gone_410 if w else 0,
                "watch_failures": w.failures if w else 0, "apply_failures": self.apply_failures,
                "applies": self.applies, "events": self.events,
                "busy_patches": self.busy.patches if self.busy else 0,
                "busy_patch_failures": self.busy.failures if self.busy else 0}

    def resize(self, group: str, count: int) -> dict[str, object]:
        """The operator's scale command: ``group`` should have ``count`` nodes.

        Takes effect in this call (the nodes to remove are drained before it
        returns, so no job lands on them after the answer); the StatefulSet
        follows as their work allows. Not kept across a restart: pool.toml's
        count is the one read at start, so change it there too (a reload of
        the changed file calls this).
        """
        if group not in self.resizer.target:
            raise UnknownJob(f"unknown node group {group}; the pool has {', '.join(sorted(self.resizer.target))}")
        if not self.kube.manage:
            raise WrongState("manage = false: the StatefulSets are GitOps', change replicas there")
        if not 0 <= count <= 10_000:
            raise InputError(f"count must be 0..10000, not {count}")
        self.resizer.want(group, count)
        self.resizer.plan(holding(self.state, self.state.clock()).nodes)
        self._kick.set()
        self.loop.trigger()
        log.info("node group %s: %d nodes wanted (the StatefulSet has %s)", group, count,
                 self.resizer.replicas.get(group, "?"))
        return {"group": group, "count": count, "replicas": self.resizer.replicas.get(group),
                "draining": self.resizer.draining(group)}

    async def _control(self) -> None:
        """One controller pass per wake-up (coalesced); a failed pass is retried with backoff."""
        failures = 0
        while True:
            timeout: float | None = None
            try:
                timeout = await self._pass()
                failures = 0
            except RETRYABLE as e:
                failures += 1
                self.apply_failures += 1
                timeout = backoff_s(failures)
                log.warning("kubernetes pool: a call failed (%s: %s); retrying in %.1f s", type(e).__name__, e, timeout)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout)
            self._kick.clear()

    async def _pass(self) -> float | None:
        """The busy labels, then (``manage``) the replicas the resizer allows: an
        emptied pod loses its label before it is removed. Returns when to look
        again by time alone (a holding job's walltime), if ever."""
        assert self.api is not None and self.busy is not None
        now = self.state.clock()
        held = holding(self.state, now)
        await self.busy.sync(held.nodes)
        if self.kube.manage:
            if not self.applied:  # first pass: what the StatefulSets have, so that a lower count drains first
                for g in self.resizer.target:
                    live = await self.api.get_statefulset(g)
                    if live is not None and (live["metadata"].get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]:
                        self.resizer.replicas[g] = int(live["spec"].get("replicas", 1))
            want = self.resizer.plan(held.nodes)
            if want != self._applied:
                result = await apply_groups(self.api, self.pool, self.settings, replicas=want)
                self.applies += 1
                log.info("applied StatefulSets %s in %s (replicas %s)", ", ".join(result.applied),
                         self.kube.namespace, ", ".join(f"{g}={n}" for g, n in sorted(want.items())))
                self.applied = True
                self._applied = want
                self.resizer.replicas.update({g: want[g] for g in result.applied})
                self.resizer.plan(held.nodes)  # lift drains the new replicas made moot
        return None if held.until is None or not self.state.fleet.pool or not self.state.fleet.pool.draining \
            else max(0.0, held.until - now)

    def _on_event(self, event: NodeEvent) -> None:
        """Change the fleet now (on the watcher's task); queue what must be sent."""
        t0 = time.perf_counter()
        self.events += 1
        assert self.busy is not None
        if isinstance(event, NodeSeen):
            out = pod_seen(self.state, event.name, event.uid, event.phase.value, event.reason,
                           final=event.final, code=event.code, group=event.group)
            self.busy.seen(event.name, event.uid, event.phase is Phase.READY and not event.final, event.busy)
        else:
            out = pod_gone(self.state, event.name, event.uid, event.reason)
            self.busy.gone(event.name, event.uid)
        self._kick.set()
        self.handle_s.append(time.perf_counter() - t0)
        del self.handle_s[:-1000]
        if out:
            log.info("pod %s: %s", event.name, event.reason)
            self._out += out
            self._ready.set()

    async def _send(self) -> None:
        """Commit, then deliver, what the watch events produced; in their order."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            out, self._out = self._out, []
            try:
                await self.loop.dispatch(out)
            except Exception:  # a failed send must not stop the watch's effects: agents reconcile on Register
                log.exception("sending the pool's messages failed")
