"""The scheduling loop on the real asyncio loop: a trigger runs a cycle, a burst coalesces,
decisions reach agents only after the store committed them, a failing cycle does not stop it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schedd.daemon.reconcile import on_register
from schedd.config import load_pipeline, load_settings
from schedd.daemon.loop import Loop
from schedd.protocol import GpuInfo, Launch, Register
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.daemon.state import State
from schedd.store import Store

pytestmark = pytest.mark.asyncio


def _state(store: Store | None, sent: list[object]) -> State:
    settings = load_settings()
    settings.tick_s = 3600.0  # only triggers start cycles here
    state = State(settings, load_pipeline(settings.policies_path()), store, lambda: 1000.0)
    on_register(state, Register("n1", 64, 100_000, [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(8)], True),
                sent.append, "127.0.0.1")
    return state


def _job() -> SubmitRequest:
    return SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=0)])


async def _until(what: str, pred: object, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not pred():  # type: ignore[operator]
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_burst_of_submissions_is_a_few_cycles_and_every_job_starts() -> None:
    sent: list[object] = []
    state = _state(None, sent)
    loop = Loop(state, state.clock)
    task = asyncio.create_task(loop.run())
    try:
        for _ in range(60):  # 64 CPUs: all fit at once
            state.submit(_job(), "ann")  # each submit triggers
        await _until("60 launches", lambda: sum(isinstance(m, Launch) for m in sent) == 60)
        assert loop.cycles < 10, loop.cycles  # coalesced, not one cycle per trigger
    finally:
        task.cancel()


async def test_launches_are_sent_only_after_the_store_committed_the_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "schedd.db")
    store.start()
    committed_when_sent: list[bool] = []

    def send(msg: object) -> None:
        if isinstance(msg, Launch):
            row = store.load_jobs(ids=[msg.job_id])[0]
            committed_when_sent.append(row.state == "running")

    try:
        state = _state(store, [])
        state.fleet.nodes["n1"].send = send
        loop = Loop(state, state.clock)
        task = asyncio.create_task(loop.run())
        for _ in range(5):
            state.submit(_job(), "ann")
        await _until("5 launches", lambda: len(committed_when_sent) == 5)
        assert committed_when_sent == [True] * 5
        task.cancel()
    finally:
        store.close()


async def test_a_cycle_that_raises_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[object] = []
    state = _state(None, sent)
    loop = Loop(state, state.clock)
    real = state.snapshot
    calls = {"n": 0}

    def flaky(now: float):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in a cycle")
        return real(now)

    state.snapshot = flaky  # type: ignore[method-assign]
    task = asyncio.create_task(loop.run())
    try:
        state.submit(_job(), "ann")
        await _until("the first cycle failed", lambda: calls["n"] >= 1)
        state.wake()
        await _until("the job launched by a later cycle", lambda: any(isinstance(m, Launch) for m in sent))
        assert "scheduling cycle failed" in caplog.text
    finally:
        task.cancel()
