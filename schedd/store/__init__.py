"""Persistence: every job, event, token and meta value schedd must not lose.

:class:`Store` (SQLite, WAL, one writer thread with group commit) is the embedded
default; a PostgreSQL store for highly-available deployments will implement the same
methods over the same rows. Writes enqueue and return; ``await store.flush()``
resolves once they are committed. Reads are synchronous, for startup and history.
"""

from schedd.store.rows import EventRow, JobRow, StoreError, StoreStats, TokenRow
from schedd.store.sqlite import Store, StoreFull

__all__ = ["EventRow", "JobRow", "Store", "StoreError", "StoreFull", "StoreStats", "TokenRow"]
