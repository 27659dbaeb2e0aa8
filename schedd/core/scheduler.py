"""One scheduling cycle: ``run_cycle(snapshot, pipeline) -> Plan``.

The recipe:

1. Build the cycle's working state from the frozen snapshot (free resources now,
   the time profile, lazily) and let each policy ``prepare``.
2. Set aside jobs that are not eligible (held, dependency, begin time) or can
   never run on this pool, with their reason.
3. Order the eligible jobs: policy ``order_key`` s, lexicographically in config
   order, then submission sequence (so equal priority = first come, first served).
4. Run the configured actions in order (``allocate``, ``preempt``, ``backfill``).

An action that reads settings (``backfill``, ``preempt``) reads them through a
typed Protocol (:class:`BackfillPolicy`, :class:`VictimPolicy`) resolved once
when the :class:`Pipeline` is built; naming such an action without the table
that configures it is a :class:`ConfigError`.

Combination rules, written once here and in :class:`~schedd.core.context.Context`:
the first policy whose ``fits`` refuses gives the pending reason; victims come
from the first policy with a ``victims`` hook; every policy's ``on_start`` sees
every start; what a job's run costs in usage, and how fast usage decays, come
from the first policy with a ``usage_rate`` hook (see :mod:`schedd.core.usage`).

Pure: no clock, no I/O. Cost is dominated by the sort, O(P log P) for P
pending jobs, plus O(1) amortised per job for the fit tests (see
:meth:`Context.try_now`), plus O(nodes) per job that actually starts or gets a
reservation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol, runtime_checkable

from policies import REGISTRY, Policy
from schedd.core.actions import ACTIONS, CONFIGURED_BY
from schedd.core.context import Context, Plan, Snapshot, waiting_reason
from schedd.errors import ConfigError
from schedd.core.model import Job, JobState, Placement, Reason, Running, Shape
from schedd.core.pending import FifoQueue
from schedd.core.usage import UsagePolicy

__all__ = ["DEFAULT_ACTIONS", "BackfillPolicy", "Pipeline", "VictimPolicy", "default_actions", "run_cycle"]

#: Every action, in the default order; without ``actions``, those whose table is present.
DEFAULT_ACTIONS = ("allocate", "preempt", "backfill")

@runtime_checkable
class VictimPolicy(Protocol):
    """What the preempt action needs from a preemption policy."""

    @property
    def mode(self) -> str: ...  # what happens to a victim: "requeue" | "cancel"
    @property
    def grace_s(self) -> float: ...
    @property
    def max_preemptors(self) -> int: ...

    def may_preempt(self, job: Job, ctx: Context) -> bool: ...
    def victims(self, job: Job, ctx: Context) -> tuple[list[Running], list[str]] | None: ...


@runtime_checkable
class BackfillPolicy(Protocol):
    """What the backfill action (and conservative reservations) read from the backfill policy."""

    @property
    def mode(self) -> str: ...  # "none" | "easy" | "conservative"
    @property
    def max_jobs_tested(self) -> int | None: ...


def default_actions(tables: Collection[str]) -> tuple[str, ...]:
    """The actions of a pipeline that lists none: every action whose table is present.

    >>> default_actions(["priority", "backfill"])
    ('allocate', 'backfill')
    """
    return tuple(a for a in DEFAULT_ACTIONS if CONFIGURED_BY.get(a, "") in tables or a not in CONFIGURED_BY)


@dataclass
class Pipeline:
    """The configured actions and policies, with each hook collected once."""

    actions: tuple[str, ...]
    policies: dict[str, Policy]
    steps: list[Callable[[Context], None]] = field(init=False)
    prepare_hooks: list[Callable[[Context], None]] = field(init=False)
    key_hooks: list[Callable[[Job, Context], float]] = field(init=False)
    fits_hooks: list[Callable[[Job, Context], Reason | None]] = field(init=False)
    start_hooks: list[Callable[[Job, Placement, Context], None]] = field(init=False)
    victims_policy: VictimPolicy | None = field(init=False)
    backfill_policy: BackfillPolicy | None = field(init=False)
    usage_policy: UsagePolicy | None = field(init=False)
    _never: tuple[object, dict[Shape, bool]] = field(init=False, default=(None, {}))

    def __post_init__(self) -> None:
        for name in self.actions:
            if name not in ACTIONS:
                raise ConfigError("actions", f"unknown action {name!r}; known: {', '.join(sorted(ACTIONS))}")
            table = CONFIGURED_BY.get(name)
            if table is not None and table not in self.policies:
                raise ConfigError("actions", f'"{name}" needs a [{table}] table')
        self.steps = [ACTIONS[name] for name in self.actions]
        ps = list(self.policies.values())
        self.prepare_hooks = [p.prepare for p in ps if hasattr(p, "prepare")]
        self.key_hooks = [p.order_key for p in ps if hasattr(p, "order_key")]
        self.fits_hooks = [p.fits for p in ps if hasattr(p, "fits")]
        self.start_hooks = [p.on_start for p in ps if hasattr(p, "on_start")]
        self.victims_policy = next((p for p in ps if isinstance(p, VictimPolicy)), None)
        self.backfill_policy = _backfill_of(self.policies)
        self.usage_policy = next((p for p in ps if isinstance(p, UsagePolicy)), None)

    def never_cache(self, capacity: object) -> dict[Shape, bool]:
        """Shape -> "can never run", kept across cycles while the pool's sizes stay the same."""
        if self._never[0] != capacity:
            self._never = (capacity, {})
        return self._never[1]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], registry: Mapping[str, type[Policy]] = REGISTRY) -> Pipeline:
        """Build from a parsed ``policies.toml``: ``actions`` plus one table per policy.

        Policies are enabled by having a table, in file order; unknown names raise
        :class:`ConfigError` naming the table and the known policies. Without
        ``actions``, the pipeline runs :func:`default_actions`. ``registry`` maps
        table names to classes: the shipped ones by default; the shell adds
        third-party ones (:mod:`schedd.plugins`) — the core imports nothing to
        find them. A class whose ``from_config`` fails other than with a
        ConfigError (a plugin's bug) is a ConfigError naming its table.
        """
        actions = config.get("actions", list(default_actions(config)))
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ConfigError("actions", f"must be a list of action names, not {actions!r}")
        policies: dict[str, Policy] = {}
        for name, table in config.items():
            if name == "actions":
                continue
            cls_ = registry.get(name)
            if cls_ is None:
                known = ", ".join(sorted(registry))
                raise ConfigError(name, f"unknown policy {name!r}; known: actions, {known}")
            try:
                policies[name] = cls_.from_config(table)
            except ConfigError:
                raise
            except Exception as e:  # a third-party class's bug: name its table, do not crash
                raise ConfigError(name, f"{cls_.__module__}.{cls_.__qualname__}.from_config failed: "
                                        f"{type(e).__name__}: {e}") from e
        return cls(tuple(actions), policies)

    @classmethod
    def of(cls, *policies: Policy, actions: Sequence[str] | None = None) -> Pipeline:
        """Build from policy objects (tests, benchmarks); ``actions`` as in :meth:`from_config`."""
        by_name = {p.name: p for p in policies}
        return cls(tuple(default_actions(by_name) if actions is None else actions), by_name)


def _backfill_of(policies: Mapping[str, Policy]) -> BackfillPolicy | None:
    """The backfill action's settings; a class registered under that table that does
    not provide them is a programming error, caught when the pipeline is built."""
    policy = policies.get(CONFIGURED_BY["backfill"])
    if policy is None or isinstance(policy, BackfillPolicy):
        return policy
    raise TypeError(f"policy {policy.name!r} does not provide BackfillPolicy")


def run_cycle(snapshot: Snapshot, pipeline: Pipeline) -> Plan:
    """Decide what starts, what is preempted and what is reserved, as of ``snapshot.now``."""
    ctx = Context(snapshot, pipeline)
    for prepare in pipeline.prepare_hooks:
        prepare(ctx)
    if isinstance(snapshot.pending, FifoQueue) and not pipeline.key_hooks:
        ctx.queue = snapshot.pending  # already eligible and in order: nothing to sort
        ctx.order = snapshot.pending.order
    else:
        ctx.order = order(_eligible(snapshot, ctx), ctx)
    for step in pipeline.steps:
        step(ctx)
    ctx.finish()
    return ctx.plan


def _eligible(snapshot: Snapshot, ctx: Context) -> list[Job]:
    """The pending jobs that may run now; the others get their reason in the plan."""
    eligible = []
    now, queued = snapshot.now, JobState.QUEUED
    never_cache = ctx.never_cache
    for job in snapshot.pending:
        if job.state is queued and (job.eligible_time is None or job.eligible_time <= now):
            never = never_cache.get(job.shape)
            if not (ctx.never(job) if never is None else never):
                eligible.append(job)
            else:
                ctx.plan.reasons[job.id] = Reason.NEVER
        else:
            ctx.plan.reasons[job.id] = waiting_reason(job, now) or Reason.PRIORITY
    return eligible


_ORDER = attrgetter("order")


def order(jobs: list[Job], ctx: Context) -> list[Job]:
    """Jobs best first: policy keys in config order, then submission sequence."""
    hooks = ctx.pipeline.key_hooks
    if not hooks:
        return sorted(jobs, key=_ORDER)
    if len(hooks) == 1:
        (key,) = hooks
        return sorted(jobs, key=lambda j: (key(j, ctx), j.order))
    return sorted(jobs, key=lambda j: (*(k(j, ctx) for k in hooks), j.order))
