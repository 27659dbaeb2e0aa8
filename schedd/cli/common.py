"""What every PBS command shares: exit codes, job id operands, error lines.

Stdlib only, imported by every command: keep it small. Exit codes are PBS's
(``pbs_errno & 0xFF``, see ../shared/reference section 1.7); the REST API's
error codes map onto them in :data:`EXIT_OF`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from schedd.cli.client import ApiError, Client, Unreachable

__all__ = [
    "EXIT_OF",
    "BAD_ID",
    "FINISHED",
    "OK",
    "PERMISSION",
    "UNKNOWN_JOB",
    "UNKNOWN_QUEUE",
    "UNREACHABLE",
    "USAGE",
    "WRONG_STATE",
    "JobOperand",
    "fail",
    "parse_job_id",
    "run",
]

OK = 0
BAD_ID = 1  # illegally formed job identifier
USAGE = 2
FINISHED = 35  # PBSE_HISTJOBID: finished job without -x
BAD_ATTR = 166  # PBSE_BADATVAL
UNKNOWN_JOB = 153  # PBSE_UNKJOBID
PERMISSION = 159  # PBSE_PERM
WRONG_STATE = 168  # PBSE_BADSTATE
UNKNOWN_QUEUE = 170  # PBSE_UNKQUE
UNREACHABLE = 186  # PBSE_NOSERVER

#: REST error code -> PBS exit code.
EXIT_OF = {
    "unknown_job": UNKNOWN_JOB,
    "job_finished": FINISHED,
    "wrong_state": WRONG_STATE,
    "unknown_queue": UNKNOWN_QUEUE,
    "permission_denied": PERMISSION,
    "unauthenticated": PERMISSION,
    "never_fits": BAD_ATTR,
    "bad_request": BAD_ATTR,
}

_ID = re.compile(r"^(\d+)(\[(\d*)(?:-(\d+))?\])?(?:\.[A-Za-z0-9_.-]+)?(?:@[A-Za-z0-9_.-]+)?$")


class JobOperand:
    """A job id operand: ``17``, ``17.srv``, ``17[]``, ``17[3]``, ``17[2-5]``.

    >>> [j.ids() for j in map(parse_job_id, ["17.srv", "17[]", "17[3]", "17[2-4]"])]
    [['17'], ['17[]'], ['17[3]'], ['17[2]', '17[3]', '17[4]']]
    """

    def __init__(self, text: str, number: str, bracket: str | None, first: str | None, last: str | None) -> None:
        self.text, self.number, self.bracket, self.first, self.last = text, number, bracket, first, last

    def ids(self) -> list[str]:
        if self.bracket is None:
            return [self.number]
        if not self.first:
            return [f"{self.number}[]"]
        if self.last is None:
            return [f"{self.number}[{self.first}]"]
        return [f"{self.number}[{i}]" for i in range(int(self.first), int(self.last) + 1)]


def parse_job_id(text: str) -> JobOperand:
    """Parse an operand; raises ValueError (the command prints PBS's message, exit 1)."""
    m = _ID.match(text.strip())
    if m is None or (m[4] is not None and (not m[3] or int(m[4]) < int(m[3]))):
        raise ValueError(f"illegally formed job identifier: {text}")
    return JobOperand(text, m[1], m[2], m[3], m[4])


def fail(cmd: str, message: str, code: int) -> int:
    print(f"{cmd}: {message}", file=sys.stderr)
    return code


def run(cmd: str, body: Callable[[Client], int]) -> int:
    """Run a command body with one client; map transport errors to PBS exits."""
    client = Client()
    try:
        return body(client)
    except Unreachable as e:
        return fail(cmd, f"cannot connect to server ({e})", UNREACHABLE)
    except ApiError as e:
        return fail(cmd, e.message, EXIT_OF.get(e.code, USAGE))
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
