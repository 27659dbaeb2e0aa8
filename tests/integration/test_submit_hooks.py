"""The site's submit hook ([hooks] submit) in a real daemon: it changes and
rejects submissions and alterations, a failing or hanging one rejects (or, with
on_error = "accept", lets the job in unchanged), and it cannot pass a limit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedd.cli.client import ApiError, Client
from tests.integration.conftest import ROOT, Daemon
from tests.integration.test_api import as_user, error

BIN = Path(sys.executable).parent
HOOKS = '\n[hooks]\nsubmit = "{ref}"\ntimeout_s = 1.0\non_error = "{on_error}"\n'


def hooked(tmp: Path, ref: str, on_error: str = "reject", extra: str = "") -> Daemon:
    d = Daemon(tmp, nodes=1)
    d.config.write_text(d.config.read_text() + extra + HOOKS.format(ref=ref, on_error=on_error))
    return d.start()


@pytest.fixture
def hd(tmp_path: Path) -> Iterator[Daemon]:
    d = hooked(tmp_path, "tests.integration.hookmods:submit")
    yield d
    d.stop()


def cmd(d: Daemon, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *argv], capture_output=True, text=True, timeout=60, cwd=d.tmp,
                          env={**os.environ, "SCHEDD_URL": d.url})


def test_the_hook_changes_and_rejects_submissions_and_qsub_exits_32(hd: Daemon) -> None:
    job = hd.job(hd.submit(argv=["true"], name="plain", hold=True))
    assert job["account"] == f"team-of-{job['owner']}" and job["env"]["SITE_HOOKED"] == "1"
    assert hd.job(hd.submit(argv=["true"], name="same", hold=True))["account"] == "default"  # None: unchanged
    e = error(lambda: hd.submit(argv=["true"], name="forbidden"))
    assert (e.status, e.code) == (400, "hook_rejected") and "may not submit jobs named forbidden" in e.message
    out = cmd(hd, "qsub", "-N", "forbidden", "--", "/bin/true")
    assert out.returncode == 32, out
    assert out.stderr.startswith("qsub: rejected by the site's submit hook:") and "named forbidden" in out.stderr
    # Arrays (once, the parent) and batches (every job; all or nothing).
    arr = hd.job(hd.submit(argv=["true"], name="arr", array="1-3", hold=True))
    assert arr["account"].startswith("team-of-")
    e = error(lambda: hd.client.call("POST", "/api/v1/jobs/batch", {"jobs": [
        {"argv": ["true"], "workdir": str(hd.tmp), "hold": True},
        {"argv": ["true"], "workdir": str(hd.tmp), "name": "forbidden"}]}))
    assert e.code == "hook_rejected" and e.message.startswith("jobs[1]: ")
    names = {j["name"] for j in hd.client.call("GET", "/api/v1/jobs")["jobs"]}
    assert names == {"plain", "same", "arr"}  # the batch's first job was not stored either


def test_a_failing_hanging_or_limit_passing_hook_rejects(hd: Daemon) -> None:
    e = error(lambda: hd.submit(argv=["true"], name="crash"))
    assert e.code == "hook_rejected" and "RuntimeError: the team map is unreadable" in e.message
    e = error(lambda: hd.submit(argv=["true"], name="hang"))
    assert e.code == "hook_rejected" and "did not answer within 1 s" in e.message
    e = error(lambda: hd.submit(argv=["true"], name="nonsense"))
    assert e.code == "hook_rejected" and "returned int" in e.message
    e = error(lambda: hd.submit(argv=["true"], name="bypass"))  # checked again as any request
    assert e.code == "bad_request" and "max_walltime_s" in e.message
    hd.wait_state(hd.submit(argv=["true"], name="after"), "finished")  # the daemon goes on


def test_the_hook_sees_alterations(hd: Daemon) -> None:
    jid = hd.submit(argv=["true"], name="plain", hold=True)
    e = error(lambda: hd.client.call("PATCH", f"/api/v1/jobs/{jid}", {"queue": "low"}))
    assert e.code == "hook_rejected" and "closed this week" in e.message
    out = cmd(hd, "qalter", "-q", "low", jid)
    assert out.returncode == 32 and "closed this week" in out.stderr, out
    assert hd.client.call("PATCH", f"/api/v1/jobs/{jid}", {"queue": "1xgpu"})["job"]["queue"] == "1xgpu"


def test_on_error_accept_lets_the_job_in_unchanged_but_reject_still_rejects(tmp_path: Path) -> None:
    d = hooked(tmp_path, "tests.integration.hookmods:submit", on_error="accept")
    try:
        job = d.job(d.submit(argv=["true"], name="crash", hold=True))
        assert job["account"] == "default" and "SITE_HOOKED" not in job["env"]
        assert error(lambda: d.submit(argv=["true"], name="forbidden")).code == "hook_rejected"
        assert "accepted unchanged (on_error = accept)" in d.log.read_text()
    finally:
        d.stop()


def test_the_example_site_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "examples" / "hooks"), os.environ.get("PYTHONPATH", "")]))
    queue = "\n[queues.docker]\ndefault_chunk = { ncpus = 1, mem_mb = 0, ngpus = 0 }\n"
    d = hooked(tmp_path, "site_submit:submit", extra=queue)
    try:
        ann: Client = as_user(d, "ann")
        body = {"argv": ["true"], "workdir": str(d.tmp), "hold": True}
        assert ann.call("POST", "/api/v1/jobs", body)["job"]["account"] == "vision"
        intern = as_user(d, "intern")
        e = error(lambda: intern.call("POST", "/api/v1/jobs", {**body, "walltime_s": 5 * 3600}))
        assert e.code == "hook_rejected" and "over intern's cap of 14400 s" in e.message
        assert intern.call("POST", "/api/v1/jobs", {**body, "walltime_s": 3600})["job"]["walltime_s"] == 3600
        job = ann.call("POST", "/api/v1/jobs", {**body, "queue": "docker"})["job"]
        assert job["container"] == "python:3.12-slim"
    except ApiError as e:
        raise AssertionError(f"{e.code}: {e.message}\n{d.log.read_text()}") from None
    finally:
        d.stop()
