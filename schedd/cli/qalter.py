"""qalter: change a job that has not started, as PBS's qalter (the subset schedd can change).

``-l walltime=``, ``-p``, ``-N`` and ``-q`` map onto ``PATCH /api/v1/jobs/ID``;
users may only lower a walltime (operators may raise it). Every other qsub
option is refused with a message naming what can be altered (exit 2), before
anything is sent. Failures are reported per operand, PBS style.
"""

from __future__ import annotations

import sys

from schedd.cli import command
from schedd.cli.common import UsageError, for_each_job, help_parser, job_path, options, usage_error

TYPE_CHECKING = False  # mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main"]

USAGE = "usage: qalter [-l walltime=[[HH:]MM:]SS] [-N name] [-p priority] [-q queue] job_identifier..."
EPILOG = """\
examples:
  qalter -l walltime=00:30:00 17      a shorter walltime (users may only lower it)
  qalter -p 100 17 18                 a higher priority for two jobs
  qalter -N retry -q 1xgpu 17         rename and move to another queue

Only jobs that have not started can be altered (else exit 168).
exit codes: 0 ok, 1 malformed id, 2 usage, 32 rejected by the site's submit hook,
  35 finished, 153 unknown job, 159 not allowed, 168 wrong state, 170 unknown queue,
  186 cannot reach the server
"""

#: getopt letters: what schedd can alter (l N p q) and qsub options it cannot (refused by name)
OPTS = "a:A:c:e:h:j:k:l:m:M:N:o:p:P:q:r:R:S:u:v:W:"
_CAN = "schedd can alter -l walltime=, -p, -N and -q"


def changes(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The PATCH body for the options; raises UsageError naming the option.

    >>> changes([("-l", "walltime=10:00"), ("-p", "5"), ("-N", "x"), ("-q", "gpu@srv")])
    {'walltime_s': 600.0, 'priority': 5, 'name': 'x', 'queue': 'gpu'}
    """
    from schedd.cli import qsub, resources

    body: dict[str, Any] = {}
    for opt, value in pairs:
        try:
            if opt == "-l":
                for key, v in resources.parse_l(value):
                    if key != "walltime":
                        raise UsageError(f"-l {key}: not supported: {_CAN}")
                    body["walltime_s"] = resources.parse_walltime(v)
            elif opt == "-p":
                body["priority"] = qsub.priority(value)
            elif opt == "-N":
                body["name"] = qsub.job_name(value)
            elif opt == "-q":
                queue = qsub.queue_of(value)
                if queue is None:
                    raise UsageError(f"-q {value}: name a queue")
                body["queue"] = queue
            else:
                raise UsageError(f"{opt} is not supported: {_CAN}")
        except ValueError as e:
            raise UsageError(str(e), opt) from None
    if not body:
        raise UsageError(f"nothing to alter: {_CAN}")
    return body


@command
def main(argv: list[str]) -> int:
    try:
        pairs, ids = options(argv, OPTS)
        if ("--help", "") in pairs:
            help_parser("qalter", USAGE, "Change the walltime, priority, name or queue of jobs that have not started.",
                        EPILOG, [("-l", "walltime=[[HH:]MM:]SS", "a new walltime"),
                                 ("-N", "NAME", "a new job name"),
                                 ("-p", "PRIORITY", "a new priority, -1024..1023"),
                                 ("-q", "QUEUE", "move to this queue")]).print_help()
            return 0
        if not ids:
            raise UsageError()
        body = changes(pairs)
    except UsageError as e:
        return usage_error("qalter", e, USAGE)
    return for_each_job("qalter", ids, lambda client, job: client.call("PATCH", job_path(job), body))


if __name__ == "__main__":
    sys.exit(main())
