"""policies.fairshare: F = 2^(-UE/S) on the account tree (Slurm classic), usage decay, config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import FairShare
from schedd.core.context import Context, Snapshot
from schedd.errors import ConfigError
from schedd.core.model import Chunk, Job
from schedd.core.scheduler import Pipeline
from tests.builders import gpu_nodes, job, running


def test_no_usage_at_all_gives_one() -> None:
    fs = FairShare(accounts={"ml": (2.0, None), "cv": (1.0, None)})
    f = fs.compute({("ml", "ann"): 0.0, ("cv", "bob"): 0.0, ("", "cat"): 0.0})
    assert f == {("ml", "ann"): 1.0, ("cv", "bob"): 1.0, ("", "cat"): 1.0}


def test_single_user_owning_all_usage_gets_one_half() -> None:
    # S = 1, U = 1, UE = 1 -> 2^-1
    assert FairShare().compute({("", "ann"): 42.0}) == {("", "ann"): pytest.approx(0.5)}


def test_equal_shares_equal_usage_equal_factor() -> None:
    f = FairShare().compute({("", "ann"): 50.0, ("", "bob"): 50.0})
    assert f[("", "ann")] == f[("", "bob")]
    # S = 1/2, U = 1/2, UE = 1/2 + (1 - 1/2) * 1/2 = 3/4 -> 2^(-3/2)
    assert f[("", "ann")] == pytest.approx(2 ** -1.5)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_more_usage_means_a_lower_factor(a: int, b: int) -> None:
    f = FairShare().compute({("", "ann"): a, ("", "bob"): b})
    fa, fb = f[("", "ann")], f[("", "bob")]
    assert 0.0 < fa <= 1.0 and 0.0 < fb <= 1.0
    if a > b:
        assert fa < fb
    elif a == b:
        assert fa == fb


def test_top_level_accounts_weighted_by_shares() -> None:
    fs = FairShare(accounts={"a": (1.0, None), "b": (3.0, None)})
    f = fs.compute({("a", "ann"): 50.0, ("b", "bob"): 50.0})
    # a: S = 1/4, U = UE = 1/2; its only user: S = 1/4, UE = 1/2 + (1/2 - 1/2) = 1/2 -> 2^-2
    # b: S = 3/4, UE = 1/2 -> 2^(-2/3)
    assert f[("a", "ann")] == pytest.approx(0.25)
    assert f[("b", "bob")] == pytest.approx(2 ** (-2 / 3))


def test_nested_accounts_by_hand() -> None:
    """Two levels of accounts, worked out with UE = U + (UE_parent - U) * s / s_siblings.

    root
    ├── research (1)          S = 1/2      U = .4   UE = .4 (top level: UE = U)
    │   ├── nlp (1)           S = 1/8      U = .3   UE = .3 + (.4 - .3) * 1/4 = .325
    │   │   └── ann           S = 1/8      U = .3   UE = .3 + (.325 - .3) * 1 = .325
    │   └── vision (3)        S = 3/8      U = .1   UE = .1 + (.4 - .1) * 3/4 = .325
    │       └── bob           S = 3/8      U = .1   UE = .325
    └── ops (1)               S = 1/2      U = .6   UE = .6
        ├── cat               S = 1/4      U = .6   UE = .6 + (.6 - .6) * 1/2 = .6
        └── dan               S = 1/4      U = 0    UE = 0 + (.6 - 0) * 1/2 = .3
    """
    fs = FairShare.from_config(
        {
            "accounts": {
                "research": {"shares": 1},
                "nlp": {"shares": 1, "parent": "research"},
                "vision": {"shares": 3, "parent": "research"},
                "ops": {"shares": 1},
            }
        }
    )
    f = fs.compute({("nlp", "ann"): 30.0, ("vision", "bob"): 10.0, ("ops", "cat"): 60.0, ("ops", "dan"): 0.0})
    assert f == {
        ("nlp", "ann"): pytest.approx(2 ** (-0.325 / 0.125)),
        ("vision", "bob"): pytest.approx(2 ** (-0.325 / 0.375)),
        ("ops", "cat"): pytest.approx(2 ** (-0.6 / 0.25)),
        ("ops", "dan"): pytest.approx(2 ** (-0.3 / 0.25)),
    }


def test_configured_accounts_without_usage_still_hold_their_shares() -> None:
    alone = FairShare(accounts={"a": (1.0, None)}).compute({("a", "ann"): 100.0})
    shared = FairShare(accounts={"a": (1.0, None), "idle": (1.0, None)}).compute({("a", "ann"): 100.0})
    assert alone[("a", "ann")] == pytest.approx(2 ** -1)  # S = 1
    assert shared[("a", "ann")] == pytest.approx(2 ** -2)  # S = 1/2


def test_unconfigured_accounts_hang_under_root_with_default_shares() -> None:
    fs = FairShare(accounts={"big": (3.0, None)}, default_shares=1.0)
    f = fs.compute({("big", "ann"): 10.0, ("adhoc", "bob"): 10.0})
    # adhoc: S = 1/4, U = UE = 1/2 -> 2^-2 ; big: S = 3/4 -> 2^(-2/3)
    assert f[("adhoc", "bob")] == pytest.approx(0.25)
    assert f[("big", "ann")] == pytest.approx(2 ** (-2 / 3))


def test_jobs_without_account_share_the_default_account() -> None:
    fs = FairShare(accounts={"default": (1.0, None), "other": (1.0, None)})
    f = fs.compute({("", "ann"): 10.0, ("default", "bob"): 10.0, ("other", "cat"): 0.0})
    # "" and "default" are one account holding all usage: S = 1/2 * 1/2 per user
    assert f[("", "ann")] == f[("default", "bob")] == pytest.approx(2 ** (-(0.5 + 0.5 * 0.5) / 0.25))
    assert f[("other", "cat")] == 1.0


# ------------------------------------------------------------------ prepare: snapshot usage + running jobs


def _prepared(fs: FairShare, s: Snapshot) -> dict[tuple[str, str], float]:
    ctx = Context(s, Pipeline.of(fs, actions=("allocate",)))
    fs.prepare(ctx)
    return fs.factors


def test_running_jobs_count_with_what_they_used_so_far() -> None:
    # ann: a 4-GPU job running for 100 s = 400 GPU-s; bob: 400 GPU-s in the ledger -> equal
    ann = running(job("r", 1).user("ann").chunks(gpus=4).build(), "n0", (0, 1, 2, 3), start=900.0)
    s = Snapshot(1000.0, [job("p", 2).user("cat").build()], [ann], gpu_nodes(1), usage={("", "bob"): 400.0})
    f = _prepared(FairShare(), s)
    assert f[("", "ann")] == f[("", "bob")] < 1.0
    # cat has a pending job and no usage: present in the factors, above the others
    assert f[("", "cat")] > f[("", "ann")]
    # U = 1/2 each, S = 1/3, UE = 1/2 + (1 - 1/2)/3 = 2/3 -> 2^-2 ; cat: UE = 1/3 -> 2^-1
    assert f[("", "ann")] == pytest.approx(0.25)
    assert f[("", "cat")] == pytest.approx(0.5)


def _j(**chunk: Any) -> Job:
    c = Chunk(**chunk)
    return Job("x", 1, "ann", (c, c), 60.0, 0.0)


@pytest.mark.parametrize(
    ("usage", "billing", "rate"),
    [
        ("gpu_seconds", None, 2 * 4),
        ("cpu_seconds", None, 2 * 16),
        ("billing", {"cpu": 0.5, "gpu": 10.0, "mem_gb": 0.25}, 32 * 0.5 + 8 * 10.0 + 4.0 * 0.25),
    ],
)
def test_usage_rate_per_second(usage: str, billing: dict[str, float] | None, rate: float) -> None:
    fs = FairShare(usage=usage, billing=billing)
    assert fs.usage_rate(_j(ncpus=16, ngpus=4, mem_mb=2048)) == pytest.approx(rate)


# ------------------------------------------------------------------ config


def test_from_config_reads_every_key() -> None:
    fs = FairShare.from_config(
        {
            "usage": "billing",
            "half_life_s": 3600,
            "default_shares": 2,
            "billing": {"cpu": 0.1, "gpu": 2},
            "accounts": {"ml": {"shares": 5}, "nlp": {"parent": "ml"}},
        }
    )
    assert (fs.usage, fs.half_life_s, fs.default_shares) == ("billing", 3600.0, 2.0)
    assert fs.billing == {"cpu": 0.1, "gpu": 2.0, "mem_gb": 0.0}
    assert fs.accounts == {"ml": (5.0, None), "nlp": (2.0, "ml")}


@pytest.mark.parametrize(
    ("accounts", "path", "words"),
    [
        ({"a": {"parent": "zz"}}, "fairshare.accounts.a.parent", ["unknown account 'zz'"]),
        ({"a": {"parent": "b"}, "b": {"parent": "a"}}, "fairshare.accounts.a.parent", ["cycle"]),
        ({"a": {"parent": "a"}}, "fairshare.accounts.a.parent", ["cycle"]),
        ({"a": {"parent": "b"}, "b": {"parent": "c"}, "c": {"parent": "b"}}, "fairshare.accounts.a.parent",
         ["cycle"]),
        ({"a": {"parent": 3}}, "fairshare.accounts.a.parent", ["account name"]),
        ({"a": {"share": 3}}, "fairshare.accounts.a.share", ["unknown key"]),
        ({"a": {"shares": 0}}, "fairshare.accounts.a.shares", [">="]),
        ({"a": 5}, "fairshare.accounts.a", ["table"]),
    ],
)
def test_config_errors_name_the_account(accounts: dict[str, Any], path: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        FairShare.from_config({"accounts": accounts})
    assert err.value.path == path
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    ("table", "path"),
    [
        ({"half_life_s": 0.5}, "fairshare.half_life_s"),
        ({"usage": "gpu_hours"}, "fairshare.usage"),
        ({"billing": {"tpu": 1}}, "fairshare.billing.tpu"),
        ({"decay": 1}, "fairshare.decay"),
    ],
)
def test_config_errors(table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        FairShare.from_config(table)
    assert err.value.path == path
