"""History pruning on a real SQLite file: what ended before the window goes,
with everything recorded of it; nothing else does; a batch is bounded; an
array parent outlives its subjobs; freed pages are reused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from schedd.store import EventRow, JobRow, Store
from schedd.store.prune import HistoryPruner, prune_batch
from schedd.store.series import ChunkRow, ParamRow


def _job(job_id: str, seq: int, state: str, end: float | None, submit: float = 0.0) -> JobRow:
    return JobRow(job_id, seq, state, "ann", "ml", "default", submit, end, b"{}" * 200)


def _fill(store: Store, rows: list[JobRow]) -> None:
    store.put_jobs(rows)
    store.add_events([EventRow(r.id, r.submit_time, "submit", b"{}") for r in rows])
    store.put_chunks([ChunkRow(r.id, "loss", 0, "custom", 1, 1.0, 1.0, b"s", b"d") for r in rows])
    store.put_params([ParamRow(r.id, "param", "lr", "0.1", 1.0) for r in rows])
    store.flush_sync()


def _counts(store: Store, job_id: str) -> tuple[int, int, int, int]:
    return (len(store.load_jobs(ids=[job_id])), len(store.events(job_id)),
            len(store.series_heads(job_id)), len(store.params(job_id)))


def test_finished_jobs_that_ended_before_the_window_go_with_their_events_and_series(store: Store, db: Path) -> None:
    _fill(store, [
        _job("1", 1, "finished", 100.0),
        _job("2", 2, "finished", 199.0),
        _job("3", 3, "finished", 200.0),  # ended at the window's start: kept (half-open)
        _job("4", 4, "queued", None, submit=5.0),  # old but not finished
        _job("5", 5, "running", None, submit=5.0),
    ])
    pruner = HistoryPruner(db)
    try:
        assert sorted(pruner.prune(200.0)) == ["1", "2"]
        assert pruner.prune(200.0) == []
    finally:
        pruner.close()
    assert _counts(store, "1") == _counts(store, "2") == (0, 0, 0, 0)
    for kept in ("3", "4", "5"):
        assert _counts(store, kept) == (1, 1, 1, 1), kept
    assert [r.id for r in store.load_active()] == ["4", "5"]


def test_a_batch_is_bounded_and_the_batches_add_up_to_every_old_job(store: Store, db: Path) -> None:
    _fill(store, [_job(str(i), i, "finished", float(i)) for i in range(1, 26)])
    pruner = HistoryPruner(db)
    gone: list[str] = []
    try:
        while len(batch := pruner.prune(1000.0, limit=10)) == 10:
            gone += batch
        gone += batch
    finally:
        pruner.close()
    assert len(batch) == 5 and sorted(gone, key=int) == [str(i) for i in range(1, 26)]
    assert store.load_jobs() == []


def test_an_array_parent_goes_only_once_its_subjobs_are_gone(store: Store, db: Path) -> None:
    # "7[]" sorts after its subjobs, "70" and "7" are other jobs sharing the prefix.
    _fill(store, [
        _job("7[]", 1, "finished", 50.0),
        _job("7[1]", 2, "finished", 40.0),
        _job("7[2]", 3, "finished", 300.0),  # still within the window
        _job("7", 4, "finished", 10.0),
        _job("70", 5, "finished", 10.0),
    ])
    pruner = HistoryPruner(db)
    try:
        assert sorted(pruner.prune(100.0)) == ["7", "70", "7[1]"]
        assert pruner.prune(100.0) == []  # 7[2] is left: the parent stays
        assert sorted(pruner.prune(400.0)) == ["7[2]"]
        assert pruner.prune(400.0) == ["7[]"]
    finally:
        pruner.close()
    assert store.load_jobs() == []


def test_a_failed_batch_rolls_back_and_the_connection_stays_usable(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE jobs (id TEXT)")  # no end_time: the SELECT fails inside the transaction
    try:
        prune_batch(conn, 1.0)
    except sqlite3.OperationalError:
        pass
    else:
        raise AssertionError("expected the missing column to fail the batch")
    assert not conn.in_transaction
    conn.close()


def test_pruned_pages_are_reused_so_the_file_stops_growing(store: Store, db: Path) -> None:
    """A window's worth of jobs, again and again, each round pruning the one
    before: the database (its pages, WAL included) stops growing after the
    first rounds (SQLite's freelist, no VACUUM); unpruned, it would grow 6x."""
    pruner = HistoryPruner(db)
    reader = sqlite3.connect(db)
    pages = []
    try:
        for round_ in range(8):
            base = round_ * 2000
            _fill(store, [_job(str(base + i), base + i, "finished", float(base + i)) for i in range(2000)])
            while len(pruner.prune(float(base))) == 500:
                pass
            pages.append(reader.execute("PRAGMA page_count").fetchone()[0])
    finally:
        pruner.close()
        reader.close()
    assert len(store.load_jobs()) == 2000
    assert pages[-1] <= pages[2] * 1.1, pages
