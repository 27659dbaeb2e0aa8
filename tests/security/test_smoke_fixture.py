"""The fixtures themselves: a job submitted as an ordinary user runs as that user."""

from __future__ import annotations

from tests.security.conftest import RootDaemon, User


def test_job_runs_as_its_owner(root_daemon: RootDaemon, alice: User) -> None:
    jid = root_daemon.submit_as(alice, argv=["sh", "-c", "id -u > whoami"], name="who")
    job = root_daemon.wait_state(jid, "finished")
    assert job["exit_status"] == 0, job
    assert (alice.home / "whoami").read_text().strip() == str(alice.uid)
    assert (alice.home / "whoami").stat().st_uid == alice.uid
