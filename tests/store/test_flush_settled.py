"""Store.flush's shortcut: nothing uncommitted means no round trip through the writer.

The daemon flushes before every message to an agent (a job's Started, a cycle that
decided nothing): when every row enqueued is already committed, the flush returns
at once. These tests pin what the shortcut must never skip: rows still in flight,
and a failure no flush has reported yet.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from schedd.store import JobRow, Store, StoreError
from tests.store.make import job
from tests.store.test_sqlite_writer import poison


def test_a_flush_with_nothing_new_does_not_wake_the_writer(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        store.put_jobs([job(1)])
        await store.flush()
        commits = store.stats.commits

        def no_waiter(waiter: object) -> None:
            raise AssertionError("the writer was asked for a flush with nothing to commit")

        monkeypatch.setattr(store, "_enqueue_waiter", no_waiter)
        for _ in range(3):
            await store.flush()
        assert store.stats.commits == commits

    asyncio.run(main())


def test_a_flush_waits_for_rows_not_yet_committed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    write = store._write

    def held_write(batch: object) -> int:
        gate.wait()
        return write(batch)  # type: ignore[arg-type]

    async def main() -> None:
        await store.flush()  # settled: the shortcut applies from here on
        monkeypatch.setattr(store, "_write", held_write)
        store.put_jobs([job(7)])
        flush = asyncio.ensure_future(store.flush())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not flush.done()  # the writer holds the row: the flush must wait for it
        gate.set()
        await flush
        assert [j.id for j in store.load_jobs()] == ["7"]

    asyncio.run(main())


def test_an_unreported_failure_is_not_skipped(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store(db)
    poison(db)
    committed = threading.Event()
    commit = s._commit

    def noted_commit(batch: object) -> object:
        out = commit(batch)  # type: ignore[arg-type]
        committed.set()
        return out

    monkeypatch.setattr(s, "_commit", noted_commit)
    s.put_jobs([JobRow("poison", 1, "queued", "ann", "ml", "gpu1", 1.0, None, b"{}")])
    s.start()
    assert committed.wait(30)  # the batch failed with no flush waiting: its rows are counted done

    async def main() -> None:
        with pytest.raises(StoreError, match="poisoned row"):
            await s.flush()
        await s.flush()  # reported once: settled again

    asyncio.run(main())
    s.close()


def test_a_closed_store_still_refuses_a_flush(db: Path) -> None:
    s = Store(db)
    s.start()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        asyncio.run(s.flush())
