"""qrls: release holds, as PBS's qrls (``-h u`` by default).

With its last hold gone a job goes to Q, or to W while its ``-a`` time or a
dependency is still ahead. Failures are reported per operand, PBS style.
"""

from __future__ import annotations

import sys

from schedd.cli import command
from schedd.cli.client import ApiError
from schedd.cli.common import for_each_job, job_path
from schedd.cli.qhold import parse

TYPE_CHECKING = False  # mypy reads this as True
if TYPE_CHECKING:
    from schedd.cli.client import Client

__all__ = ["main"]

USAGE = "usage: qrls [-h u|o|s] job_identifier..."

EPILOG = """\
examples:
  qrls 17                     release the user hold of 17 (qsub -h, qhold)
  qrls -h o 17                release an operator hold (operators only)
  qrls '17[]'                 every held subjob of array 17

exit codes: 0 ok, 1 malformed id, 2 usage, 35 finished, 153 unknown job,
  159 not allowed, 168 wrong state, 186 cannot reach the server
"""


def _release(client: Client, job: str, body: dict[str, str]) -> object:
    """PBS refuses to release a job that is running or finished; the server skips
    such jobs silently, so ask first (arrays excepted: their held subjobs count;
    a subjob range too: the server answers for each of its subjobs)."""
    if job.endswith("]") and "-" in job:
        return client.call("POST", job_path(job, "/release"), body)
    rec = client.call("GET", job_path(job))["job"]
    if rec.get("array") is None:
        if rec["state"] in ("running", "exiting"):
            raise ApiError(409, "wrong_state", f"Request invalid for state of job {job}")
        if rec["state"] == "finished":
            raise ApiError(409, "job_finished", f"Job has finished {job}")
    return client.call("POST", job_path(job, "/release"), body)


@command
def main(argv: list[str]) -> int:
    parsed = parse("qrls", USAGE, "Release holds: a job without holds goes back to Q (or W).", EPILOG, argv)
    if isinstance(parsed, int):
        return parsed
    body = {"types": parsed[0]}
    return for_each_job("qrls", parsed[1], lambda client, job: _release(client, job, body))


if __name__ == "__main__":
    sys.exit(main())
