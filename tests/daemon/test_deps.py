"""The dependency rule as a table: every kind against every way a job can stand."""

from __future__ import annotations

import pytest

from schedd.daemon.deps import Verdict, verdict
from schedd.daemon.records import Dependency, JobRecord


def _job(jid: str, state: str, exit_status: int | None = None, started: bool = False) -> JobRecord:
    return JobRecord(jid, int(jid.split("[")[0]), 1, "j", "ann", "", "q", [], 60.0, 0.0, "/", "", "", state=state,
                     exit_status=exit_status, start_time=1.0 if started else None)


QUEUED = _job("1", "queued")
RUNNING = _job("1", "running", started=True)
OK = _job("1", "finished", 0, started=True)
FAILED = _job("1", "finished", 3, started=True)
NEVER_RAN = _job("1", "finished", None)  # cancelled while queued

W, Y, N = Verdict.WAIT, Verdict.OK, Verdict.NEVER

TABLE = [
    # kind          queued  running  ok  failed  never ran
    ("after",       W,      Y,       Y,  Y,      N),
    ("afterok",     W,      W,       Y,  N,      N),
    ("afternotok",  W,      W,       N,  Y,      Y),
    ("afterany",    W,      W,       Y,  Y,      Y),
]
STANDS = [QUEUED, RUNNING, OK, FAILED, NEVER_RAN]


@pytest.mark.parametrize(("kind", "col"), [(row[0], i) for row in TABLE for i in range(len(STANDS))])
def test_one_dependency(kind: str, col: int) -> None:
    expected = next(row for row in TABLE if row[0] == kind)[1 + col]
    got, comment = verdict([Dependency(kind, ["1"])], {"1": STANDS[col]})  # type: ignore[arg-type]
    assert got is expected, (kind, STANDS[col].state, comment)
    assert bool(comment) == (got is not Verdict.OK)


def test_an_unknown_or_purged_job_can_never_satisfy() -> None:
    got, comment = verdict([Dependency("afterany", ["9"])], {})
    assert got is Verdict.NEVER and "unknown job" in comment


def test_never_wins_over_wait_and_names_the_job() -> None:
    jobs = {"1": QUEUED, "2": _job("2", "finished", 1, started=True)}
    got, comment = verdict([Dependency("afterok", ["1", "2"])], jobs)
    assert got is Verdict.NEVER
    assert comment == "dependency afterok:2 can never be satisfied (2 exit status 1)"


def test_all_must_hold_and_the_first_wait_is_named() -> None:
    jobs = {"1": OK, "2": QUEUED, "3": QUEUED}
    assert verdict([Dependency("afterok", ["1"]), Dependency("afterany", ["2", "3"])], jobs) == \
        (Verdict.WAIT, "waiting for afterany:2")
    assert verdict([Dependency("afterok", ["1"])], jobs) == (Verdict.OK, "")
