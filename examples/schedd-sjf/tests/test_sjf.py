"""The plugin on its own: its key, its table, and a cycle of schedd's core with it."""

from __future__ import annotations

import pytest

from policies import Placement
from schedd.core.context import Snapshot
from schedd.core.model import Chunk, Gpu, Job, Node
from schedd.core.scheduler import Pipeline, run_cycle
from schedd.errors import ConfigError
from schedd_sjf import ShortestFirst, SjfSettings


def _job(jid: str, seq: int, walltime_s: float, gpus: int = 1, submit: float = 0.0) -> Job:
    return Job(jid, seq, "ann", (Chunk(ncpus=1, ngpus=gpus),), walltime_s, submit)


def _one_gpu_node() -> list[Node]:
    return [Node("n0", cpus=8, mem_mb=0, gpus=(Gpu(0),))]


def test_the_shortest_job_starts_first_whatever_its_submission_order() -> None:
    jobs = [_job("long", 1, 3600.0), _job("short", 2, 60.0)]
    snap = Snapshot(now=10.0, pending=jobs, running=[], nodes=_one_gpu_node())
    fifo = run_cycle(snap, Pipeline.of(Placement(), actions=("allocate",)))
    sjf = run_cycle(snap, Pipeline.of(ShortestFirst(), Placement(), actions=("allocate",)))
    assert [j.id for j, _ in fifo.starts] == ["long"]
    assert [j.id for j, _ in sjf.starts] == ["short"]


@pytest.mark.parametrize(("by", "expected"), [("walltime", 100.0), ("gpu_seconds", 400.0), ("cpu_seconds", 100.0)])
def test_key_by_size(by: str, expected: float) -> None:
    policy = ShortestFirst.from_config({"by": by})
    snap = Snapshot(now=0.0, pending=[], running=[], nodes=[])
    ctx = type("Ctx", (), {"snapshot": snap})()
    assert policy.order_key(_job("j", 1, 100.0, gpus=4), ctx) == expected  # type: ignore[arg-type]


def test_aging_lets_a_long_wait_win() -> None:
    policy = ShortestFirst(SjfSettings(aging=1.0))
    snap = Snapshot(now=5000.0, pending=[], running=[], nodes=[])
    ctx = type("Ctx", (), {"snapshot": snap})()
    old_long = _job("a", 1, 3600.0, submit=0.0)
    new_short = _job("b", 2, 60.0, submit=4990.0)
    assert policy.order_key(old_long, ctx) < policy.order_key(new_short, ctx)  # type: ignore[arg-type]


def test_a_bad_table_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sjf\.by: must be one of walltime, gpu_seconds, cpu_seconds"):
        ShortestFirst.from_config({"by": "size"})
    with pytest.raises(ConfigError, match=r"sjf\.weight: unknown key"):
        ShortestFirst.from_config({"weight": 1})
