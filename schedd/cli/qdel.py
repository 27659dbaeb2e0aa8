"""qdel: delete jobs, as PBS's qdel.

A queued, held or waiting job ends at once; a running one gets SIGTERM, then
SIGKILL after the kill delay. ``-W force`` ends a running job without waiting
for its node to confirm (a node that is gone); ``-x`` also deletes finished
jobs, with their history. Every operand is tried; each failure is reported as
PBS does (``qdel: Unknown Job Id 17.srv``) and the exit code is the last one's.
"""

from __future__ import annotations

import sys

from schedd.cli import command
from schedd.cli.common import UsageError, for_each_job, help_parser, job_path, options, usage_error

__all__ = ["main"]

USAGE = "usage: qdel [-W force|suppress_email=N] [-x] job_identifier..."
EPILOG = """\
examples:
  qdel 17                     delete job 17 (17.server works too)
  qdel 17 18 19               several jobs; the exit code is the last failure's
  qdel '17[]'                 a whole array; '17[3]' one subjob, '17[2-5]' a range
  qdel -W force 17            a job whose node is gone: end it without the node's word
  qdel -x 17                  also a finished job: forget it, history included

exit codes: 0 ok, 1 malformed id, 2 usage, 35 finished (without -x), 153 unknown job,
  159 not yours, 168 wrong state, 186 cannot reach the server
"""


@command
def main(argv: list[str]) -> int:
    try:
        pairs, ids = options(argv, "W:x")
        if ("--help", "") in pairs:
            help_parser("qdel", USAGE, "Delete jobs: queued ones at once, running ones with SIGTERM then SIGKILL.",
                        EPILOG, [("-W", "force|suppress_email=N", "force: end running jobs without waiting for "
                                  "their node; suppress_email is accepted (schedd sends no mail)"),
                                 ("-x", "", "finished jobs too: delete them and their history")]).print_help()
            return 0
        params = []
        for opt, value in pairs:
            if opt == "-x":
                params.append("purge=1")
            elif value == "force":
                params.append("force=1")
            elif not value.startswith("suppress_email="):
                raise UsageError(f"-W {value}: expected force or suppress_email=N")
        if not ids:
            raise UsageError()
    except UsageError as e:
        return usage_error("qdel", e, USAGE)
    query = "?" + "&".join(dict.fromkeys(params)) if params else ""
    return for_each_job("qdel", ids, lambda client, job: client.call("DELETE", job_path(job, query)))


if __name__ == "__main__":
    sys.exit(main())
