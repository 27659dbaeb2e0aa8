"""Row builders for the store tests: ``job(7, state="finished", end=90.0)``."""

from __future__ import annotations

from schedd.store import EventRow, JobRow, TokenRow

__all__ = ["event", "job", "token"]


def job(
    n: int,
    *,
    state: str = "queued",
    owner: str = "ann",
    account: str = "ml",
    queue: str = "gpu1",
    submit: float | None = None,
    end: float | None = None,
    data: bytes | None = None,
) -> JobRow:
    """Job ``str(n)`` with order ``n``, submitted at ``n`` seconds unless told otherwise."""
    return JobRow(
        id=str(n),
        order=n,
        state=state,
        owner=owner,
        account=account,
        queue=queue,
        submit_time=float(n) if submit is None else submit,
        end_time=end,
        data=data if data is not None else b'{"id":"%d"}' % n,
    )


def event(job_id: str | int, time: float, kind: str = "submit", data: bytes = b"{}") -> EventRow:
    return EventRow(str(job_id), time, kind, data)


def token(hash: str, user: str = "ann", role: str = "user", created: float = 0.0) -> TokenRow:
    return TokenRow(hash, user, role, created)
