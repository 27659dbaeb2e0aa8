"""schedd from Python: a typed client for the REST API the commands use.

Standard library only (``pip install schedd`` is enough)::

    from schedd.client import Client

    client = Client()                      # SCHEDD_URL, else the local socket, else http://127.0.0.1:8330
    job = client.submit(["python", "train.py"], queue="1xgpu", walltime="01:00:00")
    job.wait()                             # blocks (long poll); returns the job
    print(job.state, job.exit_status, job.stdout_path)
    job.cancel()                           # qdel
    job.metrics()                          # what the job reported, where the daemon serves it

The server is found as the commands find it (``SCHEDD_URL``, ``SCHEDD_TOKEN``
over TCP). One :class:`Client` holds one kept-alive connection: use one per
thread. Errors are :class:`ApiError` (the server said no: ``status``, ``code``,
``message``) and :class:`Unreachable`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from schedd.cli.client import ApiError, Unreachable
from schedd.cli.client import Client as _Raw

__all__ = ["ApiError", "Client", "Job", "Unreachable", "parse_walltime"]

#: States in which a job will not change any more.
TERMINAL = frozenset({"finished"})


def parse_walltime(value: str | float | None) -> float | None:
    """``"HH:MM:SS"``, ``"MM:SS"``, or seconds, as seconds.

    >>> parse_walltime("00:30:00"), parse_walltime(90), parse_walltime(None)
    (1800.0, 90.0, None)
    """
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    seconds = 0.0
    for part in value.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


class Job:
    """One job of the server. Attributes are read from the last answer; ``state``
    asks the server again (so ``while job.state != "finished"`` works)."""

    def __init__(self, client: Client, info: Mapping[str, Any]) -> None:
        self.client = client
        self.info: dict[str, Any] = dict(info)
        self.id: str = str(info["id"])

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.info.get('state')}>"

    def refresh(self) -> Job:
        self.info = dict(self.client.call("GET", f"/api/v1/jobs/{self.id}")["job"])
        return self

    @property
    def state(self) -> str:
        """queued, held, waiting, running, exiting or finished (asked now)."""
        return str(self.refresh().info["state"])

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def exit_status(self) -> int | None:
        return self.info.get("exit_status")

    @property
    def finish_reason(self) -> str | None:
        return self.info.get("finish_reason")

    @property
    def stdout_path(self) -> str:
        return str(self.info.get("stdout_path", ""))

    @property
    def stderr_path(self) -> str:
        return str(self.info.get("stderr_path", ""))

    def wait(self, timeout: float | None = None) -> Job:
        """Until the job finished (long polls of ``/wait``); TimeoutError after ``timeout`` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 30.0 if end is None else min(30.0, end - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"job {self.id} did not finish within {timeout:g} s")
            answer = self.client.call("GET", f"/api/v1/jobs/{self.id}/wait?timeout_s={max(left, 0.01):.2f}")
            self.info = dict(answer["job"])
            if answer["finished"]:
                return self

    def cancel(self) -> None:
        """qdel: a queued job is removed at once, a running one gets SIGTERM, then SIGKILL."""
        self.client.call("DELETE", f"/api/v1/jobs/{self.id}")

    def metrics(self) -> dict[str, Any]:
        """The job's reported metrics (``GET /api/v1/jobs/ID/metrics``); {} where the server has none."""
        try:
            return dict(self.client.call("GET", f"/api/v1/jobs/{self.id}/metrics"))
        except ApiError as e:
            if e.status == 404 and e.code != "unknown_job":
                return {}  # a server without the metrics API
            raise

    def subjob(self, index: int) -> Job:
        """Subjob ``index`` of an array job (``12[]`` -> ``12[3]``)."""
        return Job(self.client, {"id": f"{self.id.split('[')[0]}[{index}]"})


class Client:
    """The REST API, typed (see the module docstring)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self._raw = _Raw(url, token, timeout)
        self.url = self._raw.url

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Any API call: the decoded JSON answer."""
        return self._raw.call(method, path, body)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, argv: Sequence[str] | None = None, *, script: str | None = None, queue: str = "",
               walltime: str | float | None = None, name: str = "", array: str = "", workdir: str = "",
               env: Mapping[str, str] | None = None, **fields: Any) -> Job:
        """Submit one job (a command or a script); ``fields`` are further keys of the
        API's submission (``chunks``, ``account``, ``env_spec``, ``depend``…)."""
        body: dict[str, Any] = {k: v for k, v in {
            "argv": list(argv) if argv is not None else None, "script": script, "queue": queue, "name": name,
            "array": array, "workdir": workdir, "env": dict(env or {}), "walltime_s": parse_walltime(walltime),
        }.items() if v not in (None, "", {})}
        body.update(fields)
        return Job(self, self.call("POST", "/api/v1/jobs", body)["job"])

    def job(self, job_id: str) -> Job:
        return Job(self, {"id": job_id}).refresh()

    def jobs(self) -> list[Job]:
        """The caller's visible jobs that have not finished (as ``qstat``)."""
        return [Job(self, j) for j in self.call("GET", "/api/v1/jobs")["jobs"]]
