"""qrerun: requeue running jobs, as PBS's qrerun.

The job is killed (SIGTERM, then SIGKILL) and queued again under the same id,
its attempt counter one higher. Jobs submitted with ``-r n`` are refused, as
are jobs that are not running (exit 168).
"""

from __future__ import annotations

import sys

from schedd.cli import command
from schedd.cli.common import UsageError, for_each_job, help_parser, job_path, options, usage_error

__all__ = ["main"]

USAGE = "usage: qrerun job_identifier..."

EPILOG = """\
examples:
  qrerun 17                   kill job 17 and queue it again (same id, next attempt)
  qrerun 17 18                several jobs; the exit code is the last failure's

exit codes: 0 ok, 1 malformed id, 2 usage, 35 finished, 153 unknown job,
  159 not yours, 168 not running or not rerunnable, 186 cannot reach the server
"""


@command
def main(argv: list[str]) -> int:
    try:
        pairs, ids = options(argv, "")
        if ("--help", "") in pairs:
            help_parser("qrerun", USAGE, "Requeue running jobs: kill them and queue them again under the same id.",
                        EPILOG, []).print_help()
            return 0
        if not ids:
            raise UsageError()
    except UsageError as e:
        return usage_error("qrerun", e, USAGE)
    return for_each_job("qrerun", ids, lambda client, job: client.call("POST", job_path(job, "/requeue")))


if __name__ == "__main__":
    sys.exit(main())
