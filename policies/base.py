"""What every policy shares: the base class and strict reading of its TOML table.

A policy is a small class whose ``name`` is its module name and its TOML table.
It implements only the hooks it needs; the pipeline sees which ones exist:

``prepare(ctx)``                       once per cycle, before anything else
``order_key(job, ctx) -> float``       smaller runs first; keys combine in config order
``fits(job, ctx) -> Reason | None``    refuse a job whatever the free resources
``on_start(job, placement, ctx)``      a job was started in this cycle
``victims(job, ctx) -> Victims | None`` preemption: whom to evict for a blocked job

Bad configuration is never corrected silently: :class:`Options` raises
:class:`~schedd.errors.ConfigError` with the TOML path and the allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from schedd.errors import ConfigError

__all__ = ["Options", "Policy"]


class Policy:
    """Base of all policies; subclasses set ``name`` and read their table."""

    name: ClassVar[str] = ""

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> Self:
        """Build from the policy's TOML table; unknown keys are an error."""
        opts = Options(table, cls.name)
        policy = cls.configure(opts)
        opts.done()
        return policy

    @classmethod
    def configure(cls, opts: Options) -> Self:
        return cls()


class Options:
    """Typed, checked access to one TOML table; remembers which keys were read."""

    def __init__(self, table: Mapping[str, Any], path: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(path, f"must be a table, not {type(table).__name__}")
        self.table = table
        self.path = path
        self._seen: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        return self.table.get(key, default)

    def number(self, key: str, default: float, *, min: float = 0.0) -> float:
        """A number >= ``min`` (ints accepted; booleans refused)."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.path}.{key}", f"must be a number, not {value!r}")
        if value < min:
            raise ConfigError(f"{self.path}.{key}", f"must be >= {min}, not {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None, *, min: int = 0) -> int | None:
        """An integer >= ``min``, or None when absent and the default is None."""
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.path}.{key}", f"must be an integer, not {value!r}")
        if value < min:
            raise ConfigError(f"{self.path}.{key}", f"must be >= {min}, not {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.path}.{key}", f"must be true or false, not {value!r}")
        return value

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self._get(key, default)
        if value not in allowed:
            raise ConfigError(
                f"{self.path}.{key}", f"must be one of {', '.join(allowed)}; not {value!r}"
            )
        return str(value)

    def table_of(self, key: str) -> Mapping[str, Any]:
        value = self._get(key, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.path}.{key}", "must be a table")
        return value

    def sub(self, key: str) -> Options:
        """Options for a nested table, e.g. ``priority.weights``."""
        return Options(self.table_of(key), f"{self.path}.{key}")

    def done(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self.table) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen)) or "none"
            raise ConfigError(
                f"{self.path}.{unknown[0]}", f"unknown key (known keys: {known})"
            )
