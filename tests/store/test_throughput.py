"""A measurement, not a timed assertion: rows/s for 100k job upserts and 100k events,
each enqueued by its own call the way the daemon does, through to a completed flush.
Run with ``-s`` to see the numbers; the assertions only check that everything landed."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from schedd.store import EventRow, JobRow, Store
from tests.store.make import event, job

N = 100_000
RECORD = b'{"record":"' + b"x" * 600 + b'"}'  # about the size of a msgspec JobRecord


def test_measure_100k_upserts_and_events(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    inserts = [job(n, data=RECORD) for n in range(N)]
    updates = [job(n, state="finished", end=float(N + n), data=RECORD) for n in range(N)]
    events = [event(n, float(n), "end") for n in range(N)]
    results = []

    def measure(label: str, enqueue: Callable[[], None]) -> None:
        commits = store.stats.commits
        start = time.perf_counter()
        enqueue()
        store.flush_sync(timeout=300)
        seconds = time.perf_counter() - start
        results.append(f"{label:22} {N / seconds:>9,.0f} rows/s  ({store.stats.commits - commits} commits)")

    def upsert_each(rows: list[JobRow]) -> None:
        for row in rows:
            store.put_jobs([row])

    def add_each(rows: list[EventRow]) -> None:
        for row in rows:
            store.add_events([row])

    measure("job upserts (insert)", lambda: upsert_each(inserts))
    measure("job upserts (update)", lambda: upsert_each(updates))
    measure("events", lambda: add_each(events))
    with capsys.disabled():
        print("\nstore throughput, 100k rows, one call per row:\n  " + "\n  ".join(results))
    assert store.load_active() == [] and len(store.load_jobs(finished=True)) == N
    assert len(store.events()) == N
