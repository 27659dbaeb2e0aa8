"""qsig: send a signal to running jobs, as PBS's qsig (SIGTERM by default).

Every rank of the job gets the signal (its whole process group). A job that is
not running is refused (exit 168). PBS's suspend/resume are not supported.
"""

from __future__ import annotations

import sys

from schedd.cli import command
from schedd.cli.common import UsageError, for_each_job, help_parser, job_path, options, usage_error

__all__ = ["main", "signal_name"]

USAGE = "usage: qsig [-s signal] job_identifier..."
EPILOG = """\
examples:
  qsig 17                     SIGTERM to every rank of job 17
  qsig -s USR1 17             ask it to checkpoint (SIGUSR1, USR1 and 10 are the same)
  qsig -s KILL '17[3]'        one subjob of an array

exit codes: 0 ok, 1 malformed id, 2 usage, 35 finished, 153 unknown job,
  159 not yours, 168 not running, 186 cannot reach the server
"""


def signal_name(value: str) -> str:
    """``SIGUSR1``, ``usr1`` or ``10`` -> ``USR1`` / ``10``.

    >>> signal_name("sigusr1")
    'USR1'
    """
    from schedd.cli.resources import parse_signal

    if value.strip().lower() in ("suspend", "resume", "admin-suspend", "admin-resume"):
        raise UsageError(f"-s {value}: suspending jobs is not supported")
    try:
        return parse_signal(value)
    except ValueError as e:
        raise UsageError(f"-s {e}") from None


@command
def main(argv: list[str]) -> int:
    try:
        pairs, ids = options(argv, "s:")
        if ("--help", "") in pairs:
            help_parser("qsig", USAGE, "Send a signal to every rank of running jobs.", EPILOG,
                        [("-s", "SIGNAL", "name or number (default SIGTERM)")]).print_help()
            return 0
        sig = "TERM"
        for opt, value in pairs:
            sig = signal_name(value)
        if not ids:
            raise UsageError()
    except UsageError as e:
        return usage_error("qsig", e, USAGE)
    body = {"signal": sig}
    return for_each_job("qsig", ids, lambda client, job: client.call("POST", job_path(job, "/signal"), body))


if __name__ == "__main__":
    sys.exit(main())
