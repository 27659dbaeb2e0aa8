"""The daemon-facing ``kubernetes`` driver: apply the groups, watch their pods, tell the fleet.

Entered on the daemon's exit stack (:mod:`schedd.daemon.server`), it runs
three things for the daemon's life and stops them in reverse on any exit:

- with ``manage = true``, one server-side apply of every group's StatefulSet,
  retried with backoff until it succeeds (a daemon whose API server is briefly
  unreachable still starts and schedules on the agents it has);
- the :class:`~.watch.PodWatcher`, whose events change the fleet *at once*,
  on the watcher's own task: a deleted pod's node is DOWN and its jobs are
  requeued before the next event is read (:func:`schedd.daemon.reconcile.pod_gone`);
- a sender that commits and delivers what those changes produced (kills of
  the dying pod's ranks) in order, through the loop's ``dispatch``.

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
from schedd.pool.kube.apply import apply_groups
from schedd.pool.kube.client import KubeApi
from schedd.pool.kube.manifests import group_selector
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
        self.applied = False
        self.apply_failures = 0
        self.events = 0
        #: Seconds spent applying each watch event to the state (the requeue included), newest last.
        self.handle_s: list[float] = []
        self._out: Outbox = []
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> KubeDriver:
        self.api = await KubeApi.connect(self.kube.namespace, self.kube.kubeconfig)
        groups = [g.name for g in self.pool.groups]
        self.watcher = PodWatcher(self.api, group_selector(groups), self._on_event,
                                  watch_timeout_s=self.kube.watch_timeout_s, resync_s=self.kube.resync_s)
        self.state.fleet.pool = PoolView("kubernetes", {g.name: g.count for g in self.pool.groups},
                                         counters=self.counters)
        self._tasks.append(asyncio.create_task(self._send(), name="kube-send"))
        if self.kube.manage:
            self._tasks.append(asyncio.create_task(self._apply(), name="kube-apply"))
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
                "events": self.events}

    async def _apply(self) -> None:
        """Server-side apply of every group until it succeeds once."""
        assert self.api is not None
        while True:
            try:
                result = await apply_groups(self.api, self.pool, self.settings)
            except RETRYABLE as e:
                self.apply_failures += 1
                delay = backoff_s(self.apply_failures)
                log.warning("applying the node groups failed (%s: %s); retrying in %.1f s", type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                continue
            self.applied = True
            if result.applied:
                log.info("applied StatefulSets %s in %s", ", ".join(result.applied), self.kube.namespace)
            return

    def _on_event(self, event: NodeEvent) -> None:
        """Change the fleet now (on the watcher's task); queue what must be sent."""
        t0 = time.perf_counter()
        self.events += 1
        if isinstance(event, NodeSeen):
            out = pod_seen(self.state, event.name, event.uid, event.phase.value, event.reason,
                           final=event.final, code=event.code, group=event.group)
        else:
            out = pod_gone(self.state, event.name, event.uid, event.reason)
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
