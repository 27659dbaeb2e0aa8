"""Issue #11, "Found when tried": each finding's regression test, on the real
root daemon with agents switching to ordinary users."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import RootDaemon, User


@pytest.fixture
def root_dir(homes: Path) -> Iterator[Path]:
    """A root-owned 0755 directory next to the users' homes: visible, not writable to them."""
    d = Path(tempfile.mkdtemp(prefix="rootdir-", dir=homes))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def error_of(status: int, body: Any) -> tuple[int, str]:
    assert isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return status, body["error"]["message"]


@pytest.mark.parametrize("field", ["eligible_time", "walltime_s"])
def test_an_absurd_time_is_refused_with_a_4xx(root_daemon: RootDaemon, alice: User, field: str) -> None:
    body = {"argv": ["true"], "workdir": str(alice.home), field: 1e308}
    status, message = error_of(*root_daemon.api(alice, "POST", "/api/v1/jobs", body))
    assert 400 <= status < 500 and field in message, (status, message)
    root_daemon.assert_alive()


def test_an_output_file_that_cannot_be_opened_is_named_in_the_comment_and_events(
        root_daemon: RootDaemon, alice: User, root_dir: Path) -> None:
    target = root_dir / "logs"
    target.mkdir(mode=0o755)  # root's, 0755: alice sees it but cannot write in it
    path = target / "x.o"
    jid = root_daemon.submit_as(alice, argv=["echo", "hi"], stdout_path=str(path), name="noout")
    job = root_daemon.wait_state(jid, "finished", timeout=120)
    expected = f"cannot open output file {path}: Permission denied"
    assert job["exit_status"] == -1 and job["comment"] == expected, job
    status, events = root_daemon.api(alice, "GET", f"/api/v1/jobs/{jid}/events")
    assert status == 200, events
    assert expected in str(events), events
    shown = root_daemon.command(alice, "qstat", "-fx", jid)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown
    assert "cannot open output file" in " ".join(shown.stdout.split()), shown.stdout
    assert list(target.iterdir()) == []


def test_root_cannot_submit_and_its_output_path_is_never_opened(root_daemon: RootDaemon, root_dir: Path) -> None:
    """The finding: root's ``qsub -o ../../etc/passwd`` truncated /etc/passwd. As
    shipped, root owns no jobs (PBS's acl_roots): qsub says so and nothing runs."""
    victim = root_dir / "precious"
    victim.write_text("keep me\n")
    env = {**os.environ, "SCHEDD_URL": root_daemon.url}
    out = subprocess.run([sys.executable, "-m", "schedd.cli.qsub", "-o", str(victim), "--", "true"],
                         capture_output=True, text=True, env=env, cwd=root_dir, timeout=60)
    assert out.returncode != 0 and "may not own jobs" in out.stderr and "allow_root_jobs" in out.stderr, out
    assert "Traceback" not in out.stderr
    assert root_daemon.client.call("GET", "/api/v1/jobs")["jobs"] == []
    assert victim.read_text() == "keep me\n"
