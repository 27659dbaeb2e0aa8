"""nodeagent.reporting's per-rank work on short jobs: what it skips, and what it must not.

A rank that came and went between two reading rounds is followed at its ack only
if it left a metrics file; the reading thread is not woken while nothing is
followed; a user's uid is looked up once, not once per rank.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

import nodeagent.reporting as reporting
from nodeagent.jobdir import SupervisorSpec
from nodeagent.jobs import JobTable, RankKey
from nodeagent.metrics import METRICS_FILE
from schedd.protocol import Launch, LaunchSpec, Points, Welcome


class _Table:
    """What Reporting uses of a JobTable: its hooks, its user switching, its ranks."""

    def __init__(self, switch_user: bool = False) -> None:
        self.switch_user = switch_user
        self.before_forget: Any = None
        self.ranks: list[tuple[RankKey, Path, SupervisorSpec, bool]] = []

    def rank_dirs(self) -> list[tuple[RankKey, Path, SupervisorSpec, bool]]:
        return self.ranks


def _spec(tmp: Path, job: str, user: str = "ann") -> SupervisorSpec:
    ls = LaunchSpec(job_id=f"{job}.srv", name="j", user=user, queue="q", workdir=str(tmp), stdout_path="o",
                    stderr_path="e", walltime_s=60.0, ncpus=1, mem_mb=0, gpus=[], argv=["true"])
    return SupervisorSpec(launch=Launch(f"{job}.srv", 0, 0, ls), cookie=f"c{job}", switch_user=False)


def _reporting(table: _Table) -> reporting.Reporting:
    r = reporting.Reporting(cast(JobTable, table))
    r.welcome(Welcome(heartbeat_s=1.0, version=4))
    return r


def _rank_dir(tmp: Path, job: str) -> Path:
    d = tmp / f"rank-{job}"
    d.mkdir()
    return d


def test_a_rank_that_left_no_metrics_file_is_not_followed(tmp_path: Path) -> None:
    r = _reporting(_Table())
    r._forget(RankKey("1.srv", 0, 0), _rank_dir(tmp_path, "1"), _spec(tmp_path, "1"))
    assert r.follower.followed() == set()


def test_a_rank_that_left_an_empty_file_is_not_followed(tmp_path: Path) -> None:
    r = _reporting(_Table())
    d = _rank_dir(tmp_path, "5")
    (d / METRICS_FILE).write_text("")  # made by its supervisor, never written by the job
    r._forget(RankKey("5.srv", 0, 0), d, _spec(tmp_path, "5"))
    assert r.follower.followed() == set()


def test_a_rank_that_left_its_file_is_followed_and_read_to_the_end(tmp_path: Path) -> None:
    r = _reporting(_Table())
    d = _rank_dir(tmp_path, "2")
    (d / METRICS_FILE).write_text('{"loss": 0.5, "step": 3}\n')  # kept there by its supervisor at the end
    r._forget(RankKey("2.srv", 0, 0), d, _spec(tmp_path, "2"))
    assert r.follower.followed() == {("2", 0, 0)}
    batches = list(r.follower.poll(100.0))
    assert [(b.job_id, sorted(b.series)) for b in batches if b.series] == [("2", ["loss"])]
    assert r.follower.followed() == set()  # ended and read: closed


def test_an_already_followed_rank_is_grabbed_even_without_a_file_yet(tmp_path: Path) -> None:
    r = _reporting(_Table())
    d, spec = _rank_dir(tmp_path, "3"), _spec(tmp_path, "3")
    r._follow(RankKey("3.srv", 0, 0), d, spec)
    r._forget(RankKey("3.srv", 0, 0), d, spec)
    assert r.follower.followed() == {("3", 0, 0)}  # ended: the next round closes it


def test_the_reading_thread_is_not_woken_while_nothing_is_followed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    table = _Table()
    r = _reporting(table)
    submitted: list[object] = []

    def submit(*args: object, **kwargs: object) -> asyncio.Future[None]:
        submitted.append(args)
        return asyncio.Future()  # never done: the round waits until the task is cancelled

    monkeypatch.setattr(r._reader, "submit", submit)
    monkeypatch.setattr(reporting, "POLL_S", 0.0)
    sent: list[msgspec.Struct] = []

    async def send(m: msgspec.Struct) -> None:
        sent.append(m)

    async def main() -> None:
        task = asyncio.create_task(r.run(send))
        for _ in range(10):
            await asyncio.sleep(0)
        assert submitted == []  # ten rounds, nothing followed: no executor call
        d = _rank_dir(tmp_path, "4")
        table.ranks.append((RankKey("4.srv", 0, 0), d, _spec(tmp_path, "4"), False))
        for _ in range(10):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert submitted  # a running rank is followed: its file is read in the thread

    asyncio.run(main())
    r._reader.shutdown(wait=False)
    assert not any(isinstance(m, Points) for m in sent)


def test_a_users_uid_is_looked_up_once_for_many_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def uid(user: str) -> int | None:
        calls.append(user)
        return 1234

    monkeypatch.setattr(reporting, "_uid", uid)
    r = _reporting(_Table(switch_user=True))
    for n in range(5):
        spec = msgspec.structs.replace(_spec(tmp_path, str(n)), switch_user=True)
        assert r._uid_of(spec) == 1234
    assert calls == ["ann"]
    assert r._uid_of(msgspec.structs.replace(_spec(tmp_path, "9", user="bob"), switch_user=True)) == 1234
    assert calls == ["ann", "bob"]
    assert r._uid_of(_spec(tmp_path, "10")) is None  # a rank that does not switch users has no uid to check
