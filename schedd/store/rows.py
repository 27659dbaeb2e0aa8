"""What the store keeps, as plain frozen rows, and the one error it raises.

The rows are the whole contract between ``state.py`` and any store backend
(SQLite now, PostgreSQL later): a backend persists them and hands them back;
it never looks inside ``data`` (the msgspec JSON of :class:`schedd.daemon.records.JobRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass

from schedd.errors import ScheddError

__all__ = ["EventRow", "JobRow", "StoreError", "StoreStats", "TokenRow"]


class StoreError(ScheddError):
    """The store cannot do what was asked: it cannot open or migrate the database,
    a write failed in the writer thread (raised by the next ``flush``), or the store
    is closed. The message names the database file and the cause."""


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job, keyed by ``id``; ``put_jobs`` upserts it whole."""

    id: str  # "17", "17[]" (array parent), "17[3]" (subjob)
    order: int  # global submission sequence number (core Job.order); the load order; column ``seq``
    state: str  # a JobState value: held|queued|waiting|running|exiting|finished
    owner: str
    account: str
    queue: str
    submit_time: float
    end_time: float | None  # set when finished
    data: bytes  # the full job record, opaque to the store (msgspec JSON)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One transition of one job; append-only, read back in (time, insertion) order."""

    job_id: str
    time: float
    kind: str  # "submit", "start", "end", "hold", "release", "requeue", "alter", "cancel"...
    data: bytes = b"{}"


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An API token. Only its sha256 is stored; the token itself never is."""

    hash: str  # sha256 hex of the token
    user: str
    role: str  # user | operator | admin
    created: float
    expires: float | None = None  # refused from this time on (``schedd token create --expires-in``); None: never


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters of the writer since the store was opened, for ``/metrics``."""

    commits: int  # transactions committed by the writer thread
    rows_written: int  # rows sent to SQLite (repeated upserts of one key in a batch count once)
    largest_batch: int  # most rows enqueued into one transaction
    queued: int  # rows enqueued and not yet committed (or dropped by a failed batch)
    failed_batches: int  # transactions rolled back because a write failed
    capped_batches: int  # batches that stopped draining at max_batch_rows (more was queued)
