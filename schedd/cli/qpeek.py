"""qpeek: the end of a running job's output, as several PBS sites' qpeek.

The node that runs the job's rank 0 reads the file as the job's owner and sends
its last lines (GET /api/v1/jobs/ID/log), so this works from any machine,
whether or not it sees the node's disk. ``-f`` follows: it asks again every
second and prints what is new, until the job ends (or Ctrl-C).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from schedd.cli import command
from schedd.cli.common import UsageError, help_parser, job_path, options, parse_job_id, run, usage_error

__all__ = ["main", "new_lines"]

USAGE = "usage: qpeek [-e] [-n lines] [-f] job_identifier"
EPILOG = """\
examples:
  qpeek 17              the last 10 lines of job 17's stdout
  qpeek -e -n 50 17     the last 50 lines of its stderr
  qpeek -f 17           follow its stdout until it ends

exit codes: 0 ok, 2 usage, 153 unknown job, 159 not yours, 186 cannot reach the server
"""

_FOLLOW_S = 1.0
_WINDOW = 1000  # lines asked for when following, to find where the last answer ended


def new_lines(old: list[str], new: list[str]) -> list[str]:
    """What ``new`` (a later tail of the same file) adds after ``old``.

    >>> new_lines(["a", "b", "c"], ["b", "c", "d", "e"])
    ['d', 'e']
    >>> new_lines([], ["x"]), new_lines(["x"], ["x"])
    (['x'], [])
    """
    if not old:
        return new
    for k in range(min(len(old), len(new)), 0, -1):
        if old[-k:] == new[:k]:
            return new[k:]
    return new


@command
def main(argv: list[str]) -> int:
    try:
        pairs, ids = options(argv, "en:f")
        if ("--help", "") in pairs:
            help_parser("qpeek", USAGE, "Show the end of a running job's output.", EPILOG,
                        [("-e", "", "stderr instead of stdout"), ("-n", "LINES", "how many lines (default 10)"),
                         ("-f", "", "follow until the job ends")]).print_help()
            return 0
        stream, lines, follow = "out", 10, False
        for opt, value in pairs:
            if opt == "-e":
                stream = "err"
            elif opt == "-n":
                if not (value.isascii() and value.isdigit()) or int(value) < 1:
                    raise UsageError("-n: expected a number of lines >= 1")
                lines = int(value)
            elif opt == "-f":
                follow = True
        if len(ids) != 1:
            raise UsageError("one job identifier, please")
        job = parse_job_id(ids[0]).target
    except (UsageError, ValueError) as e:
        return usage_error("qpeek", e if isinstance(e, UsageError) else UsageError(str(e)), USAGE)

    def body(client: Any) -> int:
        got = client.call("GET", job_path(job, f"/log?stream={stream}&tail={lines}"))["lines"]
        sys.stdout.write("".join(f"{line}\n" for line in got))
        sys.stdout.flush()
        seen = got
        while follow:
            time.sleep(_FOLLOW_S)  # a poll interval: the page's stream carries no output
            state = client.call("GET", job_path(job))["job"]["state"]
            now = client.call("GET", job_path(job, f"/log?stream={stream}&tail={_WINDOW}"))["lines"]
            fresh = new_lines(seen, now)
            sys.stdout.write("".join(f"{line}\n" for line in fresh))
            sys.stdout.flush()
            seen = now
            if state == "finished":
                break
        return 0

    return run("qpeek", body)


if __name__ == "__main__":
    sys.exit(main())
