"""History pruning: finished jobs that ended before a time are deleted, with
their events, metric series and params, a bounded batch per transaction.

A long-lived daemon must not grow without bound: every job leaves a row, a
handful of events and perhaps a series behind. :mod:`schedd.daemon.housekeeping`
calls :meth:`HistoryPruner.prune` (in a worker thread) with the end of the
history window (``history_days`` ago), until a batch comes back short.

Why a connection of its own rather than an op on the store's writer queue: a
deletion is not a write the daemon's state asked for, has no order to keep
with the queued writes (it touches only finished jobs that ended days ago,
which nothing writes any more; one that were written again would be deleted
by the next sweep), and must not hold the writer's group commit. SQLite
allows one writer at a time: each batch is one short ``BEGIN IMMEDIATE``
transaction (a few milliseconds for ``batch`` jobs), so the store's writer
waits at most that long (its busy timeout is seconds), and the event loop
never does. Freed pages go on SQLite's freelist and are reused by later
inserts, so the file stops growing once the window is full (measured by
``python -m bench.soak``); no VACUUM is needed.

An array parent is deleted only once none of its subjobs is left: it ends
with its last subjob, so it is as old as any of them, but a batch may end
between them.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from schedd.store.rows import StoreError
from schedd.store.schema import FINISHED

__all__ = ["BATCH", "HistoryPruner", "prune_batch"]

#: Jobs per transaction: milliseconds of the write lock.
BATCH = 500

# jobs_time indexes exactly COALESCE(end_time, submit_time); a finished job's is its end_time.
# A parent "17[]" has subjobs "17[0]", "17[1]", ...: the ids strictly between "17[" and
# "17\" (the character after "["), itself excluded — a range of the primary key.
_CANDIDATES = f"""
SELECT p.id FROM jobs AS p
WHERE COALESCE(p.end_time, p.submit_time) < ? AND p.state = '{FINISHED}'
  AND NOT (substr(p.id, -2) = '[]' AND EXISTS (
      SELECT 1 FROM jobs AS s
      WHERE s.id > substr(p.id, 1, length(p.id) - 1)
        AND s.id < substr(p.id, 1, length(p.id) - 2) || '\\'
        AND s.id != p.id))
LIMIT ?
"""
_DELETES = (
    "DELETE FROM jobs WHERE id = ?",
    "DELETE FROM events WHERE job_id = ?",
    "DELETE FROM chunks WHERE job_id = ?",
    "DELETE FROM params WHERE job_id = ?",
)


def prune_batch(conn: sqlite3.Connection, before: float, limit: int = BATCH) -> list[str]:
    """Delete up to ``limit`` finished jobs that ended before ``before``, and
    everything recorded of them, in one transaction; return their ids.

    ``conn`` is in autocommit mode (``isolation_level=None``). Fewer than
    ``limit`` ids back means none is left (array parents whose subjobs went
    in this batch come in the next one).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        ids = [str(i) for (i,) in conn.execute(_CANDIDATES, (before, limit))]
        rows = [(i,) for i in ids]
        if rows:
            for sql in _DELETES:
                conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return ids


class HistoryPruner:
    """:func:`prune_batch` on a connection of its own to the store's file.

    Thread-safe: one batch at a time; :meth:`close` waits for a batch in
    progress (a worker thread the daemon's task no longer awaits, once it is
    cancelled) instead of closing the connection under it.
    """

    def __init__(self, path: Path, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def prune(self, before: float, limit: int = BATCH) -> list[str]:
        """One batch (see :func:`prune_batch`); :class:`StoreError` if SQLite fails."""
        with self._lock:
            if self._closed:
                return []
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s,
                                                 isolation_level=None, check_same_thread=False)
                    self._conn.execute("PRAGMA synchronous = NORMAL")  # as the store's writer: WAL, no fsync per commit
                return prune_batch(self._conn, before, limit)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: pruning the history failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
