"""An example site submit hook: ``[hooks] submit = "site_submit:submit"`` in schedd.toml.

Three rules a site typically wants, each a few lines:

* a job with no account (-A) is charged to the submitter's team (a user->team
  map; here a dict, at a site perhaps a file read once at import);
* walltime caps per user (an intern's jobs at most 4 hours): over the cap is
  rejected with the cap in the message, rather than silently cut, so that
  nobody's checkpointing plan is broken behind their back;
* every job of the ``docker`` queue runs in a container: one that names no
  image (-l container=) gets the site's default image; operators are exempt.

Put the file's directory on the daemon's PYTHONPATH. Hooks run in a worker
thread with a timeout (see :mod:`schedd.hooks`): keep them quick.
"""

from __future__ import annotations

from schedd.hooks import Reject, Submission, Submitter

TEAMS = {"ann": "vision", "bob": "nlp"}
WALLTIME_CAP_S = {"intern": 4 * 3600.0}
CONTAINER_QUEUES = {"docker": "python:3.12-slim"}


def submit(job: Submission, who: Submitter) -> Submission:
    """Apply the site's rules to a submission or alteration (see the module docstring)."""
    if not job.account and job.kind == "submit":
        job.account = TEAMS.get(who.user, "")
    cap = WALLTIME_CAP_S.get(who.user)
    if cap is not None and job.walltime_s > cap:
        raise Reject(f"walltime {job.walltime_s:g} s is over {who.user}'s cap of {cap:g} s")
    image = CONTAINER_QUEUES.get(job.queue)
    if image is not None and not job.container and job.kind == "submit" and who.role == "user":
        job.container = image
    return job
