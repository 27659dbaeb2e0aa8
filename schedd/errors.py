"""The one exception tree of schedd.

::

    ScheddError                    anything schedd raises on purpose
    ├── ConfigError                a TOML file or table is wrong; names the TOML path
    └── InputError                 a user's request is malformed (maps to HTTP 400)

"Cannot run yet" is never an exception: it is a pending :class:`schedd.model.Reason`.
"""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "ScheddError"]


class ScheddError(Exception):
    """Base of every error schedd raises on purpose."""


class ConfigError(ScheddError):
    """A configuration value is wrong. ``path`` is the dotted TOML path, e.g. ``backfill.mode``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class InputError(ScheddError):
    """A user's input is malformed; the message says exactly what and where."""
