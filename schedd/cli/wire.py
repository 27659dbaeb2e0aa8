"""JSON for the commands without importing :mod:`json` (issue #12).

``import json`` costs about as much as the interpreter's whole start-up here:
its pure-Python decoder and encoder import :mod:`re`, which imports
:mod:`enum`, and a command needs none of that to encode one request and decode
one answer. The C accelerator ``_json`` that :mod:`json` itself uses does all
the work, so this module drives it directly: the same scanner and encoder,
hence the same output, at a fraction of the import cost. Where ``_json`` is
missing or its signature differs (another interpreter), it falls back to
:mod:`json` — slower to import, never different. ``tests/cli/test_wire.py``
checks both agree on arbitrary values.
"""

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["dumps", "loads"]

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


def _unserializable(o: object) -> object:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _accelerated() -> "tuple[Callable[[str, int], tuple[Any, int]], Callable[[Any, int], Any]] | None":
    try:
        import _json

        scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder: duck-typed
        # json.dumps' defaults: ensure_ascii, no indent, ", " and ": ", allow_nan
        encode = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii, None, ": ", ", ",
                                    False, False, True)
        return scan, encode
    except (ImportError, AttributeError, TypeError):
        return None


_FAST = _accelerated()


def dumps(obj: "Any") -> bytes:
    """``json.dumps(obj).encode()``."""
    if _FAST is None:
        import json

        return json.dumps(obj).encode()
    return "".join(_FAST[1](obj, 0)).encode()


def loads(data: bytes | bytearray) -> "Any":
    """``json.loads(data)``; ValueError for anything that is not one JSON document."""
    if _FAST is None:
        import json

        return json.loads(data)
    text = data.decode("utf-8")
    start = _skip(text, 0)
    try:
        value, end = _FAST[0](text, start)
    except StopIteration as e:
        raise ValueError(f"not JSON at offset {e.value}") from None
    if _skip(text, end) != len(text):
        raise ValueError(f"extra data at offset {end}")
    return value


def _skip(text: str, i: int) -> int:
    """The index of the first non-whitespace character from ``i`` (JSON's four)."""
    n = len(text)
    while i < n and text[i] in " \t\n\r":
        i += 1
    return i
