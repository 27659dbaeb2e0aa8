"""Housekeeping: the daemon's history stays within ``history_days``.

Every :func:`interval` the task deletes, from the store, the finished jobs
that ended more than ``history_days`` ago (:mod:`schedd.store.prune`, a
bounded batch per transaction, in a worker thread), and drops each batch from
the state's in-memory indexes (:meth:`State.forget`). PBS does the same
(``job_history_duration``, two weeks by default), sweeping every two minutes;
so does this for the default window, more often for a short one, so that a
job leaves about when its window ends whatever the window.

``history_days`` is read at every sweep: a reload that changes it applies at
the next one; 0 keeps the history for ever.

Accounting: ``qacct`` reads the same job records, so it sees the same window
(PBS keeps its accounting log files apart, and Slurm its accounting in
slurmdbd with a purge of its own, by default never). A site that bills from
``qacct`` sets ``history_days`` longer than its billing period, or 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from schedd.daemon.state import State
from schedd.store import StoreError
from schedd.store.prune import BATCH, HistoryPruner

__all__ = ["interval", "run", "sweep"]

log = logging.getLogger("schedd")

#: PBS's sweep period, and the shortest one (a window of seconds, as tests use).
LONGEST_S, SHORTEST_S = 120.0, 0.1


def interval(history_days: float) -> float:
    """Seconds between sweeps: a tenth of the window, between 0.1 s and two minutes."""
    if history_days <= 0:
        return LONGEST_S  # nothing to prune; look again in case a reload sets a window
    return min(LONGEST_S, max(SHORTEST_S, history_days * 86_400 / 10))


async def sweep(state: State, pruner: HistoryPruner, batch: int = BATCH) -> int:
    """Delete what ended before the window, a batch at a time; how many jobs went.

    Each batch is one short transaction in a worker thread; the event loop
    runs between batches, and drops each batch from memory as it goes. The
    sweep ends with an empty batch.
    """
    days = state.settings.history_days
    if days <= 0:
        return 0
    before = state.clock() - days * 86_400
    total = 0
    while True:
        ids = await asyncio.to_thread(pruner.prune, before, batch)
        state.forget(ids)
        total += len(ids)
        if not ids:  # not len < batch: array parents whose last subjobs went in this batch are next
            return total


async def run(state: State, pruner: HistoryPruner,
              on_sweep: Callable[[int], None] = lambda n: None) -> None:
    """Sweep for ever (until cancelled); a failed sweep is logged and retried
    at the next period (a busy or full disk passes)."""
    try:
        while True:
            await asyncio.sleep(interval(state.settings.history_days))  # a period, not a wait for something
            try:
                n = await sweep(state, pruner)
            except StoreError as exc:
                log.warning("history pruning failed; retrying in %.0f s: %s",
                            interval(state.settings.history_days), exc)
                continue
            if n:
                log.info("history: %d finished jobs older than %g days deleted", n, state.settings.history_days)
            on_sweep(n)
    finally:
        pruner.close()
