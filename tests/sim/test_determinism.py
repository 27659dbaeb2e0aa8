"""Determinism: the same seed gives the same run, plan by plan, in any process.

Each run hashes every cycle's plan (starts with their nodes and GPUs,
preemptions, reservations, reasons) and every job's outcome. Two runs of one
seed must agree, also across interpreters with different ``PYTHONHASHSEED``
(so no decision may depend on set or dict-of-str iteration order); two seeds
must not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import Backfill, FairShare, Preemption, Priority
from schedd.core.model import QueueDef
from schedd.core.scheduler import Pipeline
from tests.sim.checks import outcome_digest, simulate
from tests.sim.workloads import Mix, pool, workload

ROOT = Path(__file__).resolve().parents[2]
TIERED = {
    "low": QueueDef("low", priority=0, tier=0),
    "high": QueueDef("high", priority=100, tier=1, preempts=("low",)),
}

CASES: dict[str, tuple[Callable[[], Pipeline], dict[str, QueueDef], tuple[tuple[str, float], ...]]] = {
    "easy": (lambda: Pipeline.of(Backfill("easy")), {}, (("default", 1.0),)),
    "conservative": (lambda: Pipeline.of(Backfill("conservative")), {}, (("default", 1.0),)),
    "fairshare": (
        lambda: Pipeline.of(FairShare(half_life_s=3600.0), Priority(weights={"fairshare": 10000, "age": 100}),
                            Backfill("easy")),
        {},
        (("default", 1.0),),
    ),
    "preempt": (
        lambda: Pipeline.of(Priority(weights={"queue": 1000}), Preemption(exempt_s=0.0, grace_s=30.0),
                            Backfill("easy")),
        TIERED,
        (("low", 3.0), ("high", 1.0)),
    ),
}


def digest_of(case: str, seed: int) -> str:
    """Plan-by-plan and outcome hash of one seeded run (also called from a subprocess)."""
    make, queues, qmix = CASES[case]
    jobs = workload(seed, 120, mix=Mix(mixed_gang=0.5), mean_interarrival_s=60.0, queues=qmix)
    sim, rec = simulate(pool(5, 1), make(), jobs, queues=queues)
    return f"{rec.digest.hexdigest()}:{outcome_digest(sim)}:{rec.cycles}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_same_run(case: str) -> None:
    first = digest_of(case, 11)
    assert digest_of(case, 11) == first
    assert digest_of(case, 12) != first


def test_same_seed_same_run_under_other_hash_seeds() -> None:
    here = {case: digest_of(case, 5) for case in ("conservative", "preempt")}
    code = (
        "from tests.sim.test_determinism import digest_of; "
        "print(digest_of('conservative', 5)); print(digest_of('preempt', 5))"
    )
    for hash_seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        assert out.stdout.split() == [here["conservative"], here["preempt"]], f"PYTHONHASHSEED={hash_seed}"
