"""Reading configuration files: TOML in, validated objects out, errors with paths.

The only module of the core that touches the file system; what it returns is
plain data for the pure modules.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from schedd.errors import ConfigError
from schedd.scheduler import Pipeline

__all__ = ["DEFAULT_POLICIES", "load_pipeline"]

#: The shipped policy file, next to the package in a source checkout.
DEFAULT_POLICIES = Path(__file__).resolve().parent.parent / "conf" / "policies.toml"


def load_pipeline(path: Path = DEFAULT_POLICIES) -> Pipeline:
    """Parse a ``policies.toml`` into a :class:`Pipeline`.

    Raises :class:`ConfigError` naming the file and the TOML path for any bad value.
    """
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from e
    try:
        return Pipeline.from_config(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.path}", e.message) from e
