"""What every policy shares: the base class and strict reading of its TOML table.

A policy is a small class whose ``name`` is its module name and its TOML table.
It implements only the hooks it needs; the pipeline sees which ones exist:

``prepare(ctx)``                       once per cycle, before anything else
``order_key(job, ctx) -> float``       smaller runs first; keys combine in config order
``fits(job, ctx) -> Reason | None``    refuse a job whatever the free resources
``on_start(job, placement, ctx)``      a job was started in this cycle
``victims(job, ctx) -> Victims | None`` preemption: whom to evict for a blocked job
``usage_rate(job) -> float``           usage: what a second of the job costs (see schedd.core.usage)

``docs/policies.md`` is the one place that documents the hooks, what the
cycle's context offers, what a policy must not do (I/O, clocks), and how a
policy from another package is turned on (entry point ``schedd.policies`` or
``policy = "module:Class"``).

A policy's table is a msgspec Struct (``forbid_unknown_fields``, ``Meta(ge=...)``
bounds, ``Literal`` choices), as ``schedd.toml`` and ``pool.toml`` are; the
defaults of its fields are the commented defaults of ``conf/policies.toml``.
Bad configuration is never corrected silently: :func:`settings_of` raises
:class:`~schedd.errors.ConfigError` with the TOML path and, in the user's
words, what is allowed::

    backfill.mode: must be one of none, easy, conservative; not 'eazy'
    backfill.bf_window: unknown key (known keys: max_jobs_tested, mode)
    priority.max_age_s: must be >= 1.0, not 0
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, Union

import msgspec

from schedd.errors import ConfigError

__all__ = ["NoSettings", "Policy", "settings_of"]

S = TypeVar("S", bound=msgspec.Struct)


class NoSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The table of a policy that has no keys (its table only turns it on)."""


class Policy:
    """Base of all policies; subclasses set ``name`` and read their table."""

    name: ClassVar[str] = ""

    @classmethod
    def from_config(cls, table: object) -> Self:
        """Build from the policy's TOML table. A policy with keys overrides this,
        reading its Struct with :func:`settings_of`; here the table must be empty."""
        settings_of(table, NoSettings, cls.name)
        return cls()


def settings_of(table: object, kind: type[S], path: str) -> S:
    """``table`` (parsed TOML) as the Struct ``kind``; ``path`` is its TOML path.

    >>> class Demo(msgspec.Struct, forbid_unknown_fields=True):
    ...     mode: Literal["pack", "spread"] = "pack"
    >>> settings_of({"mode": "spread"}, Demo, "placement")
    Demo(mode='spread')
    >>> settings_of({"mode": "binpack"}, Demo, "placement")
    Traceback (most recent call last):
    ...
    schedd.errors.ConfigError: placement.mode: must be one of pack, spread; not 'binpack'
    """
    try:
        return msgspec.convert(table, kind)
    except msgspec.ValidationError as e:
        try:
            error = _explain(table, kind, path, e)
        except (LookupError, TypeError, StopIteration):  # a location not followed here
            error = ConfigError(path, str(e))
        raise error from None


# -- msgspec's error, in the user's words -------------------------------------------

_SEGMENT = re.compile(r"\.(\w+)|\[\.\.\.\]")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def _explain(value: Any, tp: Any, path: str, err: msgspec.ValidationError) -> ConfigError:
    """Follow the error's location (``$.accounts[...].parent``) through the value and
    its type, then say what the type allows. Only runs on a bad file."""
    text = str(err)
    message, _, where = text.partition(" - at `$")
    for m in _SEGMENT.finditer(where.rstrip("`")):
        tp = _unwrap(tp)[0]
        key = m.group(1)
        if key is not None:  # a Struct field
            value, tp, path = value[key], typing.get_type_hints(tp, include_extras=True)[key], f"{path}.{key}"
            continue
        value_type = typing.get_args(tp)[1]  # dict[str, V]: msgspec hides the key, find it
        for key, item in value.items():
            try:
                msgspec.convert(item, value_type)
            except msgspec.ValidationError as inner:
                return _explain(item, value_type, f"{path}.{key}", inner)
        break
    unknown = _UNKNOWN.search(message)
    if unknown is not None:
        known = ", ".join(sorted(_unwrap(tp)[0].__struct_fields__)) or "none"
        return ConfigError(f"{path}.{unknown.group(1)}", f"unknown key (known keys: {known})")
    return ConfigError(path, _allowed(value, tp) or message)


def _unwrap(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    """``Annotated[T, Meta...] | None`` -> (T, [Meta...]): TOML has no null."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Annotated:
        base, *metas = typing.get_args(tp)
        return base, [m for m in metas if isinstance(m, msgspec.Meta)]
    return tp, []


def _allowed(value: Any, tp: Any) -> str | None:
    """What ``tp`` allows, said to whoever wrote ``value``; None if not known here."""
    base, metas = _unwrap(tp)
    described = next((m.description for m in metas if m.description), None)
    ge = next((m.ge for m in metas if m.ge is not None), None)
    if described is not None:
        return f"must be {described}, not {value!r}"
    if typing.get_origin(base) is Literal:
        return f"must be one of {', '.join(map(str, typing.get_args(base)))}; not {value!r}"
    if base is bool:
        return f"must be true or false, not {value!r}"
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (base is int and isinstance(value, float)):
            return f"must be {'an integer' if base is int else 'a number'}, not {value!r}"
        return f"must be >= {ge}, not {value!r}" if ge is not None else None
    if typing.get_origin(base) is dict or (isinstance(base, type) and issubclass(base, msgspec.Struct)):
        return f"must be a table, not {type(value).__name__}"
    return None
