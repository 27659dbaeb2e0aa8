"""qhold: put holds on jobs, as PBS's qhold (``-h u`` by default).

A held job stays in state H until ``qrls`` takes every hold off. Users set and
release ``u`` holds; ``o`` (operator) and ``s`` (system) need an operator. A
running job cannot be held. Failures are reported per operand, PBS style.
"""

from __future__ import annotations

import sys

from schedd.cli import command
from schedd.cli.common import UsageError, for_each_job, help_parser, job_path, options, usage_error

__all__ = ["hold_types", "main", "parse"]

USAGE = "usage: qhold [-h u|o|s] job_identifier..."
EPILOG = """\
examples:
  qhold 17                    a user hold: 17 stays H until qrls 17
  qhold -h o 17 18            an operator hold (operators only)
  qhold '17[]'                every pending subjob of array 17

exit codes: 0 ok, 1 malformed id, 2 usage, 35 finished, 153 unknown job,
  159 not allowed, 168 wrong state (e.g. running), 186 cannot reach the server
"""


def hold_types(value: str) -> str:
    """``-h``: some of u, o, s (PBS's n and p have no meaning in schedd).

    >>> hold_types("ou")
    'uo'
    """
    if not value or set(value) - set("uos"):
        raise UsageError(f"-h {value}: expected some of u (user), o (operator) and s (system)")
    return "".join(sorted(set(value), key="uos".index))


def parse(cmd: str, usage: str, description: str, epilog: str, argv: list[str]) -> tuple[str, list[str]] | int:
    """qhold's and qrls's shared command line: (hold types, ids), or an exit code."""
    try:
        pairs, ids = options(argv, "h:")
        if ("--help", "") in pairs:
            help_parser(cmd, usage, description, epilog, [("-h", "u|o|s", "hold types (default u)")]).print_help()
            return 0
        types = "u"
        for opt, value in pairs:
            types = hold_types(value)
        if not ids:
            raise UsageError()
        return types, ids
    except UsageError as e:
        return usage_error(cmd, e, usage)


@command
def main(argv: list[str]) -> int:
    parsed = parse("qhold", USAGE, "Hold jobs: they stay in state H until released with qrls.", EPILOG, argv)
    if isinstance(parsed, int):
        return parsed
    body = {"types": parsed[0]}
    return for_each_job("qhold", parsed[1], lambda client, job: client.call("POST", job_path(job, "/hold"), body))


if __name__ == "__main__":
    sys.exit(main())
