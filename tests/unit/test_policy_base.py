"""policies.base: each policy table read as a msgspec Struct, errors in the user's words."""

from __future__ import annotations

import tomllib
from typing import Any

import msgspec
import pytest

from policies.backfill import BackfillSettings
from policies.base import NoSettings, settings_of
from policies.fairshare import FairShareSettings
from policies.placement import PlacementSettings
from policies.preemption import PreemptionSettings
from policies.priority import PrioritySettings
from schedd.config import DEFAULT_POLICIES
from schedd.errors import ConfigError

SETTINGS: dict[str, type[msgspec.Struct]] = {
    "backfill": BackfillSettings,
    "fairshare": FairShareSettings,
    "limits": NoSettings,
    "placement": PlacementSettings,
    "preemption": PreemptionSettings,
    "priority": PrioritySettings,
}


def test_the_shipped_file_sets_every_key_to_its_default() -> None:
    """conf/policies.toml's values are the Structs' defaults (STYLE: defaults equal the commented ones)."""
    with DEFAULT_POLICIES.open("rb") as f:
        config = tomllib.load(f)
    tables = {k: v for k, v in config.items() if k != "actions"}
    assert set(tables) == set(SETTINGS)
    for name, table in tables.items():
        assert settings_of(table, SETTINGS[name], name) == SETTINGS[name](), name


@pytest.mark.parametrize(
    ("name", "table", "message"),
    [
        ("backfill", {"mode": "eazy"}, "backfill.mode: must be one of none, easy, conservative; not 'eazy'"),
        ("backfill", {"mode": 3}, "backfill.mode: must be one of none, easy, conservative; not 3"),
        ("backfill", {"bf_window": 1}, "backfill.bf_window: unknown key (known keys: max_jobs_tested, mode)"),
        ("backfill", {"max_jobs_tested": 0}, "backfill.max_jobs_tested: must be >= 1, not 0"),
        ("backfill", {"max_jobs_tested": 2.5}, "backfill.max_jobs_tested: must be an integer, not 2.5"),
        ("limits", {"x": 1}, "limits.x: unknown key (known keys: none)"),
        ("limits", 3, "limits: must be a table, not int"),
        ("priority", {"weights": 5}, "priority.weights: must be a table, not int"),
        ("priority", {"weights": {"age": True}}, "priority.weights.age: must be a number, not True"),
        ("priority", {"max_age_s": 0}, "priority.max_age_s: must be >= 1.0, not 0"),
        ("preemption", {"max_preemptors": 0}, "preemption.max_preemptors: must be >= 1, not 0"),
        ("fairshare", {"accounts": {"ok": {}, "ml": {"shares": 0}}}, "fairshare.accounts.ml.shares: must be >= 1e-09, not 0"),
        ("fairshare", {"accounts": {"ml": {"parent": 3}}}, "fairshare.accounts.ml.parent: must be an account name, not 3"),
        ("fairshare", {"accounts": {"ml": {"share": 3}}}, "fairshare.accounts.ml.share: unknown key (known keys: parent, shares)"),
        ("fairshare", {"billing": {"tpu": 1}}, "fairshare.billing.tpu: unknown key (known keys: cpu, gpu, mem_gb)"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(name: str, table: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_of(table, SETTINGS[name], name)
    assert str(err.value) == message


def test_ints_are_numbers_and_unset_keys_take_their_defaults() -> None:
    s = settings_of({"grace_s": 12}, PreemptionSettings, "preemption")
    assert (s.mode, s.exempt_s, s.grace_s, s.max_preemptors) == ("requeue", 300.0, 12.0, 16)
    assert isinstance(s.grace_s, float)
