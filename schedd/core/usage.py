"""Usage accounting: who used how much, decayed over time — the core's, not a policy's.

The owner of time (the daemon or the simulator) charges a job's run when it
ends, reads the ledger as of the cycle's ``now`` into
:attr:`Snapshot.usage <schedd.core.context.Snapshot.usage>`, and policies only
*read* it. What a second of a job costs and how fast usage is forgotten come
from one place: the pipeline's usage policy (:class:`UsagePolicy`, the first
policy with a ``usage_rate`` hook, e.g. fair-share). Without one nothing is
charged and the snapshot's usage stays empty.

::

    charge:  U[(account, user)] += rate(job) * run seconds      dated at the run's end
    read:    U(now) = U(stamp) * 2^(-(now - stamp) / half_life_s)

One default, :data:`DEFAULT_HALF_LIFE_S` = 7 days: the value the shipped
``conf/policies.toml`` sets and fair-share's own default. (The simulator used
to fall back on 1 day and the daemon on 7 when no policy asked for usage; as
nothing is charged then, the two differed only on paper.)

Cost: a charge is O(1) plus a lazy decay, O(leaves), at most once per instant;
a read is O(leaves).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from schedd.core.model import Job

__all__ = ["DEFAULT_HALF_LIFE_S", "Leaf", "UsageLedger", "UsagePolicy", "leaf_of"]

#: Usage this many seconds old counts half when no policy says otherwise (7 days).
DEFAULT_HALF_LIFE_S = 7 * 86400.0

#: Who usage is charged to: (account, user).
Leaf = tuple[str, str]


def leaf_of(job: Job) -> Leaf:
    """The (account, user) a job's usage is charged to."""
    return (job.account, job.owner)


@runtime_checkable
class UsagePolicy(Protocol):
    """What a policy that reads usage tells the core (and the ``/usage`` report)."""

    #: Usage this many seconds old counts half.
    half_life_s: float
    #: The unit usage is counted in, e.g. ``"gpu_seconds"`` (shown by ``qacct``).
    usage: str

    def usage_rate(self, job: Job) -> float:
        """Usage units the job accrues per second of run time."""
        ...

    def compute(self, usage: Mapping[Leaf, float]) -> dict[Leaf, float]:
        """The policy's factor per leaf for this usage (for reports; pure)."""
        ...


class UsageLedger:
    """Decayed usage per (account, user), for whoever owns time (daemon or simulator).

    Values are stored as of ``stamp`` and decayed lazily: ``v * 2^(-(now-stamp)/h)``.
    Built with :meth:`for_policy`, it also knows what a job costs
    (:meth:`charge_run`); without a usage policy it stays empty.

    >>> ledger = UsageLedger(half_life_s=100.0)
    >>> ledger.charge(("a", "ann"), 80.0, at=0.0)
    >>> ledger.at(100.0)[("a", "ann")]
    40.0
    """

    def __init__(self, half_life_s: float = DEFAULT_HALF_LIFE_S, policy: UsagePolicy | None = None) -> None:
        self.half_life_s = half_life_s
        self.policy = policy
        self.stamp = 0.0
        self.values: dict[Leaf, float] = {}

    @classmethod
    def for_policy(cls, policy: UsagePolicy | None) -> UsageLedger:
        """The ledger a pipeline's usage policy asks for (its half-life and rate).

        >>> UsageLedger.for_policy(None).half_life_s == DEFAULT_HALF_LIFE_S
        True
        """
        return cls(policy.half_life_s if policy is not None else DEFAULT_HALF_LIFE_S, policy)

    def _decay_to(self, now: float) -> None:
        if now > self.stamp:
            f = math.pow(2.0, -(now - self.stamp) / self.half_life_s)
            for k in self.values:
                self.values[k] *= f
            self.stamp = now

    def charge(self, leaf: Leaf, amount: float, at: float) -> None:
        """Add ``amount`` of usage that happened at time ``at``."""
        self._decay_to(at)
        if at < self.stamp:  # dated before the last read: already this much decayed
            amount *= math.pow(2.0, -(self.stamp - at) / self.half_life_s)
        self.values[leaf] = self.values.get(leaf, 0.0) + amount

    def charge_run(self, job: Job, seconds: float, at: float) -> None:
        """Charge ``seconds`` of the job's run, ended at ``at``, at the policy's rate.

        A negative ``seconds`` takes a charge back. Nothing without a usage policy.
        """
        if self.policy is not None:
            self.charge(leaf_of(job), self.policy.usage_rate(job) * seconds, at)

    def at(self, now: float) -> dict[Leaf, float]:
        """Every leaf's usage as of ``now`` (a copy); time never runs backwards."""
        self._decay_to(now)
        return dict(self.values)
