"""The one exception tree of schedd, and its one mapping to HTTP.

::

    ScheddError                    anything schedd raises on purpose
    ├── ConfigError                a TOML file or table is wrong; names the TOML path
    ├── StoreError                 the database refused a write or is unusable (schedd.store)
    └── RequestError               a user's request cannot be carried out (HTTP 4xx)
        ├── InputError             malformed input (400 bad_request)
        ├── UnknownQueue           no such queue (400 unknown_queue)
        ├── NeverFits              larger than any node could give (400 never_fits)
        ├── HookRejected           the site's submit hook refused it (400 hook_rejected)
        ├── UnknownJob             no such job (404 unknown_job)
        ├── PermissionDenied       not yours, or not allowed (403 permission_denied)
        ├── WrongState             not in a state that allows it (409 wrong_state)
        │   └── JobFinished        the job has finished (409 job_finished)
        ├── Unauthenticated        no identity (401 unauthenticated)
        └── Unavailable            cannot be made durable now, e.g. the state store is full (503)

"Cannot run yet" is never an exception: it is a pending :class:`schedd.core.model.Reason`.
The ``code`` of each class is what the REST API puts in ``{"error": {"code"}}``
and what the PBS commands map to their exit codes.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "HookRejected",
    "InputError",
    "JobFinished",
    "NeverFits",
    "PermissionDenied",
    "RequestError",
    "ScheddError",
    "Unauthenticated",
    "UnknownJob",
    "Unavailable",
    "UnknownQueue",
    "WrongState",
]


class ScheddError(Exception):
    """Base of every error schedd raises on purpose."""


class ConfigError(ScheddError):
    """A configuration value is wrong. ``path`` is the dotted TOML path, e.g. ``backfill.mode``."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class RequestError(ScheddError):
    """A request that cannot be carried out; ``status``/``code`` are its HTTP answer."""

    status = 400
    code = "bad_request"


class InputError(RequestError):
    """A user's input is malformed; the message says exactly what and where."""


class UnknownQueue(RequestError):
    code = "unknown_queue"


class NeverFits(RequestError):
    code = "never_fits"


class HookRejected(RequestError):
    """The site's submit hook (:mod:`schedd.hooks`) rejected the job, failed or ran too long."""

    code = "hook_rejected"


class UnknownJob(RequestError):
    status = 404
    code = "unknown_job"


class PermissionDenied(RequestError):
    status = 403
    code = "permission_denied"


class WrongState(RequestError):
    status = 409
    code = "wrong_state"


class JobFinished(WrongState):
    code = "job_finished"


class Unauthenticated(RequestError):
    status = 401
    code = "unauthenticated"


class Unavailable(RequestError):
    """The server cannot take the request now, through no fault of the request:
    what it would change cannot be made durable (the state store is full). The
    message says what was kept; retrying later succeeds once the cause is gone."""

    status = 503
    code = "unavailable"
