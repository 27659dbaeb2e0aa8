"""Submit hooks for tests/integration/test_submit_hooks.py: the daemon imports
this module (it runs with the repository as its working directory)."""

from __future__ import annotations

import threading

from schedd.hooks import Reject, Submission, Submitter

_never = threading.Event()


def submit(job: Submission, who: Submitter) -> Submission | int | None:
    """Each job name asks for one behaviour."""
    if job.kind == "alter" and job.queue == "low":
        raise Reject("moving jobs to low is closed this week")
    if job.name == "forbidden":
        raise Reject(f"{who.user} ({who.role}) may not submit jobs named forbidden")
    if job.name == "crash":
        raise RuntimeError("the team map is unreadable")
    if job.name == "hang":
        _never.wait()  # a hook that never answers: the daemon's timeout must end the wait
    if job.name == "bypass":
        job.walltime_s = 10 * 365 * 86_400.0  # over the server's max_walltime_s
    if job.name == "nonsense":
        return 42
    if job.name == "same":
        return None
    job.env["SITE_HOOKED"] = "1"
    if job.kind == "submit" and not job.account:
        job.account = f"team-of-{who.user}"
    return job
