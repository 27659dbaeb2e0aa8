"""Fair-share: who has used less than their share goes first (Slurm's classic algorithm).

::

    F  = 2 ^ (-UE / S)                     the factor, in (0, 1]; 1 = no usage at all

    S  = (s_self / s_siblings) * S_parent  normalized shares (root: 1)
    U  = usage_self / usage_total          normalized usage, decayed by a half-life
    UE = U                                 effective usage of a top-level account
    UE = U + (UE_parent - U) * s_self / s_siblings      below that (nested accounts)

The tree is root -> accounts (nested through ``parent``, any depth) -> users,
one leaf per (account, user). Accounts not configured hang under root with
``default_shares``; users get ``default_shares`` within their account. A job
with no account uses the account ``default``.

Usage is GPU-seconds by default (``usage = "gpu_seconds"``); ``cpu_seconds``
or ``billing`` (``cpu * billing.cpu + gpu * billing.gpu + mem_gb * billing.mem_gb``
per second) instead. It decays with ``half_life_s``: usage ``h`` seconds old
counts half. Ended runs are kept by the core's ledger (:mod:`schedd.core.usage`),
which charges them at :meth:`FairShare.usage_rate` and decays them with this
policy's half-life; the policy only reads the result (``Snapshot.usage``).
Running jobs count with what they used so far, so a user cannot grab the whole
pool in one burst before their factor notices.

Cost per cycle: O(leaves + accounts) for the factors, O(running) for the
running-job usage; then O(1) per job.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, Self

import msgspec

from policies.base import Policy, settings_of
from schedd.errors import ConfigError
from schedd.core.model import Job
from schedd.core.usage import DEFAULT_HALF_LIFE_S, Leaf, leaf_of

if TYPE_CHECKING:
    from schedd.core.context import Context

__all__ = ["AccountSettings", "Billing", "FairShare", "FairShareSettings"]

DEFAULT_ACCOUNT = "default"

Usage = Literal["gpu_seconds", "cpu_seconds", "billing"]
_Shares = Annotated[float, msgspec.Meta(ge=1e-9)]
_Weight = Annotated[float, msgspec.Meta(ge=0.0)]


class Billing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[fairshare.billing]`` table: per-second weights for ``usage = "billing"``."""

    cpu: _Weight = 0.0
    gpu: _Weight = 1.0
    mem_gb: _Weight = 0.0


class AccountSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ``[fairshare.accounts.NAME]`` table."""

    #: Relative to sibling accounts; unset: the table's ``default_shares``.
    shares: _Shares | None = None
    #: An account listed under ``[fairshare.accounts]``; unset: top level.
    parent: Annotated[str, msgspec.Meta(description="an account name")] | None = None


class FairShareSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[fairshare]`` table."""

    usage: Usage = "gpu_seconds"
    half_life_s: Annotated[float, msgspec.Meta(ge=1.0)] = DEFAULT_HALF_LIFE_S
    default_shares: _Shares = 1.0
    billing: Billing = msgspec.field(default_factory=Billing)
    accounts: dict[str, AccountSettings] = msgspec.field(default_factory=dict)


_DEFAULT = FairShareSettings()


class FairShare(Policy):
    name = "fairshare"

    def __init__(
        self,
        usage: Usage = _DEFAULT.usage,
        half_life_s: float = _DEFAULT.half_life_s,
        accounts: Mapping[str, tuple[float, str | None]] | None = None,
        default_shares: float = _DEFAULT.default_shares,
        billing: Mapping[str, float] | None = None,
    ) -> None:
        self.usage = usage
        self.half_life_s = half_life_s
        self.accounts = dict(accounts or {})  # name -> (shares, parent or None)
        self.default_shares = default_shares
        self.billing: dict[str, float] = msgspec.structs.asdict(_DEFAULT.billing) | dict(billing or {})
        self.factors: dict[Leaf, float] = {}
        self._tree: _Tree | None = None

    @classmethod
    def from_config(cls, table: object) -> Self:
        s = settings_of(table, FairShareSettings, cls.name)
        accounts = {
            name: (s.default_shares if a.shares is None else a.shares, a.parent) for name, a in s.accounts.items()
        }
        _check_tree(accounts)
        return cls(s.usage, s.half_life_s, accounts, s.default_shares, msgspec.structs.asdict(s.billing))

    # -- usage --------------------------------------------------------------

    def usage_rate(self, job: Job) -> float:
        """Usage units the job accrues per second of run time (the core's ledger
        charges ended runs at this rate; see :mod:`schedd.core.usage`)."""
        if self.usage == "gpu_seconds":
            return float(job.ngpus)
        if self.usage == "cpu_seconds":
            return float(job.ncpus)
        mem_gb = sum(c.mem_mb * c.count for c in job.chunks) / 1024
        b = self.billing
        return job.ncpus * b["cpu"] + job.ngpus * b["gpu"] + mem_gb * b["mem_gb"]

    # -- the factor ---------------------------------------------------------

    def prepare(self, ctx: Context) -> None:
        usage: dict[Leaf, float] = defaultdict(float)
        for leaf, value in ctx.snapshot.usage.items():
            usage[leaf] += value
        for r in ctx.snapshot.running:
            usage[leaf_of(r.job)] += self.usage_rate(r.job) * max(0.0, ctx.now - r.start_time)
        for job in ctx.snapshot.pending:
            usage.setdefault(leaf_of(job), 0.0)
        self.factors = self.compute(usage)

    def compute(self, usage: Mapping[Leaf, float]) -> dict[Leaf, float]:
        """Factor per (account, user) leaf for the given raw usage. Pure; see the module doc.

        O(tree) per call; the tree's shape is cached while the set of leaves stays
        the same, so a cycle only sums usage up and effective usage down.
        """
        tree = self._tree_for(usage)
        raw = [0.0] * len(tree.parent)
        for i, leaf in tree.leaves:
            raw[i] = usage.get(leaf, 0.0)
        parent = tree.parent
        for i in range(len(raw) - 1, 0, -1):  # pre-order reversed: children before parents
            raw[parent[i]] += raw[i]
        total = raw[0]
        ue = [0.0] * len(raw)
        for i in range(1, len(raw)):
            u = raw[i] / total if total > 0 else 0.0
            p = parent[i]
            ue[i] = u if p == 0 else u + (ue[p] - u) * tree.frac[i]
        return {
            leaf: math.pow(2.0, -ue[i] / tree.norm[i]) if tree.norm[i] > 0 else 0.0
            for i, leaf in tree.leaves
        }

    def _tree_for(self, usage: Mapping[Leaf, float]) -> _Tree:
        leaves = frozenset(usage)
        if self._tree is None or self._tree.key != leaves:
            self._tree = self._build_tree(leaves)
        return self._tree

    def _build_tree(self, leaves: frozenset[Leaf]) -> _Tree:
        """root -> accounts (nested) -> users, flattened in pre-order."""
        children: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # by account ("" = root)
        placed: set[str] = set()

        def add_account(name: str) -> None:
            if name in placed:
                return
            placed.add(name)
            shares, parent = self.accounts.get(name, (self.default_shares, None))
            if parent:
                add_account(parent)
            children[parent or ""].append(("acct", name, shares))

        for account, user in sorted(leaves):
            add_account(account or DEFAULT_ACCOUNT)
            children[account or DEFAULT_ACCOUNT].append(("user", f"{account}\0{user}", self.default_shares))
        for name in self.accounts:
            add_account(name)
        tree = _Tree(leaves)

        def walk(account: str, index: int) -> None:
            kids = children.get(account, [])
            total = sum(k[2] for k in kids) or 1.0
            for kind, name, shares in kids:
                i = len(tree.parent)
                tree.parent.append(index)
                tree.frac.append(shares / total)
                tree.norm.append(tree.norm[index] * shares / total)
                if kind == "user":
                    acct, user = name.split("\0", 1)
                    tree.leaves.append((i, (acct, user)))
                else:
                    walk(name, i)

        walk("", 0)
        return tree


@dataclass
class _Tree:
    """The share tree in pre-order: per node its parent's index, local share
    fraction and normalized shares; index 0 is the root."""

    key: frozenset[Leaf]
    parent: list[int] = field(default_factory=lambda: [0])
    frac: list[float] = field(default_factory=lambda: [1.0])
    norm: list[float] = field(default_factory=lambda: [1.0])
    leaves: list[tuple[int, Leaf]] = field(default_factory=list)


def _check_tree(accounts: Mapping[str, tuple[float, str | None]]) -> None:
    for name in accounts:
        seen = {name}
        parent = accounts[name][1]
        while parent is not None:
            if parent not in accounts:
                raise ConfigError(f"fairshare.accounts.{name}.parent", f"unknown account {parent!r}")
            if parent in seen:
                raise ConfigError(f"fairshare.accounts.{name}.parent", "accounts form a cycle")
            seen.add(parent)
            parent = accounts[parent][1]
