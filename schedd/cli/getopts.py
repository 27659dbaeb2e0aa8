"""POSIX getopt for the commands, without :mod:`getopt`'s import cost (issue #12).

The standard :mod:`getopt` imports :mod:`gettext` for its messages, which
imports :mod:`re`, :mod:`locale` and :mod:`enum`: about a third of the
interpreter's start-up, paid by every ``qsub`` and ``qstat``. This is the same
algorithm (options end at the first operand or ``--``; ``-abc`` bundles; a
value attached or in the next word; ``--long``, ``--long=value`` and unique
prefixes), with the same results and the same messages, so callers that read
``GetoptError.msg``/``.opt`` need no change. ``tests/cli/test_getopts.py``
checks it against :func:`getopt.getopt` on generated command lines.
"""

__all__ = ["GetoptError", "getopt"]


class GetoptError(Exception):
    """As :class:`getopt.GetoptError`: ``msg`` and the offending option ``opt``."""

    def __init__(self, msg: str, opt: str = "") -> None:
        super().__init__(msg, opt)
        self.msg, self.opt = msg, opt

    def __str__(self) -> str:
        return self.msg


def getopt(args: list[str], shortopts: str, longopts: list[str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """``getopt.getopt(args, shortopts, longopts)``."""
    pairs: list[tuple[str, str]] = []
    longs = list(longopts or [])
    args = list(args)
    while args and args[0].startswith("-") and args[0] != "-":
        if args[0] == "--":
            return pairs, args[1:]
        if args[0].startswith("--"):
            args = _long(pairs, args[0][2:], longs, args[1:])
        else:
            args = _short(pairs, args[0][1:], shortopts, args[1:])
    return pairs, args


def _long(pairs: list[tuple[str, str]], text: str, longs: list[str], rest: list[str]) -> list[str]:
    name, eq, value = text.partition("=")
    takes, name = _long_has_args(name, longs)
    if takes:
        if not eq:
            if not rest:
                raise GetoptError(f"option --{name} requires argument", name)
            value, rest = rest[0], rest[1:]
    elif eq:
        raise GetoptError(f"option --{name} must not have an argument", name)
    pairs.append(("--" + name, value if takes else ""))
    return rest


def _long_has_args(name: str, longs: list[str]) -> tuple[bool, str]:
    matches = [o for o in longs if o.startswith(name)]
    if not matches:
        raise GetoptError(f"option --{name} not recognized", name)
    if name in matches:
        return False, name
    if name + "=" in matches:
        return True, name
    if len(matches) > 1:
        raise GetoptError(f"option --{name} not a unique prefix", name)
    only = matches[0]
    return (True, only[:-1]) if only.endswith("=") else (False, only)


def _short(pairs: list[tuple[str, str]], text: str, shortopts: str, rest: list[str]) -> list[str]:
    while text:
        opt, text = text[0], text[1:]
        if _short_has_arg(opt, shortopts):
            if not text:
                if not rest:
                    raise GetoptError(f"option -{opt} requires argument", opt)
                text, rest = rest[0], rest[1:]
            pairs.append(("-" + opt, text))
            return rest
        pairs.append(("-" + opt, ""))
    return rest


def _short_has_arg(opt: str, shortopts: str) -> bool:
    for i, c in enumerate(shortopts):
        if c == opt and c != ":":
            return shortopts.startswith(":", i + 1)
    raise GetoptError(f"option -{opt} not recognized", opt)
