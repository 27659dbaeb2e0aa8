"""Fair-share converges: saturating users get GPU time in proportion to their shares.

Two users each keep a deep queue of identical 1-GPU jobs (random real runtimes,
seeded), all submitted at t=0, and ann's jobs all come first in submission
order: without fair-share she would get the whole pool (checked as a control).
With the FairShare + Priority (fair-share dominant) pipeline, over one
simulated day:

* equal shares: each user gets within 10 % of half the GPU-seconds;
* accounts with 3:1 shares: ann's account gets roughly three quarters.
"""

from __future__ import annotations

import random

import pytest

from policies import Backfill, FairShare, Priority
from schedd.core.model import Chunk, Job
from schedd.core.scheduler import Pipeline
from schedd.core.sim import SimJob, Simulator
from tests.sim.checks import simulate
from tests.sim.workloads import pool

DAY_S = 86400.0


def deep_queue(owner: str, account: str, n: int, start_order: int, seed: int) -> list[SimJob]:
    """``n`` identical 1-GPU jobs (2 h walltime, 30..120 min real runtime) at t=0."""
    rng = random.Random(seed)
    chunks = (Chunk(ncpus=4, mem_mb=16 * 1024, ngpus=1),)
    return [
        SimJob(Job(f"{owner}{i}", start_order + i, owner, chunks, 7200.0, 0.0, account=account),
               float(rng.randint(1800, 7200)))
        for i in range(n)
    ]


def gpu_seconds(sim: Simulator, until: float) -> dict[str, float]:
    """GPU-seconds each user received in ``[0, until)``."""
    used: dict[str, float] = {}
    for o in sim.outcomes.values():
        if o.start < 0:
            continue
        end = min(o.end if o.end >= 0 else until, until)
        used[o.job.owner] = used.get(o.job.owner, 0.0) + o.job.ngpus * (end - o.start)
    return used


def _day(pipeline: Pipeline, accounts: tuple[str, str], gpu_nodes: int, seed: int) -> dict[str, float]:
    # Enough work for either user to keep the whole pool busy all day on their own.
    n = int(gpu_nodes * 8 * DAY_S / 1800)
    jobs = deep_queue("ann", accounts[0], n, 1, seed) + deep_queue("bob", accounts[1], n, 100_000, seed + 1)
    sim, _ = simulate(pool(gpu_nodes), pipeline, jobs, until=DAY_S)
    owners = {j.owner for j in sim.pending.values()}
    assert owners == {"ann", "bob"}, f"a queue ran dry: not a saturation test ({owners})"
    used = gpu_seconds(sim, DAY_S)
    total = sum(used.values())
    capacity = gpu_nodes * 8 * DAY_S
    assert total >= 0.97 * capacity, f"pool not saturated: {total / capacity:.2%}"
    return {user: used.get(user, 0.0) / total for user in ("ann", "bob")}


def _fairshare(**kw: object) -> Pipeline:
    return Pipeline.of(FairShare(**kw), Priority(weights={"fairshare": 10000}), Backfill("easy"))  # type: ignore[arg-type]


def test_control_without_fairshare_first_come_takes_all() -> None:
    share = _day(Pipeline.of(Backfill("easy")), ("", ""), 2, seed=1)
    assert share["ann"] > 0.9, share


@pytest.mark.parametrize(
    "gpu_nodes,seed,half_life_s,accounts",
    [
        (2, 1, 7 * 86400.0, ("", "")),  # one account, two users
        (2, 2, 3600.0, ("", "")),  # fast decay
        (1, 3, 7 * 86400.0, ("vision", "nlp")),  # two accounts, default (equal) shares
        (3, 4, 86400.0, ("vision", "nlp")),
    ],
)
def test_equal_shares_split_the_day_evenly(
    gpu_nodes: int, seed: int, half_life_s: float, accounts: tuple[str, str]
) -> None:
    share = _day(_fairshare(half_life_s=half_life_s), accounts, gpu_nodes, seed)
    assert abs(share["ann"] - 0.5) <= 0.05, share
    assert abs(share["bob"] - 0.5) <= 0.05, share


@pytest.mark.parametrize("gpu_nodes,seed", [(2, 5), (1, 6)])
def test_unequal_shares_track_the_shares(gpu_nodes: int, seed: int) -> None:
    accounts = {"big": (3.0, None), "small": (1.0, None)}
    share = _day(_fairshare(accounts=accounts), ("big", "small"), gpu_nodes, seed)
    assert abs(share["ann"] - 0.75) <= 0.05, share
    assert abs(share["bob"] - 0.25) <= 0.05, share


def test_unequal_shares_favour_the_small_share_when_it_submits_first() -> None:
    """Same 3:1 split, but the small account's jobs come first in submission order."""
    accounts = {"big": (3.0, None), "small": (1.0, None)}
    share = _day(_fairshare(accounts=accounts), ("small", "big"), 2, 7)
    assert abs(share["bob"] - 0.75) <= 0.05, share
