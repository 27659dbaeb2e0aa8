"""schedd.store._batch: a batch coalesces keyed writes exactly like replaying the calls."""

from __future__ import annotations

import pytest

from schedd.store._batch import (
    AddEvents,
    Batch,
    DeleteJobs,
    DeleteToken,
    Op,
    PutJobs,
    PutMeta,
    PutToken,
    Stop,
    SyncWaiter,
)
from tests.store.make import event, job, token

A1, A2, B = job(1, state="queued"), job(1, state="running"), job(2)


def coalesce(*ops: Op) -> Batch:
    batch = Batch()
    for op in ops:
        batch.add(op)
    return batch


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ([PutJobs((A1,)), PutJobs((A2,))], {"1": A2}),  # last upsert wins
        ([PutJobs((A1, A2, B))], {"1": A2, "2": B}),  # also inside one call
        ([PutJobs((A1,)), DeleteJobs(("1",))], {"1": None}),  # put then delete: delete
        ([DeleteJobs(("1",)), PutJobs((A2,))], {"1": A2}),  # delete then put: put
        ([PutJobs((A1,)), DeleteJobs(("1",)), PutJobs((A2,))], {"1": A2}),
    ],
)
def test_jobs_last_write_wins(ops: list[Op], expected: dict[str, object]) -> None:
    assert coalesce(*ops).jobs == expected


def test_events_keep_order_and_rows_in_counts_every_row() -> None:
    e = [event(1, 5.0), event(1, 1.0), event(2, 3.0)]
    batch = coalesce(AddEvents((e[0],)), PutJobs((A1, A2)), AddEvents((e[1], e[2])))
    assert batch.events == e
    assert batch.rows_in == 5  # before coalescing: A1 and A2 both count


def test_meta_tokens_waiters_and_stop() -> None:
    waiter = SyncWaiter()
    batch = coalesce(
        PutMeta("k", "1"), PutMeta("k", "2"), PutToken(token("h")), DeleteToken("h"), waiter, Stop()
    )
    assert batch.meta == {"k": "2"}
    assert batch.tokens == {"h": None}
    assert batch.waiters == [waiter]
    assert batch.stop


def test_only_waiters_is_empty() -> None:
    assert coalesce(SyncWaiter()).empty
    assert not coalesce(PutMeta("k", "v")).empty
