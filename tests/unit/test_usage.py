"""schedd.core.usage: the core's decayed usage ledger, charged at the usage policy's rate."""

from __future__ import annotations

import pytest

from policies import Backfill, FairShare, Priority
from schedd.core.model import Chunk, Job
from schedd.core.scheduler import Pipeline
from schedd.core.sim import Simulator
from schedd.core.usage import DEFAULT_HALF_LIFE_S, UsageLedger, UsagePolicy, leaf_of
from tests.builders import gpu_nodes


def _job(gpus: int, account: str = "ml", owner: str = "ann") -> Job:
    return Job("x", 1, owner, (Chunk(ncpus=4, mem_mb=1024, ngpus=gpus),), 60.0, 0.0, account=account)


def test_ledger_halves_every_half_life() -> None:
    ledger = UsageLedger(half_life_s=100.0)
    ledger.charge(("a", "ann"), 80.0, at=0.0)
    ledger.charge(("a", "bob"), 8.0, at=0.0)
    assert ledger.at(100.0) == {("a", "ann"): pytest.approx(40.0), ("a", "bob"): pytest.approx(4.0)}
    assert ledger.at(200.0)[("a", "ann")] == pytest.approx(20.0)
    ledger.charge(("a", "ann"), 10.0, at=200.0)
    assert ledger.at(300.0)[("a", "ann")] == pytest.approx(15.0)
    assert ledger.at(350.0)[("a", "ann")] == pytest.approx(15.0 * 2 ** -0.5)


def test_ledger_reading_twice_at_one_time_does_not_decay_twice() -> None:
    ledger = UsageLedger(half_life_s=10.0)
    ledger.charge(("", "ann"), 64.0, at=0.0)
    assert ledger.at(30.0)[("", "ann")] == pytest.approx(8.0)
    assert ledger.at(30.0)[("", "ann")] == pytest.approx(8.0)
    assert ledger.at(20.0)[("", "ann")] == pytest.approx(8.0)  # time never runs backwards


def test_ledger_at_returns_a_copy() -> None:
    ledger = UsageLedger(half_life_s=10.0)
    ledger.charge(("", "ann"), 1.0, at=0.0)
    ledger.at(0.0)[("", "ann")] = 99.0
    assert ledger.at(0.0)[("", "ann")] == 1.0


def test_ledger_decays_a_charge_dated_before_the_last_read() -> None:
    ledger = UsageLedger(half_life_s=100.0)
    ledger.at(100.0)
    ledger.charge(("a", "ann"), 80.0, at=0.0)
    assert ledger.at(100.0)[("a", "ann")] == pytest.approx(40.0)




# ------------------------------------------------------------------ one rate, one half-life


def test_fairshare_is_a_usage_policy_and_the_pipeline_finds_it() -> None:
    fs = FairShare(half_life_s=3600.0)
    assert isinstance(fs, UsagePolicy)
    assert Pipeline.of(Priority(), fs, Backfill()).usage_policy is fs
    assert Pipeline.of(Priority(), Backfill()).usage_policy is None


def test_a_ledger_for_a_policy_charges_runs_at_its_rate_and_decays_at_its_half_life() -> None:
    ledger = UsageLedger.for_policy(FairShare(usage="cpu_seconds", half_life_s=100.0))
    ledger.charge_run(_job(2), 10.0, at=0.0)  # 4 CPUs x 10 s
    assert ledger.at(100.0) == {("ml", "ann"): pytest.approx(20.0)}
    ledger.charge_run(_job(2), -10.0, at=0.0)  # taken back
    assert ledger.at(100.0) == {("ml", "ann"): pytest.approx(0.0)}


def test_without_a_usage_policy_nothing_is_charged_and_the_default_half_life_holds() -> None:
    ledger = UsageLedger.for_policy(None)
    ledger.charge_run(_job(8), 1000.0, at=0.0)
    assert ledger.at(10.0) == {}
    assert ledger.half_life_s == DEFAULT_HALF_LIFE_S == 7 * 86400.0


@pytest.mark.parametrize("policies", [(), (FairShare(),), (FairShare(half_life_s=60.0),)])
def test_the_simulator_keeps_the_same_ledger_as_the_daemon(policies: tuple[FairShare, ...]) -> None:
    pipeline = Pipeline.of(*policies, Backfill())
    sim = Simulator(gpu_nodes(1), pipeline)
    expected = UsageLedger.for_policy(pipeline.usage_policy)
    assert (sim.ledger.half_life_s, sim.ledger.policy) == (expected.half_life_s, expected.policy)


def test_leaf_of_is_account_and_owner() -> None:
    assert leaf_of(_job(1, account="cv", owner="bob")) == ("cv", "bob")
