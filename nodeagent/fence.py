"""Self-fencing: an agent cut off from schedd freezes its jobs before schedd could rerun them.

schedd marks a node DOWN once it has taken no heartbeat from it for
``heartbeat_timeout_s`` (T) and requeues the node's rerunnable jobs, which may
start on another node at once. A partitioned agent cannot be told: its copies
would go on and every side effect (a checkpoint, a row written, a file
appended) could happen twice. So the agent decides alone, with a deadline
that is provably earlier than schedd's:

* **What schedd knows.** Right after each heartbeat the agent sends a
  WebSocket ping carrying the heartbeat's send time ``t``. schedd reads its
  socket in order and answers a ping only after it has handled the messages
  before it, and it closes — without reading further — a session it gave up
  on. A pong carrying ``t`` therefore proves that schedd took a heartbeat sent
  at ``t`` or later *in a session it had not given up on*: it cannot declare
  the node down before ``t + T``. A Welcome proves the same of the Register.
  ``confirmed`` is the newest such ``t``.
* **The fence** falls at ``confirmed + T * FENCE_FRACTION``: every running rank
  is frozen (SIGSTOP to its process group, through its supervisor). A frozen
  copy writes nothing, so nothing it does can overlap a second copy. Half of
  T is left for a timer that fires late on a loaded node and for the
  supervisors to act. Ranks that start while the node is fenced (a launch that
  was still preparing) are frozen at each heartbeat interval.
* **Lifting.** A later pong in the same session means schedd never gave up:
  every rank is thawed (SIGCONT). A Welcome on a new session carries schedd's
  verdict: the ranks it lists as unknown are stale — their job may be running
  elsewhere — and are SIGKILLed without a grace period (a SIGCONT would let a
  stale copy run its handlers); the others are thawed. Freezing rather than
  killing is what keeps schedd's take-back (:mod:`schedd.daemon.reconcile`)
  working: an attempt not restarted elsewhere resumes where it was.

The frozen ranks are also listed in a file in the agent's state directory
while the fence stands: an agent restarted meanwhile starts fenced, with the
same ranks frozen, and lifts the fence on its first Welcome like any other.

A refused connection is not a partition: the packets reached the daemon's host
and nothing listened. While schedd restarts (an upgrade, a crash) the agent's
attempts are refused, each moves the deadline (:meth:`Fence.absent`), and the
jobs run on, as they always did while schedd was away; a silent network still
fences.

Nothing here if schedd does not say its timeout (``Welcome.heartbeat_timeout_s``
0: an older schedd): the agent then behaves as before. Limits: a rank in a
container is signalled through its runner, not frozen in the engine; an agent
that restarts during a partition fences only once it has been welcomed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import msgspec

from nodeagent.jobdir import write_atomic
from nodeagent.jobs import RankKey
from schedd.protocol import RunningJob

__all__ = ["FENCE_FRACTION", "Fence", "Ranks"]

log = logging.getLogger("nodeagent.fence")

#: The fence falls this fraction of schedd's heartbeat timeout after the last confirmation.
FENCE_FRACTION = 0.5
#: Fewer heartbeats than this between two fences' worth of silence: a late beat freezes jobs (warned).
MIN_BEATS = 2


class Ranks(Protocol):
    """What the fence needs of the job table (:class:`nodeagent.jobs.JobTable`)."""

    def running(self) -> list[RunningJob]: ...

    def signal(self, key: RankKey, name: str) -> bool: ...

    def kill(self, key: RankKey, kill_delay_s: float | None = None, status: int | None = None) -> bool: ...


class Fence:
    """When to freeze this node's ranks, and what to do with them once schedd answers again."""

    def __init__(self, table: Ranks, marker: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.marker = marker  # where the frozen ranks are listed while fenced (None: nowhere)
        self.clock = clock
        self.after_s = 0.0  # 0: schedd said no timeout, never fence
        self.confirmed = clock()
        self.frozen: set[RankKey] = set()  # ranks this fence stopped (empty when not fenced)
        self.fenced = False
        self.fences = 0  # times the node fenced itself, for tests and logs
        self._changed = asyncio.Event()
        if marker is not None and marker.exists():  # an earlier agent fenced and did not hear back
            try:
                keys = msgspec.json.decode(marker.read_bytes(), type=list[tuple[str, int, int]])
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("ignoring %s: %s", marker, exc)
            else:
                self.frozen = {RankKey(*k) for k in keys}
                self.fenced = True
                log.warning("fenced before this agent started: %d rank(s) stay frozen until schedd answers",
                            len(self.frozen))

    def deadline(self) -> float | None:
        """Monotonic time of the fence, None while schedd has not said its timeout."""
        return self.confirmed + self.after_s if self.after_s > 0 else None

    def confirm(self, sent_at: float) -> None:
        """schedd took a message sent at ``sent_at`` in a session it had not given up on."""
        if sent_at <= self.confirmed:
            return
        self.confirmed = sent_at
        self._changed.set()
        deadline = self.deadline()
        if self.fenced and deadline is not None and self.clock() < deadline:
            log.info("schedd answers again in the same session: thawing %d rank(s)", len(self.frozen))
            self._lift(())

    def absent(self, tried_at: float) -> None:
        """A connection attempt begun at ``tried_at`` was refused: no schedd listened
        then, so none has heard from us since, and a schedd started later waits
        ``reconnect_grace_s`` (>= its heartbeat timeout, as shipped) for its agents
        before it reruns their jobs. A schedd restarting is therefore no reason to
        freeze: the deadline moves as if it had confirmed ``tried_at``. A fence
        already standing stays: the schedd that is gone may have rerun our jobs."""
        if self.fenced or tried_at <= self.confirmed:
            return
        self.confirmed = tried_at
        self._changed.set()

    def welcome(self, timeout_s: float, sent_at: float | None, stale: Iterable[RankKey],
                heartbeat_s: float = 0.0) -> None:
        """schedd's timeout; for a new session (``sent_at``: when its Register was sent)
        also the verdict on our ranks, which lifts the fence."""
        after_s = timeout_s * FENCE_FRACTION if timeout_s > 0 else 0.0
        if after_s and after_s < MIN_BEATS * heartbeat_s and after_s != self.after_s:
            log.warning("schedd's heartbeat timeout (%g s) is under %d heartbeats (%g s each): "
                        "a late heartbeat may freeze the jobs here until the next one", timeout_s,
                        2 * MIN_BEATS, heartbeat_s)
        self.after_s = after_s
        self._changed.set()
        if sent_at is None:
            return
        self.confirmed = max(self.confirmed, sent_at)
        if self.fenced:
            self._lift(stale)

    def is_frozen(self, key: RankKey) -> bool:
        return key in self.frozen

    async def run(self, stop: asyncio.Event, interval_s: Callable[[], float]) -> None:
        """Freeze at the deadline; while fenced, freeze newcomers every ``interval_s()``."""
        while not stop.is_set():
            deadline = self.deadline()
            if not self.fenced and deadline is not None and self.clock() >= deadline:
                self._freeze(first=True)
            elif self.fenced:
                self._freeze(first=False)
            if self.fenced:
                wait = interval_s()
            elif deadline is not None:
                wait = max(deadline - self.clock(), 0.0)
            else:
                wait = None
            self._changed.clear()
            changed = asyncio.ensure_future(self._changed.wait())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({changed, stopping}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (changed, stopping):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def _freeze(self, *, first: bool) -> None:
        running = [RankKey(r.job_id, r.attempt, r.rank) for r in self.table.running()]
        new = [key for key in running if key not in self.frozen]
        if first:
            self.fenced = True
            self.fences += 1
            silent = self.clock() - self.confirmed
            log.warning("no word from schedd for %.1f s (it gives up after %.1f s): fencing, %d rank(s) frozen",
                        silent, self.after_s / FENCE_FRACTION, len(new))
        for key in new:
            if self.table.signal(key, "SIGSTOP"):
                self.frozen.add(key)
        if self.marker is not None and (new or first):
            try:
                write_atomic(self.marker, msgspec.json.encode(sorted(self.frozen)))
            except OSError as exc:
                log.warning("cannot list the frozen ranks in %s: %s", self.marker, exc)

    def _lift(self, stale: Iterable[RankKey]) -> None:
        stale = set(stale)
        for key in sorted(self.frozen):
            if key in stale:
                log.info("%s is stale (schedd does not know it): killed while frozen", key)
                self.table.kill(key, 0.0)
            else:
                self.table.signal(key, "SIGCONT")
        log.info("fence lifted: %d rank(s) thawed, %d killed", len(self.frozen - stale), len(self.frozen & stale))
        self.frozen.clear()
        self.fenced = False
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)
