"""The loop's pace: after a cycle, triggers within PACE times its CPU share the next cycle;
the first trigger on a quiet loop runs at once. No test guesses at timing: the pace is
set far longer than any test step (a pause that must not happen would hang the test)."""

from __future__ import annotations

import asyncio
import time

import pytest

import schedd.daemon.loop as loop_mod
from schedd.daemon.loop import Loop
from tests.daemon.test_loop import _job, _state, _until

pytestmark = pytest.mark.asyncio


async def test_the_first_trigger_on_a_quiet_loop_is_not_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_mod, "PACE", 1e9)
    monkeypatch.setattr(loop_mod, "PACE_MAX_S", 3600.0)  # any pause before the first cycle would hang it
    state = _state(None, [])
    loop = Loop(state, state.clock)
    task = asyncio.create_task(loop.run())
    try:
        state.submit(_job(), "ann")
        await _until("the first cycle", lambda: loop.cycles == 1)
    finally:
        task.cancel()


async def test_triggers_within_the_pace_share_one_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_mod, "PACE", 1e9)
    monkeypatch.setattr(loop_mod, "PACE_MAX_S", 3600.0)
    state = _state(None, [])
    loop = Loop(state, state.clock)
    task = asyncio.create_task(loop.run())
    try:
        state.submit(_job(), "ann")
        await _until("the first cycle", lambda: loop.cycles == 1)
        for _ in range(5):
            state.submit(_job(), "ann")  # each triggers
            for _ in range(20):
                await asyncio.sleep(0)
        assert loop.cycles == 1  # paced: an hour, capped, after the first
        assert len(state.pending) == 5
    finally:
        task.cancel()


async def test_a_paced_cycle_takes_every_trigger_that_came_meanwhile() -> None:
    state = _state(None, [])
    loop = Loop(state, state.clock)
    task = asyncio.create_task(loop.run())
    try:
        state.submit(_job(), "ann")
        await _until("the first cycle", lambda: loop.cycles == 1)
        loop._next_at = time.monotonic() + 1.0  # as after a very costly cycle (beyond PACE_MAX_S)
        for _ in range(5):
            state.submit(_job(), "ann")  # each triggers; a few loop turns apart
            for _ in range(20):
                await asyncio.sleep(0)
        await _until("the five started", lambda: not state.pending)
        assert loop.cycles == 2  # one cycle for the five triggers
    finally:
        task.cancel()
