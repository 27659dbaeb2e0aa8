"""schedd.store.Store's writer thread: group commit, flush (sync and async), errors, lifecycle.

No test sleeps to guess when the writer is done: each waits on a flush, or enqueues
before ``start()`` so that what forms one batch is certain.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from schedd.store import JobRow, Store, StoreError
from tests.store.make import event, job


def test_group_commit_batches_many_calls(store: Store) -> None:
    for n in range(10_000):
        store.put_jobs([job(n)])
    store.flush_sync()
    stats = store.stats
    assert stats.commits <= 1_000, stats  # ten or more calls per transaction on average
    assert stats.rows_written == 10_000 and stats.queued == 0
    assert stats.largest_batch > 1
    assert len(store.load_active()) == 10_000


def test_batches_stop_draining_at_max_batch_rows(db: Path) -> None:
    s = Store(db, max_batch_rows=250)
    for k in range(10):
        s.put_jobs([job(100 * k + n) for n in range(100)])
    s.start()
    s.flush_sync()
    stats = s.stats
    # an op is never split: 300, 300, 300, 100
    assert (stats.commits, stats.largest_batch, stats.capped_batches) == (4, 300, 3)
    assert len(s.load_jobs()) == 1_000
    s.close()


def test_async_flush_from_a_running_loop(store: Store) -> None:
    async def main() -> list[str]:
        for n in range(100):
            store.put_jobs([job(n)])
            store.add_events([event(n, float(n))])
            if n % 10 == 0:
                await store.flush()
        await asyncio.gather(*(store.flush() for _ in range(20)))
        return [j.id for j in store.load_active()]

    assert asyncio.run(main()) == [str(n) for n in range(100)]
    assert len(store.events()) == 100


def test_flush_waits_for_everything_enqueued_before_it(store: Store) -> None:
    async def main() -> None:
        for round_ in range(20):
            store.put_jobs([job(round_ * 500 + n) for n in range(500)])
            await store.flush()
            assert len(store.load_jobs()) == (round_ + 1) * 500

    asyncio.run(main())


# --- write errors surface at the next flush -----------------------------------------


def poison(db: Path, job_id: str = "poison") -> None:
    """A SQLite trigger that fails any insert of ``job_id``: a real write error, on demand."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TRIGGER poison BEFORE INSERT ON jobs WHEN NEW.id = '{job_id}'"
            " BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )


def test_failed_batch_is_reported_once_by_the_next_flush(store: Store, db: Path) -> None:
    poison(db)
    store.put_jobs([job(1)])
    store.flush_sync()
    store.put_jobs([JobRow("poison", 2, "queued", "ann", "ml", "gpu1", 2.0, None, b"{}")])
    with pytest.raises(StoreError, match=r"1 queued rows dropped.*poisoned row") as info:
        store.flush_sync()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert store.stats.failed_batches == 1
    store.flush_sync()  # reported once
    store.put_jobs([job(3)])
    store.flush_sync()  # the store keeps working
    assert [j.id for j in store.load_jobs()] == ["1", "3"]


def test_a_failure_before_the_flush_call_is_still_reported(db: Path) -> None:
    s = Store(db, max_batch_rows=1)  # one op per batch: the poison fails alone
    poison(db)
    s.put_jobs([JobRow("poison", 1, "queued", "ann", "ml", "gpu1", 1.0, None, b"{}")])
    s.put_jobs([job(2)])
    s.start()
    with pytest.raises(StoreError, match="poisoned row"):
        s.flush_sync()  # its barrier rides in a later batch, which succeeded
    assert [j.id for j in s.load_jobs()] == ["2"]
    s.close()


@pytest.mark.parametrize(
    "bad",
    [
        JobRow("1", "not-a-seq", "queued", "ann", "ml", "gpu1", 1.0, None, b"{}"),  # type: ignore[arg-type]
        JobRow("1", 1, "queued", "ann", "ml", "gpu1", 1.0, None, ["not", "bytes"]),  # type: ignore[arg-type]
        {"id": "1"},  # not a JobRow at all
    ],
    ids=["text-in-integer", "unbindable", "not-a-row"],
)
def test_invalid_row_surfaces_at_async_flush(store: Store, bad: object) -> None:
    async def main() -> None:
        store.put_jobs([bad])  # type: ignore[list-item]
        with pytest.raises(StoreError, match="write failed"):
            await store.flush()
        store.put_jobs([job(2)])
        await store.flush()

    asyncio.run(main())
    assert [j.id for j in store.load_jobs()] == ["2"]


@contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process's connection holding the write lock."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_database_locked_by_another_process(db: Path) -> None:
    s = Store(db, busy_timeout_s=0.05)
    s.start()
    with locked(db):
        s.put_jobs([job(1)])
        with pytest.raises(StoreError, match="database is locked"):
            s.flush_sync()
        assert s.load_jobs() == []  # reads are not blocked by the writer lock
    s.put_jobs([job(2)])
    s.flush_sync()
    assert [j.id for j in s.load_jobs()] == ["2"]
    s.close()


def test_cancelled_flush_does_not_swallow_the_error(db: Path) -> None:
    s = Store(db, busy_timeout_s=1.0)
    s.start()

    async def main() -> None:
        with locked(db):
            s.put_jobs([job(1)])
            task = asyncio.create_task(s.flush())
            await asyncio.sleep(0)  # the task enqueues its barrier and waits
            task.cancel()  # long before the writer gives up on the lock (1 s)
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(StoreError, match="database is locked"):
                await s.flush()

    asyncio.run(main())
    s.close()


# --- lifecycle ----------------------------------------------------------------------


def test_close_commits_what_is_queued_even_if_never_started(db: Path) -> None:
    s = Store(db)
    s.put_jobs([job(1)])
    s.add_events([event(1, 1.0)])
    s.close()
    s2 = Store(db)
    assert [j.id for j in s2.load_jobs()] == ["1"] and len(s2.events()) == 1
    s2.close()


def test_close_raises_an_unreported_failure(db: Path) -> None:
    s = Store(db)
    poison(db)
    s.put_jobs([JobRow("poison", 1, "queued", "ann", "ml", "gpu1", 1.0, None, b"{}")])
    s.start()
    with pytest.raises(StoreError, match="poisoned row"):
        s.close()
    s.close()  # a second close does nothing


def test_no_writes_reads_or_flushes_after_close(db: Path) -> None:
    s = Store(db)
    s.start()
    s.close()
    for call in (
        lambda: s.put_jobs([job(1)]),
        lambda: s.add_events([event(1, 1.0)]),
        lambda: s.delete_jobs(["1"]),
        lambda: s.put_meta("k", "v"),
        lambda: s.delete_token("h"),
        s.flush_sync,
        s.load_active,
        s.start,
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_flush_before_start_is_an_error(db: Path) -> None:
    s = Store(db)
    with pytest.raises(StoreError, match="before start"):
        s.flush_sync()
    s.close()


def test_flush_sync_times_out_instead_of_hanging(db: Path) -> None:
    s = Store(db, busy_timeout_s=5.0)
    s.start()
    with locked(db):
        s.put_jobs([job(1)])
        with pytest.raises(StoreError, match="timed out"):
            s.flush_sync(timeout=0.05)
    s.flush_sync()  # the lock is gone: the writer got through
    assert [j.id for j in s.load_jobs()] == ["1"]
    s.close()


def test_stats_count_rows_not_calls(db: Path) -> None:
    s = Store(db)
    s.put_jobs([job(1), job(1), job(2)])  # job 1 twice: written once
    s.add_events([event(1, 1.0), event(1, 2.0)])
    s.put_meta("k", "v")
    assert s.stats.queued == 6
    s.start()
    s.flush_sync()
    stats = s.stats
    assert (stats.commits, stats.rows_written, stats.largest_batch, stats.queued) == (1, 5, 6, 0)
    s.close()


class Bug(BaseException):
    """Not an Exception: gets past the per-batch error handling, like a bug would."""


def test_a_dying_writer_fails_flushes_instead_of_hanging(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(db)

    def broken(batch: object) -> int:
        raise Bug("writer bug")

    monkeypatch.setattr(s, "_write", broken)
    s.put_jobs([job(1)])
    s.start()
    with pytest.raises(StoreError, match="1 queued rows dropped.*Bug: writer bug"):
        s.flush_sync()
    with pytest.raises(StoreError, match="closed"):
        s.put_jobs([job(2)])
    s.close()
