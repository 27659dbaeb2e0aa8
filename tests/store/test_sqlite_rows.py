"""schedd.store.Store reads and writes: round trips, upserts, filters, ordering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schedd.store import Store, StoreError
from tests.store.make import event, job, token


def test_jobs_round_trip_every_field(store: Store) -> None:
    rows = [
        job(1),
        job(2, state="finished", owner="bob", account="cv", queue="gpu8", submit=2.5, end=9.75, data=b"\x00\xff"),
    ]
    store.put_jobs(rows)
    store.flush_sync()
    assert store.load_jobs() == rows


def test_upsert_replaces_the_whole_row(store: Store) -> None:
    store.put_jobs([job(1, state="running", data=b"v1")])
    store.flush_sync()
    store.put_jobs([job(1, state="finished", end=50.0, data=b"v2")])
    store.flush_sync()
    assert store.load_jobs() == [job(1, state="finished", end=50.0, data=b"v2")]
    assert store.load_active() == []


def test_load_active_excludes_finished_in_seq_order(store: Store) -> None:
    states = ["finished", "held", "queued", "finished", "waiting", "running", "exiting"]
    # enqueued in reverse seq order: the result must still come back by seq
    store.put_jobs([job(n, state=s) for n, s in reversed(list(enumerate(states, 1)))])
    store.flush_sync()
    assert [(j.id, j.state) for j in store.load_active()] == [
        ("2", "held"), ("3", "queued"), ("5", "waiting"), ("6", "running"), ("7", "exiting"),
    ]


def test_delete_jobs_keeps_their_events(store: Store) -> None:
    store.put_jobs([job(1), job(2)])
    store.add_events([event(1, 1.0)])
    store.flush_sync()
    store.delete_jobs(["1", "missing"])
    store.flush_sync()
    assert [j.id for j in store.load_jobs()] == ["2"]
    assert store.events("1") == [event(1, 1.0)]


def test_calls_in_one_batch_apply_in_order(db: Path) -> None:
    s = Store(db)  # enqueued before start(): all of it is the first batch
    s.put_jobs([job(1), job(2)])
    s.delete_jobs(["1"])
    s.delete_jobs(["2"])
    s.put_jobs([job(2, state="running")])
    s.start()
    s.flush_sync()
    assert s.load_jobs() == [job(2, state="running")]
    assert s.stats.commits == 1
    s.close()


# --- load_jobs filters, as a table --------------------------------------------------
# time of a job for since/until: end_time if it has one, else submit_time
FILTER_JOBS = [
    job(1, state="finished", owner="ann", queue="gpu1", submit=1, end=100),
    job(2, state="finished", owner="bob", queue="gpu8", submit=2, end=20),
    job(3, state="running", owner="ann", queue="gpu8", submit=30),
    job(4, state="queued", owner="bob", queue="gpu1", submit=40),
    job(5, state="finished", owner="ann", queue="gpu1", submit=5, end=50),
    job(6, state="held", owner="cat", queue="cpu", submit=60),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, "1 2 3 4 5 6"),
        ({"owner": "ann"}, "1 3 5"),
        ({"queue": "gpu1"}, "1 4 5"),
        ({"owner": "bob", "queue": "gpu1"}, "4"),
        ({"finished": True}, "1 2 5"),
        ({"finished": False}, "3 4 6"),
        ({"finished": True, "since": 50}, "1 5"),  # end_time >= 50
        ({"finished": True, "until": 50}, "2"),  # end_time < 50 (half-open)
        ({"finished": True, "since": 20, "until": 100}, "2 5"),
        ({"finished": False, "since": 40}, "4 6"),  # submit_time >= 40
        ({"since": 40, "until": 60}, "4 5"),  # mixed: end_time or submit_time
        ({"owner": "ann", "finished": True, "since": 60}, "1"),
        ({"limit": 2}, "1 2"),  # the first ones in seq order
        ({"finished": False, "limit": 0}, ""),
        ({"ids": ["6", "2", "nope", "2"]}, "2 6"),
        ({"ids": []}, ""),
        ({"ids": ["1", "3", "5"], "owner": "ann", "finished": True}, "1 5"),
        ({"ids": ["5", "3", "1"], "limit": 2}, "1 3"),
    ],
)
def test_load_jobs_filters(store: Store, query: dict[str, Any], expected: str) -> None:
    store.put_jobs(FILTER_JOBS)
    store.flush_sync()
    assert " ".join(j.id for j in store.load_jobs(**query)) == expected


def test_load_jobs_many_ids_span_several_queries(store: Store) -> None:
    store.put_jobs([job(n) for n in range(1, 1301)])
    store.flush_sync()
    wanted = [str(n) for n in range(1300, 0, -3)] + ["absent"]
    got = store.load_jobs(ids=wanted)
    assert [j.id for j in got] == sorted(wanted[:-1], key=int)
    assert [j.id for j in store.load_jobs(ids=wanted, limit=3)] == ["1", "4", "7"]


# --- events, tokens, meta -----------------------------------------------------------


def test_events_ordered_by_time_then_insertion(store: Store) -> None:
    store.add_events([event(1, 2.0, "start"), event(2, 1.0, "submit")])
    store.add_events([event(1, 2.0, "end", b'{"exit":0}')])  # same time: after "start"
    store.add_events([event(1, 0.5, "submit")])
    store.flush_sync()
    assert [(e.job_id, e.kind) for e in store.events()] == [("1", "submit"), ("2", "submit"), ("1", "start"), ("1", "end")]
    assert store.events("1", since=1.0) == [event(1, 2.0, "start"), event(1, 2.0, "end", b'{"exit":0}')]
    assert [e.kind for e in store.events("1", limit=2)] == ["submit", "start"]
    assert [e.job_id for e in store.events(since=1.0, limit=1)] == ["2"]
    assert store.events("nope") == []


def test_tokens_upsert_and_delete(store: Store) -> None:
    store.put_token(token("b" * 64, "bob", "user", created=2.0))
    store.put_token(token("a" * 64, "ann", "user", created=1.0))
    store.put_token(token("b" * 64, "bob", "admin", created=2.0))
    store.flush_sync()
    assert store.tokens() == [token("a" * 64, "ann", "user", 1.0), token("b" * 64, "bob", "admin", 2.0)]
    store.delete_token("a" * 64)
    store.flush_sync()
    assert [t.user for t in store.tokens()] == ["bob"]


def test_meta(store: Store) -> None:
    assert store.get_meta("next_seq") is None
    store.put_meta("next_seq", "17")
    store.put_meta("next_seq", "18")
    store.flush_sync()
    assert store.get_meta("next_seq") == "18"
    with pytest.raises(StoreError, match="reserved"):
        store.put_meta("schema_version", "7")


def test_reads_see_only_committed_writes(db: Path) -> None:
    s = Store(db)
    s.put_jobs([job(1)])  # not started: nothing committed yet
    assert s.load_jobs() == []
    s.start()
    s.flush_sync()
    assert [j.id for j in s.load_jobs()] == ["1"]
    s.close()
