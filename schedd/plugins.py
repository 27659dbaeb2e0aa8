"""Third-party code schedd runs: policy plugins and site hooks, found and guarded here.

This is the shell's side of extension (the core only receives a registry):

* :func:`policy_registry` resolves every table of a parsed ``policies.toml`` to
  a class — a shipped one (:data:`policies.REGISTRY`), one named in its table by
  ``policy = "module:Class"``, or one an installed distribution declares in the
  entry-point group ``schedd.policies`` (the entry point's name is the table's).
  Any failure (no such module, not a :class:`~policies.base.Policy`, a name that
  is not the table's) is a :class:`ConfigError` naming the table and the plugin,
  so ``schedd serve`` and ``schedd config check`` stop before anything runs.
* :func:`guard` wraps the hooks of plugin policies so that an exception in one
  fails only that call: it is logged (at most once a minute per policy and
  hook, with its traceback) and counted in :data:`ERRORS` (the
  ``schedd_policy_errors`` metric), and the call answers as a policy with no
  opinion would: no order preference (``0.0``), no refusal (``None``).
  Shipped policies are not wrapped: their bugs are schedd's, and the loop's
  own guard logs a failed cycle.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from policies import ENTRY_POINT_GROUP, REGISTRY, Policy
from schedd.core.scheduler import Pipeline
from schedd.errors import ConfigError

__all__ = ["ERRORS", "Resolved", "guard", "import_object", "installed", "policy_registry"]

log = logging.getLogger("schedd.plugins")

#: (policy, hook) -> exceptions raised since the daemon started.
ERRORS: Counter[tuple[str, str]] = Counter()
_LOG_EVERY_S = 60.0
_last_logged: dict[tuple[str, str], float] = {}

#: The hooks guarded, and what a failed call answers instead (see the module docstring).
_NEUTRAL: dict[str, tuple[str, object]] = {
    "prepare": ("prepare_hooks", None),
    "order_key": ("key_hooks", 0.0),
    "fits": ("fits_hooks", None),
    "on_start": ("start_hooks", None),
}

F = TypeVar("F", bound=Callable[..., Any])


def import_object(ref: str, what: str) -> Any:
    """``"package.module:attr.sub"`` imported; ``what`` names it in the error.

    >>> import_object("policies.limits:Limits", "policy").name
    'limits'
    >>> import_object("policies.limits", "policy")
    Traceback (most recent call last):
    ...
    schedd.errors.ConfigError: policy: 'policies.limits': expected "module:attribute"
    """
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(what, f'{ref!r}: expected "module:attribute"')
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:  # ImportError, or any error the module raises as it runs
        raise ConfigError(what, f"cannot import {module!r} (of {ref!r}): {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(what, f"{ref!r}: module {module!r} has no {attr!r}") from None
    return obj


def installed() -> dict[str, str]:
    """Entry points of the group ``schedd.policies``: table name -> ``module:Class``."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


class Resolved:
    """What :func:`policy_registry` found: the tables as the core reads them
    (without ``policy`` keys), the registry, and which tables are plugins (and from where)."""

    def __init__(self, tables: dict[str, Any], registry: dict[str, type[Policy]], plugins: dict[str, str]) -> None:
        self.tables, self.registry, self.plugins = tables, registry, plugins


def policy_registry(data: Mapping[str, Any]) -> Resolved:
    """Resolve every table of a parsed ``policies.toml`` (see the module docstring)."""
    tables: dict[str, Any] = {}
    registry: dict[str, type[Policy]] = dict(REGISTRY)
    plugins: dict[str, str] = {}
    eps: dict[str, str] | None = None
    for name, table in data.items():
        if name == "actions" or not isinstance(table, dict):
            tables[name] = table
            continue
        table = dict(table)
        ref = table.pop("policy", None)
        tables[name] = table
        if ref is not None:
            if not isinstance(ref, str):
                raise ConfigError(f"{name}.policy", f'must be "module:Class", not {ref!r}')
            if name in REGISTRY:
                raise ConfigError(f"{name}.policy", f"[{name}] is a shipped policy; give the plugin's table its own name")
            registry[name] = _policy_class(import_object(ref, f"{name}.policy"), name, ref)
            plugins[name] = ref
        elif name not in REGISTRY:
            eps = installed() if eps is None else eps
            if name not in eps:
                known = ", ".join(sorted({*REGISTRY, *eps}))
                raise ConfigError(name, f"unknown policy {name!r}; known: actions, {known} "
                                        f'(or set policy = "module:Class" in [{name}])')
            cls = _load_entry_point(name)
            registry[name] = _policy_class(cls, name, eps[name])
            plugins[name] = eps[name]
    return Resolved(tables, registry, plugins)


def _load_entry_point(name: str) -> Any:
    (ep,) = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    try:
        return ep.load()
    except Exception as e:
        raise ConfigError(name, f"policy plugin {ep.value!r} (entry point {ENTRY_POINT_GROUP}:{name} of "
                                f"{ep.dist.name if ep.dist else 'an unknown distribution'}) failed to load: "
                                f"{type(e).__name__}: {e}") from e


def _policy_class(obj: object, table: str, ref: str) -> type[Policy]:
    if not (isinstance(obj, type) and issubclass(obj, Policy)):
        raise ConfigError(table, f"policy plugin {ref!r} is not a subclass of policies.base.Policy")
    if obj.name != table:
        raise ConfigError(table, f"policy plugin {ref!r} is named {obj.name!r}: its table must be [{obj.name}]")
    return obj


def guard(pipeline: Pipeline, plugins: Mapping[str, str]) -> Pipeline:
    """Wrap the hooks of the ``plugins`` in ``pipeline`` (in place); returns it."""
    for name in plugins:
        policy = pipeline.policies.get(name)
        for hook, (attr, neutral) in _NEUTRAL.items():
            method = getattr(policy, hook, None)
            if method is None:
                continue
            hooks: list[Callable[..., Any]] = getattr(pipeline, attr)
            setattr(pipeline, attr, [_guarded(h, name, hook, neutral) if h == method else h for h in hooks])
    return pipeline


def _guarded(fn: F, policy: str, hook: str, neutral: object) -> F:
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            _record(policy, hook)
            return neutral

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


def _record(policy: str, hook: str) -> None:
    """Count the failure; log it with its traceback, at most once a minute per (policy, hook)."""
    key = (policy, hook)
    ERRORS[key] += 1
    now = time.monotonic()
    if now - _last_logged.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
        _last_logged[key] = now
        log.exception("policy plugin %r: %s failed (%d times so far); the call is ignored this time",
                      policy, hook, ERRORS[key])
