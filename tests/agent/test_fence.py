"""nodeagent.fence: when a cut-off agent freezes its ranks, and what schedd's answer does to them.

The table is a small recording stand-in (real code: it keeps the signals and
kills it was asked for); the agent end to end, with real processes in network
namespaces, is tests/integration/test_partition.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodeagent.fence import FENCE_FRACTION, Fence
from nodeagent.jobs import RankKey
from schedd.protocol import RunningJob

A, B, C = RankKey("1.s", 0, 0), RankKey("2.s", 0, 0), RankKey("3.s", 0, 0)


@dataclass
class Table:
    """Ranks that run until killed; every signal and kill asked for, in order."""

    keys: list[RankKey]
    asked: list[tuple[str, RankKey, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def running(self) -> list[RunningJob]:
        return [RunningJob(k.job_id, k.attempt, k.rank, 0.0) for k in self.keys]

    def signal(self, key: RankKey, name: str) -> bool:
        self.asked.append(("signal", key, name))
        self.changed.set()
        return key in self.keys

    def kill(self, key: RankKey, kill_delay_s: float | None = None, status: int | None = None) -> bool:
        self.asked.append(("kill", key, f"delay {kill_delay_s}"))
        self.keys.remove(key)
        return True

    def stopped(self) -> set[RankKey]:
        return {k for what, k, how in self.asked if (what, how) == ("signal", "SIGSTOP")}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_timeout_said_no_fence() -> None:
    fence = Fence(Table([A]), clock=Clock())
    fence.welcome(0.0, 100.0, [])
    assert fence.deadline() is None


def test_the_deadline_is_half_the_timeout_after_the_newest_confirmation() -> None:
    clock = Clock()
    fence = Fence(Table([A]), clock=clock)
    fence.welcome(10.0, 100.0, [])
    assert fence.deadline() == 100.0 + 10.0 * FENCE_FRACTION == 105.0
    fence.confirm(103.0)
    assert fence.deadline() == 108.0
    fence.confirm(101.0)  # an older beat's pong, arriving late, moves nothing
    assert fence.deadline() == 108.0


def test_welcome_kills_stale_frozen_ranks_at_once_and_thaws_the_rest() -> None:
    clock = Clock()
    table = Table([A, B, C])
    fence = Fence(table, clock=clock)
    fence.welcome(10.0, 100.0, [])
    clock.now = 106.0
    fence._freeze(first=True)
    assert fence.fenced and table.stopped() == {A, B, C}
    table.asked.clear()
    fence.welcome(10.0, 107.0, [B])
    assert table.asked == [("signal", A, "SIGCONT"), ("kill", B, "delay 0.0"), ("signal", C, "SIGCONT")]
    assert not fence.fenced and not fence.frozen


def test_a_late_pong_thaws_only_while_it_proves_schedd_has_not_given_up() -> None:
    clock = Clock()
    table = Table([A])
    fence = Fence(table, clock=clock)
    fence.welcome(10.0, 100.0, [])
    clock.now = 105.5
    fence._freeze(first=True)
    clock.now = 112.0
    fence.confirm(101.0)  # schedd took a beat of 101 but may have given up at 111: stay frozen
    assert fence.fenced and ("signal", A, "SIGCONT") not in table.asked
    fence.confirm(108.0)  # taken in a live session, fence now at 113: thaw
    assert not fence.fenced and table.asked[-1] == ("signal", A, "SIGCONT")


@pytest.mark.asyncio
async def test_run_freezes_at_the_deadline_then_each_newcomer() -> None:
    table = Table([A])
    fence = Fence(table)
    stop = asyncio.Event()
    task = asyncio.create_task(fence.run(stop, lambda: 0.01))
    try:
        fence.welcome(0.1, fence.clock(), [])  # fence 50 ms after "now"
        while table.stopped() != {A}:
            table.changed.clear()
            await asyncio.wait_for(table.changed.wait(), 10.0)
        assert fence.fenced and fence.fences == 1
        table.keys.append(B)  # a rank that started while fenced
        while table.stopped() != {A, B}:
            table.changed.clear()
            await asyncio.wait_for(table.changed.wait(), 10.0)
        assert [k for what, k, how in table.asked if how == "SIGSTOP"] == [A, B]  # each once
        fence.welcome(0.1, fence.clock(), [])
        assert not fence.fenced and ("signal", B, "SIGCONT") in table.asked
    finally:
        stop.set()
        await asyncio.wait_for(task, 10.0)


def test_an_agent_restarted_while_fenced_keeps_the_ranks_frozen_until_schedd_answers(tmp_path: Path) -> None:
    marker = tmp_path / "fenced.json"
    clock = Clock()
    table = Table([A, B])
    fence = Fence(table, marker, clock=clock)
    fence.welcome(10.0, 100.0, [])
    clock.now = 106.0
    fence._freeze(first=True)
    assert marker.exists()
    table.asked.clear()
    again = Fence(table, marker, clock=clock)  # a new agent process on the same state dir
    assert again.fenced and again.frozen == {A, B}
    again.welcome(10.0, 107.0, [A])
    assert table.asked == [("kill", A, "delay 0.0"), ("signal", B, "SIGCONT")]
    assert not again.fenced and not marker.exists()


def test_a_refused_connection_moves_the_deadline_but_never_lifts_a_fence() -> None:
    """schedd restarting (connections refused) is not a partition: no freeze; but a
    fence already standing stays until schedd's verdict."""
    clock = Clock()
    fence = Fence(Table([A]), clock=clock)
    fence.welcome(10.0, 100.0, [])
    assert fence.deadline() == 100.0 + 10.0 * FENCE_FRACTION
    clock.now = 104.0
    fence.absent(103.0)
    assert fence.deadline() == 103.0 + 10.0 * FENCE_FRACTION
    fence.absent(102.0)  # an older attempt says nothing newer
    assert fence.deadline() == 103.0 + 10.0 * FENCE_FRACTION
    fence.fenced = True
    fence.absent(120.0)
    assert fence.deadline() == 103.0 + 10.0 * FENCE_FRACTION and fence.fenced
