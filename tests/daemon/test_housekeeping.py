"""The history window on a State with a real store and a virtual clock: a
sweep deletes what ended before ``history_days`` from SQLite and from every
in-memory index; running, queued and recent jobs stay; 0 keeps everything."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from schedd.config import load_pipeline, load_settings
from schedd.core.scheduler import run_cycle
from schedd.daemon import housekeeping
from schedd.daemon.reconcile import on_register
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.daemon.state import State
from schedd.protocol import Exited, GpuInfo, Launch, Register
from schedd.store import Store
from schedd.store.prune import HistoryPruner

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[State, Store, HistoryPruner, Clock]]:
    settings = msgspec.structs.replace(load_settings(), history_days=2.0)
    store = Store(tmp_path / "schedd.db")
    store.start()
    clock = Clock()
    state = State(settings, load_pipeline(settings.policies_path()), store, clock)
    on_register(state, Register("n1", 4, 100_000, [GpuInfo(0, "u0", "fake", 80_000)], True), lambda m: None, "x")
    pruner = HistoryPruner(store.path)
    yield state, store, pruner, clock
    pruner.close()
    store.close()


def _submit(state: State, array: str = "", hold: bool = False) -> str:
    req = SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=0)], array=array,
                        hold=hold)
    return state.submit(req, "ann").id


def _run_all(state: State, clock: Clock) -> None:
    """Cycles until nothing is pending; every launched rank exits at once, at ``clock.now``."""
    while state.pending:
        for _, msg in state.apply(run_cycle(state.snapshot(clock.now), state.pipeline), clock.now):
            if isinstance(msg, Launch):
                state.rank_exited(Exited(msg.job_id, msg.attempt, msg.rank, 0, "exited", clock.now, clock.now))


def _in_store(store: Store, job_id: str) -> bool:
    store.flush_sync()
    return bool(store.load_jobs(ids=[job_id]))


@pytest.mark.asyncio
async def test_a_job_older_than_the_window_leaves_the_store_and_memory(
        world: tuple[State, Store, HistoryPruner, Clock]) -> None:
    state, store, pruner, clock = world
    old = _submit(state)
    _run_all(state, clock)
    clock.now += 1.5 * DAY
    recent = _submit(state)
    _run_all(state, clock)
    waiting = _submit(state, hold=True)  # held since long before the window: not history
    clock.now += 1.0 * DAY  # old ended 2.5 days ago, recent 1 day ago
    store.flush_sync()
    assert state.jobs[old].state == "finished" and store.events(old)

    assert await housekeeping.sweep(state, pruner) == 1
    assert old not in state.jobs and state.lookup(old) is None
    assert not _in_store(store, old) and store.events(old) == []
    assert list(state.finished_ids) == [recent]
    assert state.jobs[recent].state == "finished" and _in_store(store, recent)
    assert state.jobs[waiting].state == "held" and _in_store(store, waiting)

    clock.now += 10 * DAY
    assert await housekeeping.sweep(state, pruner) == 1  # recent; the held job stays however old
    assert set(state.jobs) == {waiting} and not state.finished_ids


@pytest.mark.asyncio
async def test_a_sweep_goes_batch_by_batch_and_an_array_parent_goes_last(
        world: tuple[State, Store, HistoryPruner, Clock]) -> None:
    state, store, pruner, clock = world
    parent = _submit(state, array="1-5")
    _run_all(state, clock)
    assert state.jobs[parent].state == "finished"
    clock.now += 3 * DAY
    store.flush_sync()
    assert parent in state.array_left and parent in state.array_running
    assert await housekeeping.sweep(state, pruner, batch=2) == 6
    assert state.jobs == {} and store.load_jobs() == []
    assert state.array_left == {} and state.array_running == {} and not state.finished_ids


@pytest.mark.asyncio
async def test_history_days_zero_keeps_everything(world: tuple[State, Store, HistoryPruner, Clock]) -> None:
    state, store, pruner, clock = world
    state.settings = msgspec.structs.replace(state.settings, history_days=0.0)
    job = _submit(state)
    _run_all(state, clock)
    clock.now += 1000 * DAY
    assert await housekeeping.sweep(state, pruner) == 0
    assert job in state.jobs and _in_store(store, job)


def test_the_sweep_period_follows_the_window() -> None:
    assert housekeeping.interval(14.0) == 120.0  # PBS's two minutes
    assert housekeeping.interval(1e-5) == pytest.approx(0.1)  # a window of 0.86 s: 0.1 s
    assert housekeeping.interval(60 / DAY) == pytest.approx(6.0)
    assert housekeeping.interval(0.0) == 120.0
