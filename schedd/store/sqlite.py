"""The embedded store: one SQLite file in WAL mode, one writer thread, group commit.

Writes never block the caller: ``put_jobs`` and friends copy their arguments onto a
queue and return (O(rows), no I/O). The single writer thread takes whatever is
queued — up to ``max_batch_rows`` — coalesces it (:mod:`schedd.store._batch`) and
commits it as ONE transaction with one ``executemany`` per table and statement. The
busier the daemon, the bigger the batches, the fewer the commits per row.

``flush()`` puts a barrier on the same FIFO queue, so it resolves once everything
enqueued before it is committed. A failed transaction is rolled back, logged, and
reported exactly once, as :class:`StoreError`, by the next flush to complete (or by
``close``). A failed batch is all-or-nothing like any transaction: its rows are
dropped, and the error says how many. The in-memory state in ``state.py`` stays the
truth; it may re-put what it still wants written.

A full disk (``SQLITE_FULL``, ``ENOSPC``, ``EDQUOT``) is not an ordinary failure:
nothing is dropped but metrics. The writer first drops the batch's job-metric
rows (chunks, params, retention: one warning per episode) and retries the rest
at once; if that fails too it *holds* the batch, answers every flush waiting on
it with :class:`StoreFull`, and retries it every ``retry_s`` — and at once when
a new flush arrives — with whatever was queued since coalesced on top (replay
order, see :mod:`schedd.store._batch`). :attr:`Store.full` says so meanwhile;
the first commit that succeeds ends the episode by itself, no restart. So a
flush succeeds exactly when everything enqueued before it is committed: that is
what the API awaits before it answers a submission (durable before ack).

Reads run on their own connection: in WAL mode they see the last committed
transaction and never wait for the writer. They see nothing still queued; flush
first for read-your-writes.

Durability: ``synchronous=NORMAL`` by default. In WAL mode a commit is then written
to the WAL without an fsync; the WAL is fsynced at checkpoints. A *process* crash
(SIGKILL, OOM, segfault) loses nothing committed — the write() has returned and the
OS holds the pages. Only a power loss or kernel crash may lose the last transactions
before the latest checkpoint, and never corrupts the file. ``FULL`` fsyncs the WAL at
each commit: one fsync per batch, not per row, thanks to group commit; then an
acknowledged submission survives an OS crash too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from schedd.store._batch import (
    AddEvents,
    AsyncWaiter,
    Batch,
    DeleteJobs,
    DeleteSeriesBefore,
    DeleteToken,
    Op,
    PutChunks,
    PutJobs,
    PutMeta,
    PutParams,
    PutToken,
    Stop,
    SyncWaiter,
    Waiter,
    WithdrawJobs,
    op_rows,
)
from schedd.store.rows import EventRow, JobRow, StoreError, StoreStats, TokenRow
from schedd.store.schema import FINISHED, VERSION_KEY, migrate
from schedd.store.series import ChunkRow, ParamRow
from schedd.errors import Unavailable

__all__ = ["Store", "StoreFull"]

log = logging.getLogger("schedd.store")

_JOB_COLUMNS = "id, seq, state, owner, account, queue, submit_time, end_time, data"
_UPSERT_JOB = (
    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, state = excluded.state,"
    " owner = excluded.owner, account = excluded.account, queue = excluded.queue,"
    " submit_time = excluded.submit_time, end_time = excluded.end_time, data = excluded.data"
)
_UPSERT_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_UPSERT_TOKEN = (
    'INSERT INTO tokens (hash, "user", role, created, expires) VALUES (?, ?, ?, ?, ?)'
    ' ON CONFLICT (hash) DO UPDATE SET "user" = excluded."user", role = excluded.role,'
    " created = excluded.created, expires = excluded.expires"
)
_UPSERT_CHUNK = (
    "INSERT INTO chunks (job_id, key, seq, kind, n, t0, t1, summary, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (job_id, key, seq) DO UPDATE SET kind = excluded.kind, n = excluded.n, t0 = excluded.t0,"
    " t1 = excluded.t1, summary = excluded.summary, data = excluded.data"
)
_UPSERT_PARAM = (
    "INSERT INTO params (job_id, kind, key, value, time) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (job_id, kind, key) DO UPDATE SET value = excluded.value, time = excluded.time"
)
_TIME = "COALESCE(end_time, submit_time)"  # the expression jobs_time indexes
_IDS_PER_QUERY = 500  # well under SQLite's bound-parameter limit
_SQLITE_FULL = 13  # primary result code; SQLite's unix VFS turns a short write with ENOSPC into it
_SQLITE_IOERR_SHMSIZE = 4874  # the -shm file could not be grown


class StoreFull(StoreError, Unavailable):
    """A flush whose writes are held because the disk (or quota) is full: they
    are kept in memory and retried (see the module docstring). An HTTP 503."""

    code = "store_full"


def _is_full(exc: BaseException) -> bool:
    """Whether a failed write is the disk (or quota) being full: retried, not dropped."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class _Failure:
    """Failed batches not yet reported by a flush: the first cause, and how much was lost."""

    __slots__ = ("batches", "cause", "path", "rows")

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path, self.cause, self.batches, self.rows = path, cause, 0, 0

    def error(self) -> StoreError:
        more = f" ({self.batches} batches)" if self.batches > 1 else ""
        err = StoreError(
            f"{self.path}: write failed, {self.rows} queued rows dropped{more}: "
            f"{type(self.cause).__name__}: {self.cause}"
        )
        err.__cause__ = self.cause
        return err


class Store:
    """Jobs, events, tokens and meta in one SQLite file. See the module docstring.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> store = Store(Path(tmp.name) / "schedd.db")
    >>> store.start()
    >>> store.put_jobs([JobRow("1", 1, "queued", "ann", "ml", "gpu1", 10.0, None, b"{}")])
    >>> store.flush_sync()
    >>> [(job.id, job.state) for job in store.load_active()]
    [('1', 'queued')]
    >>> store.close(); tmp.cleanup()
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        max_batch_rows: int = 50_000,
        busy_timeout_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self._max_batch_rows = max(1, max_batch_rows)
        self._queue: queue.SimpleQueue[Op] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed and the counters below
        self._closed = False  # no more writes: close() was called, or the writer died
        self._thread: threading.Thread | None = None
        self._enqueued = self._done = 0  # rows in, rows committed or dropped
        self._commits = self._rows_written = self._largest = self._failed = self._capped = 0
        self._failure: _Failure | None = None  # writer thread only
        self._retry_s = retry_s
        #: While a batch is held (the disk is full): why, as the error says it. Set and
        #: cleared by the writer thread only; read anywhere (one attribute: atomic).
        self._full: str | None = None
        self._dropping_series = False  # writer thread only: warned once this episode
        self._writer = self._connect(busy_timeout_s)
        self._reader: sqlite3.Connection | None = None
        #: Called with the rows of every put_jobs, on the caller's thread (the
        #: daemon's loop): the live stream's feed of job changes. Must not block.
        self.job_watchers: list[Callable[[Sequence[JobRow]], None]] = []
        self._read_lock = threading.Lock()
        try:
            mode = self._writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            self._writer.execute(f"PRAGMA synchronous = {synchronous}")
            self._writer.execute("PRAGMA journal_size_limit = 67108864")  # 64 MiB WAL after checkpoint
            migrate(self._writer, self.path)
            self._reader = self._connect(busy_timeout_s)
            self._reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            self._writer.close()
            if self._reader is not None:
                self._reader.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc
            raise

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.path}: directory {self.path.parent} does not exist")
        try:
            # isolation_level=None: autocommit; the writer says BEGIN/COMMIT itself.
            return sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread. Writes enqueued before ``start`` go in its first batch."""
        with self._lock:
            if self._closed or self._thread is not None:
                raise StoreError(f"{self.path}: store already started or closed")
            self._thread = threading.Thread(target=self._run, name="schedd-store-writer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Commit everything queued, stop the writer, close the database.

        Raises :class:`StoreError` if a write failed and no flush reported it yet.
        A second call does nothing.
        """
        with self._lock:
            if self._reader is None:
                return
            if not self._closed:
                self._closed = True
                self._queue.put(Stop())
            thread = self._thread
        if thread is None:
            self._run()  # never started: drain in this thread
        else:
            thread.join()
        with self._read_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        try:
            self._writer.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass
        self._writer.close()
        stats = self.stats
        log.info(
            "store %s closed: %d commits, %d rows written, %d failed batches",
            self.path, stats.commits, stats.rows_written, stats.failed_batches,
        )
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure.error()

    # --- writes: enqueue and return ----------------------------------------------

    def put_jobs(self, rows: Sequence[JobRow]) -> None:
        """Upsert jobs by id. O(len(rows)); no I/O."""
        if rows:
            self._enqueue(PutJobs(tuple(rows)), len(rows))
            for watch in self.job_watchers:
                watch(rows)

    def add_events(self, rows: Sequence[EventRow]) -> None:
        """Append events. O(len(rows)); no I/O."""
        if rows:
            self._enqueue(AddEvents(tuple(rows)), len(rows))

    def put_chunks(self, rows: Sequence[ChunkRow]) -> None:
        """Upsert metric chunks by (job, key, seq). O(len(rows)); no I/O."""
        if rows:
            self._enqueue(PutChunks(tuple(rows)), len(rows))

    def put_params(self, rows: Sequence[ParamRow]) -> None:
        """Upsert a job's params/tags by (job, kind, key)."""
        if rows:
            self._enqueue(PutParams(tuple(rows)), len(rows))

    def expire_series(self, before: float) -> None:
        """Retention: delete chunks whose last point is older than ``before``."""
        self._enqueue(DeleteSeriesBefore(before), 1)

    def withdraw_jobs(self, ids: Sequence[str]) -> None:
        """Take back jobs whose submission was refused because its flush failed:
        their rows and events still queued or held are dropped, never written."""
        if ids:
            self._enqueue(WithdrawJobs(tuple(ids)), len(ids))

    @property
    def full(self) -> str | None:
        """Why writes are held (the disk is full), or None while the store writes."""
        return self._full

    def delete_jobs(self, ids: Sequence[str]) -> None:
        """Delete jobs by id, with their metric series and params (their events
        stay: events have their own retention)."""
        if ids:
            self._enqueue(DeleteJobs(tuple(ids)), len(ids))

    def put_meta(self, key: str, value: str) -> None:
        """Set one meta key. ``schema_version`` belongs to the store and is refused."""
        if key == VERSION_KEY:
            raise StoreError(f"{self.path}: meta key {VERSION_KEY!r} is reserved for the store")
        self._enqueue(PutMeta(key, value), 1)

    def put_token(self, row: TokenRow) -> None:
        """Upsert a token by hash."""
        self._enqueue(PutToken(row), 1)

    def delete_token(self, hash: str) -> None:
        """Forget a token by hash."""
        self._enqueue(DeleteToken(hash), 1)

    async def flush(self) -> None:
        """Resolve once everything enqueued before the call is committed.

        Never blocks the event loop: the writer completes the future with
        ``loop.call_soon_threadsafe``. Raises :class:`StoreError` for a write that
        failed since the last flush reported one.

        Returns at once when everything enqueued so far is already committed
        (and no failure waits to be reported): a job's ``Started`` or a cycle
        that decided nothing writes nothing, and a round trip through the
        writer thread (two thread switches and a wake-up of the loop) would
        only confirm it.
        """
        if self._settled():
            return
        waiter = AsyncWaiter(asyncio.get_running_loop())
        self._enqueue_waiter(waiter)
        await waiter.future

    def flush_sync(self, timeout: float = 30.0) -> None:
        """:meth:`flush` for blocking callers (CLI tools, tests)."""
        waiter = SyncWaiter()
        self._enqueue_waiter(waiter)
        if not waiter.wait(timeout):
            raise StoreError(f"{self.path}: flush timed out after {timeout}s ({self.stats.queued} rows queued)")
        if waiter.error is not None:
            raise waiter.error

    def _settled(self) -> bool:
        """Every row enqueued is committed, no batch is held, no failure is unreported.

        ``_done`` counts committed and dropped rows; a dropped batch sets
        ``_failure`` before its rows are counted (both under ``_lock``'s
        ordering), so equal counters with no failure mean all of it was written.
        A closed or unstarted store takes the slow path, which says so."""
        with self._lock:
            return (self._thread is not None and not self._closed and self._enqueued == self._done
                    and self._failure is None and self._full is None)

    def _enqueue(self, op: Op, rows: int) -> None:
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.path}: store is closed")
            self._queue.put(op)
            self._enqueued += rows

    def _enqueue_waiter(self, waiter: Waiter) -> None:
        with self._lock:
            if self._thread is None:
                raise StoreError(f"{self.path}: flush before start()")
            if self._closed:
                raise StoreError(f"{self.path}: store is closed")
            self._queue.put(waiter)

    # --- the writer thread -------------------------------------------------------

    def _run(self) -> None:
        batch: Batch | None = None
        held: Batch | None = None
        try:
            while True:
                batch = self._drain(held)
                held = self._commit(batch)
                if batch.stop:
                    return
        except BaseException as exc:  # a bug here must not leave flushes hanging
            log.critical("store writer thread died; the store is closed", exc_info=True)
            with self._lock:
                self._closed = True  # no op can be enqueued after this: drain the rest
            failure = self._failure or _Failure(self.path, exc)
            failure.batches += 1
            waiters = list(batch.waiters) if batch is not None else []
            failure.rows += batch.rows_in if batch is not None else 0
            while True:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                failure.rows += op_rows(op)
                if isinstance(op, SyncWaiter | AsyncWaiter):
                    waiters.append(op)
            self._failure = None if waiters else failure  # reported once, like any failure
            for waiter in waiters:
                waiter.settle(failure.error())

    def _drain(self, held: Batch | None) -> Batch:
        """Block for one op, then take what is queued, up to max_batch_rows rows.

        With a ``held`` batch (the disk is full), add onto it instead, until a
        flush (someone waits for an answer) or ``retry_s`` has passed."""
        if held is None:
            batch = Batch()
            error = _add(batch, self._queue.get())
        else:
            batch, error = held, None
            deadline = time.monotonic() + self._retry_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    op = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                error = error or _add(batch, op)
                if isinstance(op, SyncWaiter | AsyncWaiter | Stop):
                    break
        while not batch.stop:
            if batch.rows_in >= self._max_batch_rows:
                if not self._queue.empty():
                    with self._lock:
                        self._capped += 1
                break
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            failed = _add(batch, op)  # always: a later waiter or Stop must still be seen
            error = error or failed
        if error is not None:
            batch.jobs.clear()  # nothing of a batch that failed to coalesce is written
            batch.events.clear()
            batch.meta.clear()
            batch.tokens.clear()
            batch.chunks.clear()
            batch.params.clear()
            batch.expire = None
            self._fail(batch, error)
        return batch

    def _commit(self, batch: Batch) -> Batch | None:
        """Write one batch and settle its waiters; returns the batch if it is held."""
        written = 0
        if not batch.empty:
            try:
                written = self._write(batch)
            except Exception as exc:  # sqlite3.Error, or a bad value in a row
                if not _is_full(exc):
                    self._fail(batch, exc)
                else:
                    try:
                        written = self._write_when_full(batch, exc)
                    except Exception as again:
                        if not _is_full(again):
                            self._fail(batch, again)
                        elif not batch.stop:
                            return self._hold(batch, again)
                        else:  # closing: nothing will retry it
                            self._fail(batch, again)
        if self._full is not None:  # nothing is held any more
            self._recovered(batch, written)
        if written:
            self._dropping_series = False
        with self._lock:
            self._done += batch.rows_in
            if written:
                self._commits += 1
                self._rows_written += written
                self._largest = max(self._largest, batch.rows_in)
        if batch.waiters:
            wanted = [w for w in batch.waiters if not _abandoned(w)]
            failure = self._failure if wanted else None
            if failure is not None:
                self._failure = None
            for waiter in batch.waiters:
                waiter.settle(None if failure is None else failure.error())
        return None

    def _write_when_full(self, batch: Batch, exc: BaseException) -> int:
        """The disk is full: drop the batch's job metrics (warned once per episode)
        and write the rest — job control goes on as long as it fits."""
        if batch.has_series:
            dropped = batch.drop_series()
            if not self._dropping_series:
                self._dropping_series = True
                log.warning("store %s: disk full (%s): job metrics are dropped until space returns "
                            "(%d rows now; this is logged once)", self.path, exc, dropped)
        if batch.empty:
            return 0
        return self._write(batch)

    def _hold(self, batch: Batch, exc: BaseException) -> Batch:
        """Keep a batch the full disk refused, to retry; its waiters hear StoreFull now."""
        if self._full is None:
            log.error("store %s: disk full (%s): new work is refused; %d rows held in memory and retried "
                      "every %.1f s until space returns", self.path, exc, batch.rows_in, self._retry_s)
        self._full = f"state store is full: {self.path}: {exc}"
        waiters, free = batch.waiters, batch.free
        batch.waiters, batch.free = [], 0
        for i, waiter in enumerate(waiters):
            waiter.settle(None if i < free else StoreFull(self._full))
        return batch

    def _recovered(self, batch: Batch, written: int) -> None:
        """Nothing is held any more: the held batch was written, withdrawn, or
        dropped by another failure (already logged)."""
        if written or batch.empty:
            log.warning("store %s: writable again; the %d rows held since the disk filled are written",
                        self.path, batch.rows_in)
        else:
            log.error("store %s: the %d rows held since the disk filled are dropped (see the error above)",
                      self.path, batch.rows_in)
        self._full = None

    def _fail(self, batch: Batch, exc: BaseException) -> None:
        log.error("store write of %d rows failed: %s", batch.rows_in, exc, exc_info=exc)
        with self._lock:
            self._failed += 1
        if self._failure is None:
            self._failure = _Failure(self.path, exc)
        self._failure.batches += 1
        self._failure.rows += batch.rows_in

    def _write(self, batch: Batch) -> int:
        """One transaction; one executemany per table and statement. Returns rows written."""
        puts = [
            (r.id, r.order, r.state, r.owner, r.account, r.queue, r.submit_time, r.end_time, r.data)
            for r in batch.jobs.values()
            if r is not None
        ]
        deletes = [(job_id,) for job_id, r in batch.jobs.items() if r is None]
        events = [(e.job_id, e.time, e.kind, e.data) for e in batch.events]
        meta = list(batch.meta.items())
        tokens = [(t.hash, t.user, t.role, t.created, t.expires) for t in batch.tokens.values() if t is not None]
        revoked = [(h,) for h, t in batch.tokens.items() if t is None]
        chunks = [(c.job_id, c.key, c.seq, c.kind, c.n, c.t0, c.t1, c.summary, c.data) for c in batch.chunks.values()]
        params = [(p.job_id, p.kind, p.key, p.value, p.time) for p in batch.params.values()]
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch.expire is not None:
                conn.execute("DELETE FROM chunks WHERE t1 < ?", (batch.expire,))
                conn.execute("DELETE FROM params WHERE time < ? AND job_id NOT IN (SELECT job_id FROM chunks)",
                             (batch.expire,))
            if puts:
                conn.executemany(_UPSERT_JOB, puts)
            if deletes:
                conn.executemany("DELETE FROM jobs WHERE id = ?", deletes)
                conn.executemany("DELETE FROM chunks WHERE job_id = ?", deletes)
                conn.executemany("DELETE FROM params WHERE job_id = ?", deletes)
            if chunks:
                conn.executemany(_UPSERT_CHUNK, chunks)
            if params:
                conn.executemany(_UPSERT_PARAM, params)
            if events:
                conn.executemany("INSERT INTO events (job_id, time, kind, data) VALUES (?, ?, ?, ?)", events)
            if meta:
                conn.executemany(_UPSERT_META, meta)
            if tokens:
                conn.executemany(_UPSERT_TOKEN, tokens)
            if revoked:
                conn.executemany("DELETE FROM tokens WHERE hash = ?", revoked)
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("store rollback failed", exc_info=True)
            raise
        expired = 0 if batch.expire is None else 1
        return (len(puts) + len(deletes) + len(events) + len(meta) + len(tokens) + len(revoked) + len(chunks)
                + len(params) + expired)

    # --- reads: synchronous, on the read connection ------------------------------

    def load_active(self) -> list[JobRow]:
        """Every job whose state is not finished, in seq order (the ``jobs_active`` index).

        O(active jobs), independent of the history's size.
        """
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state != '{FINISHED}' ORDER BY seq", ())
        return [JobRow(*row) for row in rows]

    def load_jobs(
        self,
        *,
        ids: Sequence[str] | None = None,
        owner: str | None = None,
        queue: str | None = None,
        finished: bool | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        after: int | None = None,
    ) -> list[JobRow]:
        """Jobs matching every given filter, in seq order; ``limit`` keeps the first ones,
        ``after`` skips those up to that seq (a page's cursor).

        ``since``/``until`` bound a job's time, half-open ``[since, until)``: its
        ``end_time`` if it has one (a finished job), else its ``submit_time``. So
        ``finished=True, since=t`` is "ended at or after t", and ``finished=False,
        since=t`` is "submitted at or after t".
        """
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("owner", owner), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if finished is not None:
            where.append(f"state {'=' if finished else '!='} '{FINISHED}'")
        if since is not None:
            where.append(f"{_TIME} >= ?")
            params.append(since)
        if until is not None:
            where.append(f"{_TIME} < ?")
            params.append(until)
        if after is not None:
            where.append("seq > ?")
            params.append(after)
        tail = f" ORDER BY seq{' LIMIT ?' if limit is not None else ''}"
        limit_params = [limit] if limit is not None else []
        if ids is None:
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs{_where(where)}{tail}"
            return [JobRow(*row) for row in self._read(sql, (*params, *limit_params))]
        unique = list(dict.fromkeys(ids))
        found: list[JobRow] = []
        for start in range(0, len(unique), _IDS_PER_QUERY):
            chunk = unique[start : start + _IDS_PER_QUERY]
            clause = [*where, f"id IN ({', '.join('?' * len(chunk))})"]
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs{_where(clause)}{tail}"
            found.extend(JobRow(*row) for row in self._read(sql, (*params, *chunk, *limit_params)))
        found.sort(key=lambda job: job.order)
        return found if limit is None else found[:limit]

    def events(
        self, job_id: str | None = None, *, since: float | None = None, limit: int | None = None
    ) -> list[EventRow]:
        """Events of one job (or all), ``time >= since``, in (time, insertion) order;
        ``limit`` keeps the first ones."""
        where: list[str] = []
        params: list[Any] = []
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        sql = f"SELECT job_id, time, kind, data FROM events{_where(where)} ORDER BY time, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [EventRow(*row) for row in self._read(sql, params)]

    def get_meta(self, key: str) -> str | None:
        """One meta value, or None."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def tokens(self) -> list[TokenRow]:
        """Every token, oldest first."""
        rows = self._read('SELECT hash, "user", role, created, expires FROM tokens ORDER BY created, hash', ())
        return [TokenRow(*row) for row in rows]

    def series_heads(self, job_id: str) -> list[tuple[str, str, int, int, bytes]]:
        """Each series of a job: (key, kind, points, newest seq, newest summary).

        One range scan of the job's chunk rows (their summaries, not their points)."""
        sql = ("SELECT key, kind, sum(n), max(seq), summary FROM chunks WHERE job_id = ?"
               " GROUP BY key ORDER BY key")
        return [(str(k), str(kind), int(n), int(seq), bytes(s)) for k, kind, n, seq, s in self._read(sql, (job_id,))]

    def chunk_summaries(self, job_id: str, key: str, since: float | None = None,
                        ) -> list[tuple[int, int, float, float, bytes]]:
        """(seq, n, t0, t1, summary) of one series' chunks ending at or after ``since``,
        in order. O(chunks): ~2,000 rows for a million points."""
        sql = "SELECT seq, n, t0, t1, summary FROM chunks WHERE job_id = ? AND key = ?"
        args: list[Any] = [job_id, key]
        if since is not None:
            sql += " AND t1 >= ?"
            args.append(since)
        return [(int(a), int(b), float(c), float(d), bytes(e)) for a, b, c, d, e in self._read(sql + " ORDER BY seq", args)]

    def chunk_data(self, job_id: str, key: str, first: int, last: int) -> list[tuple[int, bytes]]:
        """(seq, data) of one series' chunks ``first..last`` (inclusive), in order."""
        sql = "SELECT seq, data FROM chunks WHERE job_id = ? AND key = ? AND seq BETWEEN ? AND ? ORDER BY seq"
        return [(int(seq), bytes(data)) for seq, data in self._read(sql, (job_id, key, first, last))]

    def params(self, job_id: str) -> list[ParamRow]:
        """A job's params and tags, by kind and key."""
        sql = "SELECT job_id, kind, key, value, time FROM params WHERE job_id = ? ORDER BY kind, key"
        return [ParamRow(*row) for row in self._read(sql, (job_id,))]

    def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._read_lock:
            if self._reader is None:
                raise StoreError(f"{self.path}: store is closed")
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: read failed: {exc}") from exc

    @property
    def stats(self) -> StoreStats:
        """A consistent snapshot of the writer's counters."""
        with self._lock:
            return StoreStats(
                commits=self._commits,
                rows_written=self._rows_written,
                largest_batch=self._largest,
                queued=self._enqueued - self._done,
                failed_batches=self._failed,
                capped_batches=self._capped,
            )


def _add(batch: Batch, op: Op) -> BaseException | None:
    """Coalesce one op; a malformed row fails its whole batch instead of the thread."""
    try:
        batch.add(op)
    except Exception as exc:
        return exc
    return None


def _abandoned(waiter: Waiter) -> bool:
    """A cancelled async flush will not see an error (racy read, only a hint)."""
    return isinstance(waiter, AsyncWaiter) and waiter.future.done()


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""
