"""Write operations as queued by the callers, and their coalescing into one batch.

A batch is everything the writer thread drained from the queue at once; it is
committed as ONE transaction. Keyed writes coalesce in enqueue order, last write
wins: ``put_jobs(a); delete_jobs(a.id); put_jobs(a2)`` in one batch writes ``a2``
only, and ``put; delete`` writes the delete only. That is exactly the effect of
replaying the calls one by one, so the batch can then use one ``executemany`` per
table and statement, in any order. Events are append-only and keep their order.

Because coalescing is replay order, a batch that could not be committed (the
disk is full) can be *held* and later ops added on top of it: the held batch
plus the new ops is exactly the replay of everything not yet committed. A
waiter records whether any data came before it in its batch (``free``): one
that came first has nothing uncommitted before it, whatever becomes of the
rest of the batch.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from schedd.store.rows import EventRow, JobRow, StoreError, TokenRow
from schedd.store.series import ChunkRow, ParamRow

__all__ = [
    "AddEvents",
    "AsyncWaiter",
    "Batch",
    "DeleteJobs",
    "DeleteSeriesBefore",
    "DeleteToken",
    "Op",
    "WithdrawJobs",
    "PutChunks",
    "PutJobs",
    "PutMeta",
    "PutParams",
    "PutToken",
    "Stop",
    "SyncWaiter",
    "Waiter",
]


@dataclass(frozen=True, slots=True)
class PutJobs:
    rows: tuple[JobRow, ...]


@dataclass(frozen=True, slots=True)
class DeleteJobs:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WithdrawJobs:
    """Jobs whose submission could not be committed and was refused: their rows
    still queued (the job, its events, its series) are dropped, and the job row
    deleted should one exist. Unlike :class:`DeleteJobs`, the events go too:
    nothing of a refused submission may reach the database later."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AddEvents:
    rows: tuple[EventRow, ...]


@dataclass(frozen=True, slots=True)
class PutMeta:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class PutToken:
    row: TokenRow


@dataclass(frozen=True, slots=True)
class DeleteToken:
    hash: str


@dataclass(frozen=True, slots=True)
class PutChunks:
    rows: tuple[ChunkRow, ...]


@dataclass(frozen=True, slots=True)
class PutParams:
    rows: tuple[ParamRow, ...]


@dataclass(frozen=True, slots=True)
class DeleteSeriesBefore:
    """Retention: chunks whose last point is older than ``time``, and params of
    jobs left with no chunk that were set before it."""

    time: float


class SyncWaiter:
    """A flush barrier a blocking caller waits on."""

    __slots__ = ("_done", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.error: StoreError | None = None

    def settle(self, error: StoreError | None) -> None:
        self.error = error
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class AsyncWaiter:
    """A flush barrier that completes an asyncio future on its own loop's thread."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()

    @property
    def future(self) -> asyncio.Future[None]:
        return self._future

    def settle(self, error: StoreError | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_complete, self._future, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _complete(future: asyncio.Future[None], error: StoreError | None) -> None:
    if future.done():  # the flush was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


Waiter = SyncWaiter | AsyncWaiter


@dataclass(frozen=True, slots=True)
class Stop:
    """Sentinel: the writer commits what it drained so far, then exits."""


Op = PutJobs | DeleteJobs | WithdrawJobs | PutChunks | PutParams | DeleteSeriesBefore | AddEvents | PutMeta | PutToken | DeleteToken | SyncWaiter | AsyncWaiter | Stop


def op_rows(op: Op) -> int:
    """How many rows an op carries (0 for a waiter or the stop sentinel)."""
    if isinstance(op, PutJobs | AddEvents | PutChunks | PutParams):
        return len(op.rows)
    if isinstance(op, DeleteJobs | WithdrawJobs):
        return len(op.ids)
    if isinstance(op, PutMeta | PutToken | DeleteToken | DeleteSeriesBefore):
        return 1
    return 0


@dataclass(slots=True)
class Batch:
    """The coalesced content of one transaction. ``add`` is O(rows of the op)."""

    jobs: dict[str, JobRow | None] = field(default_factory=dict)  # None: delete
    events: list[EventRow] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, TokenRow | None] = field(default_factory=dict)  # None: delete
    #: (job, key, seq) -> chunk; (job, kind, key) -> param. A deleted job's are
    #: dropped here and its rows deleted before these are written (replay order).
    chunks: dict[tuple[str, str, int], ChunkRow] = field(default_factory=dict)
    params: dict[tuple[str, str, str], ParamRow] = field(default_factory=dict)
    expire: float | None = None  # DeleteSeriesBefore's time (the latest wins), run first
    waiters: list[Waiter] = field(default_factory=list)
    #: How many of ``waiters`` (a prefix) were added before any data op: they
    #: wait for nothing in this batch, so they succeed even if it fails.
    free: int = 0
    dirty: bool = False  # a data op was added (never reset: a held batch stays dirty)
    rows_in: int = 0  # rows enqueued into this batch, before coalescing
    stop: bool = False

    def add(self, op: Op) -> None:
        self.rows_in += op_rows(op)
        if not isinstance(op, SyncWaiter | AsyncWaiter | Stop):
            self.dirty = True
        match op:
            case PutJobs(rows):
                jobs = self.jobs
                for row in rows:
                    jobs[row.id] = row
            case DeleteJobs(ids):
                for job_id in ids:
                    self.jobs[job_id] = None
                self._drop_series(set(ids))
            case WithdrawJobs(ids):
                for job_id in ids:
                    self.jobs[job_id] = None
                gone = set(ids)
                self._drop_series(gone)
                if self.events:
                    self.events = [e for e in self.events if e.job_id not in gone]
            case PutChunks(rows):
                chunks = self.chunks
                for c in rows:
                    chunks[(c.job_id, c.key, c.seq)] = c
            case PutParams(rows):
                for p in rows:
                    self.params[(p.job_id, p.kind, p.key)] = p
            case DeleteSeriesBefore(time):
                self.expire = time if self.expire is None else max(self.expire, time)
            case AddEvents(rows):
                self.events.extend(rows)
            case PutMeta(key, value):
                self.meta[key] = value
            case PutToken(row):
                self.tokens[row.hash] = row
            case DeleteToken(token_hash):
                self.tokens[token_hash] = None
            case SyncWaiter() | AsyncWaiter():
                self.waiters.append(op)
                if not self.dirty:
                    self.free = len(self.waiters)
            case Stop():
                self.stop = True

    def _drop_series(self, gone: set[str]) -> None:
        if self.chunks:
            self.chunks = {k: c for k, c in self.chunks.items() if k[0] not in gone}
        if self.params:
            self.params = {k: p for k, p in self.params.items() if k[0] not in gone}

    @property
    def has_series(self) -> bool:
        """Job metrics in the batch: what a full disk drops first (see ``sqlite.py``)."""
        return bool(self.chunks or self.params or self.expire is not None)

    def drop_series(self) -> int:
        """Drop the batch's metric chunks, params and retention; returns how many rows."""
        dropped = len(self.chunks) + len(self.params) + (self.expire is not None)
        self.chunks, self.params, self.expire = {}, {}, None
        return dropped

    @property
    def empty(self) -> bool:
        """True when there is nothing to write (only waiters or the stop sentinel)."""
        return not (self.jobs or self.events or self.meta or self.tokens or self.chunks or self.params
                    or self.expire is not None)
