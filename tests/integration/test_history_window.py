"""A real daemon with a window of seconds (``history_days`` = 4 s): a finished
job leaves ``qstat -x``, the API and the database once its window is over,
and the daemon says so in its log."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Daemon, _kill_leftovers, wait_for
from schedd.cli.client import ApiError

WINDOW_S = 4.0


@pytest.fixture
def short_history(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, nodes=1, gpus=0)
    text = d.config.read_text()
    d.config.write_text(text.replace("allow_root_jobs = true", f"allow_root_jobs = true\nhistory_days = {WINDOW_S / 86_400!r}", 1))
    d.start()
    yield d
    d.stop()
    _kill_leftovers(d.state)


def _qstat_x(d: Daemon) -> str:
    env = dict(os.environ, SCHEDD_URL=d.url)
    out = subprocess.run([sys.executable, "-m", "schedd.cli.qstat", "-x"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60, check=True)
    return out.stdout


def _rows(db: Path, job_id: str) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        jobs = conn.execute("SELECT count(*) FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
    finally:
        conn.close()
    return int(jobs), int(events)


def _gone(d: Daemon, jid: str) -> bool:
    try:
        d.job(jid)
    except ApiError as e:
        return e.status == 404
    return False


def test_a_job_older_than_the_window_leaves_qstat_x_and_the_database(short_history: Daemon) -> None:
    d = short_history
    jid = d.submit(argv=["true"], stdout_path="/dev/null", stderr_path="/dev/null")
    done = d.client.call("GET", f"/api/v1/jobs/{jid}/wait?timeout_s=60")
    assert done["finished"], done
    db = d.state / "schedd.db"
    wait_for(f"job {jid}'s history gone from the API", lambda: _gone(d, jid), timeout=60 + WINDOW_S)
    listed = d.client.call("GET", "/api/v1/jobs?finished=1")["jobs"]
    assert jid not in [j["id"] for j in listed]
    assert f"{jid}.testsrv" not in _qstat_x(d)
    assert _rows(db, jid) == (0, 0)
    assert "finished jobs older than" in d.log.read_text()
