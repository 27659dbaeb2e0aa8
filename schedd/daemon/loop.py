"""The scheduling loop: a cycle on every event, coalesced, plus a slow tick.

Anything that may let a job start (a submit, a job end, a node joining, a
release) calls :meth:`Loop.trigger`; the loop runs one cycle for however many
triggers arrived meanwhile, so a burst of 1,000 submissions costs a few cycles,
not 1,000. There is never a fixed sleep between a free GPU and a waiting job:
the tick (``tick_s``) only catches time-driven changes (begin times, silent
nodes, the age factor of priorities).

Decisions reach agents only after the store has committed them
(:meth:`Loop.dispatch`): a crash between the two leaves a job the store calls
running that no agent runs, which reconciliation requeues — never a job that
runs twice.

A full disk (:class:`schedd.store.StoreFull`) stops decisions, not the daemon:
while the store holds writes it cannot commit, no cycle runs (nothing new
starts; running jobs go on under their agents), and messages whose decision is
not committed are parked and sent after the first commit that succeeds — an
agent's exit report is acknowledged only then, so its agent keeps it.

A submission is answered only once committed (the API awaits the flush), and
no cycle may start a job before that: :meth:`Loop.admitting` is a gate that
a cycle closes, waiting for the submissions in flight to be committed (or
withdrawn, when the commit failed) before it takes its snapshot.

Silence is judged only against time schedd itself was running: a small watch
task notes every ``min(heartbeat_s, tick_s)`` that the event loop is alive. A
gap in that monotonic beat (the process was stopped, the VM paused, the loop
blocked) gives every node a fresh heartbeat window before any node is judged,
so a daemon that wakes from a stall reads what its agents sent meanwhile
instead of declaring them all dead; the restart grace is extended likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from schedd.daemon.reconcile import check_nodes
from schedd.core.scheduler import run_cycle
from schedd.daemon.state import Outbox, State
from schedd.store import StoreFull

__all__ = ["Loop"]

log = logging.getLogger("schedd.daemon.loop")
#: A cycle this slow is logged at INFO whatever it decided; routine ones (a line
#: per cycle, hundreds a second under a stream of short jobs) only at DEBUG.
_SLOW_CYCLE_S = 0.1


class Loop:
    def __init__(self, state: State, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.started = clock()
        self._event = asyncio.Event()
        self.cycles = 0
        self.truncated = 0
        self.durations: deque[float] = deque(maxlen=100_000)  # seconds, drained by /metrics (bounded)
        self.last_cycle_s = 0.0
        self.stalls = 0
        self._beat: float | None = None  # monotonic time of the last beat; None while not watching
        self.parked: Outbox = []  # messages of decisions the full store has not committed yet
        self._admitting = 0  # submissions between state.submit and their commit
        self._settled = asyncio.Event()  # set while none is
        self._settled.set()
        self._open = asyncio.Event()  # cleared while a cycle waits for them, then snapshots
        self._open.set()
        state.wake = self.trigger

    @contextlib.asynccontextmanager
    async def admitting(self) -> AsyncIterator[None]:
        """Around ``state.submit`` and the flush that commits it (or the withdrawal
        when it fails): no cycle snapshots meanwhile, so none starts a job that may
        yet be withdrawn. Waits while a cycle is taking its snapshot."""
        while not self._open.is_set():
            await self._open.wait()
        self._admitting += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._admitting -= 1
            if not self._admitting:
                self._settled.set()

    def trigger(self) -> None:
        self._event.set()

    def _timeout(self) -> float:
        tick = self.state.settings.tick_s
        nxt = self.state.next_begin()
        if nxt is not None:
            tick = min(tick, max(0.0, nxt - self.clock()))
        return tick

    async def run(self) -> None:
        """Forever: wait for a trigger (or the tick), then one cycle."""
        watch = asyncio.create_task(self._watch(), name="stall-watch")
        try:
            while True:
                if not self._event.is_set():  # (asyncio.wait_for would wrap the wait in a task each time)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._timeout()):
                            await self._event.wait()
                self._event.clear()
                try:
                    await self.cycle()
                except Exception:  # a bug in a cycle must not stop scheduling for good
                    log.exception("scheduling cycle failed")
                    await asyncio.sleep(0.5)  # do not spin on a persistent failure
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    def _beat_s(self) -> float:
        return min(self.state.settings.heartbeat_s, self.state.settings.tick_s)

    async def _watch(self) -> None:
        """The daemon's own heartbeat, for :meth:`_check_stall`."""
        self._beat = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self._beat_s())
                self._check_stall()
        finally:
            self._beat = None

    def _check_stall(self) -> None:
        """Restart every heartbeat window if schedd itself did not run for a while.

        Called by the watch task and before nodes are judged, whichever runs
        first after a stall. A beat late by up to one more beat (and 0.5 s) is
        load, not a stall: missing less than a heartbeat costs no agent its window.
        """
        if self._beat is None:  # not watching (a test driving cycles by hand)
            return
        beat = self._beat_s()
        now = time.monotonic()
        gap, self._beat = now - self._beat, now
        if gap > beat + max(beat, 0.5):
            self.stalls += 1
            self.started += gap  # the restart grace counts running time too
            self.state.fleet.restart_windows(self.state.clock())
            log.warning("schedd did not run for %.1f s (stopped, paused or blocked): "
                        "every node gets a fresh heartbeat window", gap)

    async def cycle(self) -> None:
        state = self.state
        if state.store is not None and state.store.full is not None and not await self.dispatch([]):
            return  # the store still cannot commit: no decision until it can
        self._open.clear()
        try:
            if self._admitting:
                await self._settled.wait()
            self._check_stall()
            now = self.clock()
            out = check_nodes(state, now, now - self.started)
            t0 = time.perf_counter()
            plan = run_cycle(state.snapshot(now), state.pipeline)
            out += state.apply(plan, now)
        finally:
            self._open.set()
        dt = time.perf_counter() - t0
        self.cycles += 1
        self.truncated += plan.truncated
        self.last_cycle_s = dt
        self.durations.append(dt)
        level = logging.INFO if plan.preemptions or dt >= _SLOW_CYCLE_S else logging.DEBUG
        if (plan.starts or plan.preemptions) and log.isEnabledFor(level):
            log.log(level, "cycle: %d started, %d preempted, %.1f ms", len(plan.starts), len(plan.preemptions), dt * 1000)
        await self.dispatch(out)

    async def dispatch(self, out: Outbox) -> bool:
        """Commit, then tell the agents. An unconnected node's messages are dropped:
        when its agent registers again, reconciliation settles those ranks.

        Returns False when the store is full: the messages are parked, to go
        (first) with the next dispatch whose commit succeeds."""
        store = self.state.store
        if store is not None:
            try:
                await store.flush()
            except StoreFull:
                self.parked += out
                return False
        if self.parked:
            out, self.parked = self.parked + list(out), []
        for node, msg in out:
            self.state.fleet.send(node, msg)
        return True
