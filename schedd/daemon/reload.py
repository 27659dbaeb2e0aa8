"""Live reload: ``SIGHUP`` or ``schedd reload`` re-reads the three files without a restart.

The rule: **all or nothing, and never the running jobs.** The new schedd.toml,
policies.toml (with its plugins) and pool.toml are read and checked in full
first; any error refuses the reload, is logged, is answered to ``schedd
reload``, and the old configuration stays. Otherwise, in one step of the event
loop (so no cycle sees half of it):

* queues, QoS and limits (schedd.toml) apply to the next cycle and the next
  submission; running jobs keep the resources and walltime they started with;
* the policy pipeline is the new one from the next cycle on (policy objects
  are built afresh: no per-cycle state survives);
* jobs queued to a queue that is no longer configured stay queued: the
  cycle's first ``fits`` (:func:`guard_removed_queues`) holds them with
  ``QueueLimit`` and their comment says why and what to do (``qalter -q``);
  the same holds after a restart with such a file;
* a node group's changed ``count`` in pool.toml resizes the pool through its
  driver's ``resize`` (the fleet's :class:`~schedd.daemon.fleet.PoolView`, as
  ``POST /api/v1/pool/GROUP/scale`` does): the Kubernetes driver (``manage =
  true``) and the local pool of ``schedd up`` start nodes at once and drain the
  highest-numbered ones, removing each only once its jobs have ended;
* what cannot change under a running daemon — ``listen``, TLS files,
  ``state_dir``, ``server_name``, the rest of pool.toml (its agents run jobs),
  and the usage policy's unit and half-life (the usage ledger's meaning) — is
  kept as it is, and the answer says that it needs a restart.
"""

from __future__ import annotations

import logging

import msgspec
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from schedd.config import PoolSettings, Settings, load_pipeline, load_pool, load_settings
from schedd.core.context import Context
from schedd.core.model import Job, JobState, Reason
from schedd.core.scheduler import Pipeline
from schedd.errors import ConfigError, RequestError

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["Reloader", "Sources", "guard_removed_queues", "mark_removed_queues"]

log = logging.getLogger("schedd.reload")

#: Settings a running daemon cannot take on: they need a restart.
_RESTART_ONLY = ("listen", "tls_cert", "tls_key", "state_dir", "server_name")


@dataclass(frozen=True)
class Sources:
    """Where the daemon's configuration came from, and the command line's overrides."""

    config: Path | None = None
    pool: Path | None = None
    state_dir: str | None = None
    listen: str | None = None

    def settings(self) -> Settings:
        settings = load_settings(self.config)
        if self.state_dir:  # as `schedd serve --state-dir` resolved it
            settings.state_dir = str(Path(self.state_dir).expanduser().resolve())
        if self.listen:
            settings.listen = self.listen
        return settings


@dataclass
class Loaded:
    """Everything a reload would switch to, read and checked."""

    settings: Settings
    pipeline: Pipeline
    pool: PoolSettings | None


def load(sources: Sources) -> Loaded:
    """Read and check all three files (ConfigError naming file and key on the first bad one)."""
    settings = sources.settings()
    pipeline = load_pipeline(settings.policies_path())
    pool = load_pool(sources.pool) if sources.pool is not None else None
    return Loaded(settings, guard_removed_queues(pipeline), pool)


def guard_removed_queues(pipeline: Pipeline) -> Pipeline:
    """Put a first ``fits`` hook in ``pipeline`` that holds jobs of queues the
    snapshot does not know (removed from schedd.toml) with ``QueueLimit``. In place."""
    if _removed_queue not in pipeline.fits_hooks:
        pipeline.fits_hooks.insert(0, _removed_queue)
    return pipeline


def _removed_queue(job: Job, ctx: Context) -> Reason | None:
    return Reason.QUEUE_LIMIT if job.queue not in ctx.snapshot.queues else None


def mark_removed_queues(state: State) -> int:
    """Say in the comment of every queued job of a removed queue why it waits; their number."""
    n = 0
    for rec in state.jobs.values():
        if rec.queue not in state.settings.queues and rec.state in (JobState.QUEUED.value, JobState.HELD.value,
                                                                    JobState.WAITING.value):
            rec.comment = (f"queue {rec.queue!r} is no longer configured: the job waits; "
                           f"qalter -q QUEUE moves it, qdel removes it")
            n += 1
    return n


@dataclass
class Reloader:
    """Applies a reload to a running daemon's state (see the module docstring)."""

    state: State
    sources: Sources
    pool: PoolSettings | None = None
    #: Called after a reload took effect (the loop's trigger: run a cycle now).
    wake: Callable[[], None] = lambda: None
    reloads: int = 0
    failures: int = 0
    last_error: str = field(default="")

    def reload(self) -> list[str]:
        """Re-read and apply; returns what changed (and what needs a restart).
        Raises ConfigError — the old configuration kept — if any file is bad."""
        try:
            new = load(self.sources)
        except ConfigError as e:
            self.failures += 1
            self.last_error = str(e)
            log.error("reload refused, the configuration in use is kept: %s", e)
            raise
        changes = self._apply(new)
        self.reloads += 1
        self.last_error = ""
        log.info("configuration reloaded: %s", "; ".join(changes) or "nothing changed")
        self.wake()
        return changes

    def _apply(self, new: Loaded) -> list[str]:
        state, old = self.state, self.state.settings
        changes: list[str] = []
        for key in _RESTART_ONLY:
            if getattr(new.settings, key) != getattr(old, key):
                changes.append(f"{key}: needs a restart (kept {getattr(old, key)!r})")
                setattr(new.settings, key, getattr(old, key))
        added = sorted(set(new.settings.queues) - set(old.queues))
        removed = sorted(set(old.queues) - set(new.settings.queues))
        changed = sorted(q for q in set(old.queues) & set(new.settings.queues) if old.queues[q] != new.settings.queues[q])
        changes += [f"queue {q}: added" for q in added] + [f"queue {q}: removed" for q in removed]
        changes += [f"queue {q}: changed" for q in changed]
        if new.settings.qos != old.qos:
            changes.append("qos: changed")
        others = [k for k in new.settings.__struct_fields__
                  if k not in ("queues", "qos", *_RESTART_ONLY) and getattr(new.settings, k) != getattr(old, k)]
        changes += [f"{k}: changed" for k in others]
        if new.pool is not None and self.pool is not None and new.pool != self.pool:
            changes += self._resize(new.pool)
        old_usage, new_usage = state.pipeline.usage_policy, new.pipeline.usage_policy
        if _usage_key(old_usage) != _usage_key(new_usage):
            changes.append("usage unit/half-life: needs a restart (the usage ledger keeps its own)")
        if list(state.pipeline.policies) != list(new.pipeline.policies) or state.pipeline.actions != new.pipeline.actions:
            changes.append(f"policies: {', '.join(new.pipeline.policies)}; actions: {', '.join(new.pipeline.actions)}")
        else:
            changes.append("policies: rebuilt")
        # The switch itself: plain assignments, between two cycles.
        state.settings = new.settings
        state.queues = new.settings.queue_defs()
        state.qos = new.settings.qos_defs()
        state.pipeline = new.pipeline
        state.fairshare = new_usage if new_usage is not None else state.fairshare
        n = mark_removed_queues(state)
        if n:
            changes.append(f"{n} queued jobs wait in removed queues")
        return changes


    def _resize(self, new: PoolSettings) -> list[str]:
        """Apply each group's changed count (a group of the same name, in both
        files); say what else changed needs a restart. ``self.pool`` becomes
        what is in effect: the old file with the counts applied."""
        old, view = self.pool, self.state.fleet.pool
        assert old is not None
        resize = view.resize if view is not None else None
        out: list[str] = []
        applied = list(old.groups)
        same_groups = [g.name for g in old.groups] == [g.name for g in new.groups]
        for i, (o, n) in enumerate(zip(old.groups, new.groups) if same_groups else ()):
            if o.count == n.count:
                continue
            if resize is None:
                out.append(f"pool group {n.name}: count {o.count} -> {n.count} needs a restart "
                           "(this pool cannot be resized by schedd)")
                continue
            try:
                answer = resize(n.name, n.count)
            except RequestError as e:
                out.append(f"pool group {n.name}: not resized: {e}")
                continue
            applied[i] = msgspec.structs.replace(o, count=n.count)
            draining = answer.get("draining")
            names = ", ".join(map(str, draining)) if isinstance(draining, list) else ""
            out.append(f"pool group {n.name}: {o.count} -> {n.count} nodes"
                       + (f" (draining {names}: removed once their jobs end)" if names else ""))
        self.pool = msgspec.structs.replace(old, groups=applied)
        counts = {g.name: g.count for g in self.pool.groups}
        rest = msgspec.structs.replace(new, groups=[msgspec.structs.replace(g, count=counts.get(g.name, g.count))
                                                    for g in new.groups])
        if rest != self.pool:
            out.append("pool.toml: changed beyond group counts; needs a restart (the pool's nodes are kept)")
        return out


def _usage_key(policy: object) -> tuple[object, ...]:
    if policy is None:
        return ()
    return (getattr(policy, "half_life_s", None), getattr(policy, "usage", None))
