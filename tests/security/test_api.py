"""Hostile requests to the real daemon, made by ordinary users (issue #17, items 5-9, 11).

One daemon for the module. Each case states the safe outcome: a 4xx with the
JSON error shape and a message naming what was wrong, the daemon alive and
answering afterwards, and nothing stored by the request.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, RootDaemon, User, _kill_leftovers

#: Limits of this module's daemon, small so that the cases run fast (top-level keys, then tables).
LIMITS = "max_array_size = 1000\n"
QUEUES = """
[queues.capped]
default_chunk = { ncpus = 1, mem_mb = 0, ngpus = 0 }
max_walltime_s = 259200

[queues.alices]
default_chunk = { ncpus = 1, mem_mb = 0, ngpus = 0 }
allowed_users = ["sdalice"]
"""
TEN_DAYS = 10 * 86400.0


@pytest.fixture(scope="module")
def daemon(homes: Path, users: dict[str, User]) -> Iterator[RootDaemon]:
    tmp = Path(tempfile.mkdtemp(prefix="d-", dir=homes))
    tmp.chmod(0o755)
    d = RootDaemon(tmp)
    d.config.write_text(LIMITS + d.config.read_text() + QUEUES)
    d.start()
    yield d
    d.stop()
    _kill_leftovers(d.state)
    shutil.rmtree(tmp, ignore_errors=True)


def stored(d: RootDaemon) -> int:
    """Every job the daemon knows, finished ones included."""
    return len(d.client.call("GET", "/api/v1/jobs?finished=1")["jobs"])


def assert_refused(d: RootDaemon, status: int, body: Any, expected: int, fragment: str) -> None:
    assert status == expected, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert fragment in body["error"]["message"], body
    d.assert_alive()


def job(**extra: Any) -> dict[str, Any]:
    return {"argv": ["true"], "hold": True, **extra}


# ---------------------------------------------------------------- items 5 and 9: the submit body

SUBMIT_CASES = [
    ("count of 3e6 nodes", job(chunks=[{"count": 3_000_000}]), 400, "$.chunks[0].count"),
    ("count of 10^20 nodes", job(chunks=[{"count": 10**20}]), 400, "$.chunks[0].count"),
    ("more nodes than the pool", job(chunks=[{"count": 3}]), 400, "asks for 3 nodes; the pool has 2"),
    ("nodes summed over chunks", job(chunks=[{"count": 6000}, {"count": 6000}]), 400, "12000 nodes in all"),
    ("ncpus of 10^9", job(chunks=[{"ncpus": 10**9}]), 400, "$.chunks[0].ncpus"),
    ("ngpus of 10^6", job(chunks=[{"ngpus": 10**6}]), 400, "$.chunks[0].ngpus"),
    ("mem of 2^62 MB", job(chunks=[{"mem_mb": 2**62}]), 400, "$.chunks[0].mem_mb"),
    ("negative ncpus", job(chunks=[{"ncpus": -1}]), 400, "$.chunks[0].ncpus"),
    ("300 select terms", job(chunks=[{"ncpus": 1}] * 300), 400, "$.chunks"),
    ("array over max_array_size", job(array="1-1001"), 400, "over the server's max_array_size of 1000"),
    ("array of 10^8 subjobs", job(array="0-99999999"), 400, "max_array_size"),
    ("array index of 5000 digits", job(array="1-" + "9" * 5000), 400, "array"),
    ("walltime overflowing to inf", '{"argv": ["true"], "walltime_s": 1e400}', 400, "$.walltime_s"),
    ("walltime of 0", job(walltime_s=0), 400, "$.walltime_s"),
    ("walltime over the server's max", job(walltime_s=2 * 365 * 86400.0), 400, "max_walltime_s"),
    ("walltime over the queue's max", job(queue="capped", walltime_s=TEN_DAYS), 400, "over queue 'capped'"),
    ("unknown queue", job(queue="nosuch"), 400, "unknown queue 'nosuch'"),
    ("eligible time before the epoch", job(eligible_time=-1), 400, "$.eligible_time"),
    ("eligible time in year 10^10", job(eligible_time=1e300), 400, "$.eligible_time"),
    ("priority out of PBS's range", job(priority=1024), 400, "$.priority"),
    ("negative nice from a user", job(nice=-100), 403, "only operators may give a negative nice"),
    ("nice beyond Slurm's range", job(nice=2**40), 400, "$.nice"),
    ("warn_before_s of 1e300", job(warn_before_s=1e300), 400, "$.warn_before_s"),
    ("name of 300 characters", job(name="n" * 300), 400, "$.name"),
    ("name with NUL", job(name="a\u0000b"), 400, "$.name"),
    ("name with a newline", job(name="a\nb"), 400, "$.name"),
    ("name with a slash", job(name="../x"), 400, "$.name"),
    ("argv with NUL", job(argv=["sh", "-c", "true\u0000"]), 400, "$.argv[2]"),
    ("argv of 5000 items", job(argv=["x"] * 5000), 400, "$.argv"),
    ("argv and env over what exec takes", job(argv=["x" * 100_000] * 30), 400, "argv/env"),
    ("account with NUL", job(account="acct\u0000"), 400, "$.account"),
    ("env name with '='", job(env={"A=B": "1"}), 400, "no '='"),
    ("empty env name", job(env={"": "1"}), 400, "$.env"),
    ("env name with NUL", job(env={"A\u0000": "1"}), 400, "$.env"),
    ("env value with NUL", job(env={"A": "1\u0000"}), 400, "$.env"),
    ("script with NUL", {"script": "echo a\u0000b\n", "hold": True}, 400, "$.script"),
    ("relative stdout path", job(stdout_path="out.txt"), 400, "stdout_path"),
    ("stderr path with NUL", job(stderr_path="/tmp/e\u0000"), 400, "$.stderr_path"),
    ("workdir with NUL", job(workdir="/tmp\u0000"), 400, "$.workdir"),
    ("path of 5000 characters", job(workdir="/" + "d" * 5000), 400, "$.workdir"),
    ("relative shell", job(shell="bash"), 400, "shell"),
    ("dependency on a malformed id", job(depend=[{"kind": "afterok", "ids": ["x"]}]), 400, "$.depend[0].ids[0]"),
]


@pytest.mark.parametrize(("label", "body", "status", "fragment"), SUBMIT_CASES, ids=[c[0] for c in SUBMIT_CASES])
def test_a_hostile_submission_is_refused_and_nothing_is_stored(daemon: RootDaemon, alice: User, label: str,
                                                                body: Any, status: int, fragment: str) -> None:
    before = stored(daemon)
    if isinstance(body, dict):
        body.setdefault("workdir", str(alice.home))
    got = daemon.api(alice, "POST", "/api/v1/jobs", body)
    assert_refused(daemon, *got, status, fragment)
    assert stored(daemon) == before, label


BATCH_CASES = [
    ("arrays together over max_array_size", [job(array="1-600"), job(array="1-600")], "max_array_size of 1000"),
    ("one bad job refuses the batch", [job(), job(env={"A=B": "1"})], "$.jobs[1].env"),
]


@pytest.mark.parametrize(("label", "jobs", "fragment"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_a_hostile_batch_is_refused_whole(daemon: RootDaemon, alice: User, label: str, jobs: list[Any],
                                          fragment: str) -> None:
    before = stored(daemon)
    for j in jobs:
        j["workdir"] = str(alice.home)
    assert_refused(daemon, *daemon.api(alice, "POST", "/api/v1/jobs/batch", {"jobs": jobs}), 400, fragment)
    assert stored(daemon) == before, label


def test_the_select_that_got_schedd_killed(daemon: RootDaemon, alice: User) -> None:
    before = stored(daemon)
    out = daemon.command(alice, "qsub", "-l", "select=99999999999999999999:ncpus=1", "--", "true", timeout=30)
    assert out.returncode != 0 and out.stdout == "", out
    daemon.assert_alive()
    assert stored(daemon) == before


# ---------------------------------------------------------------- item 6: alterations pass the same admission

ALTER_CASES = [
    ("into a queue whose max walltime it exceeds", "sdalice", {"queue": "capped"}, 400, "over queue 'capped'"),
    ("by an admin, too", "root", {"queue": "capped"}, 400, "over queue 'capped'"),
    ("into a queue the owner may not use", "sdbob", {"queue": "alices"}, 403, "may not submit to queue 'alices'"),
    ("walltime overflowing to inf", "sdalice", '{"walltime_s": 1e400}', 400, "$.walltime_s"),
    ("walltime raised over the server's max", "root", {"walltime_s": 2 * 365 * 86400.0}, 400, "max_walltime_s"),
    ("an empty name", "sdalice", {"name": ""}, 400, "$.name"),
    ("a name with NUL", "sdalice", {"name": "x\u0000"}, 400, "$.name"),
    ("priority out of range", "sdalice", {"priority": -5000}, 400, "$.priority"),
    ("two changes, one refused", "sdalice", {"priority": 7, "queue": "capped"}, 400, "over queue 'capped'"),
]


@pytest.mark.parametrize(("label", "owner", "body", "status", "fragment"), ALTER_CASES, ids=[c[0] for c in ALTER_CASES])
def test_an_alteration_passes_the_checks_of_a_submission(daemon: RootDaemon, users: dict[str, User], label: str,
                                                          owner: str, body: Any, status: int, fragment: str) -> None:
    submitter = users.get(owner, users["sdalice"])
    jid = daemon.submit_as(submitter, **job(walltime_s=TEN_DAYS))
    before = daemon.job(jid)
    if owner == "root":
        with pytest.raises(Exception) as e:
            daemon.client.call("PATCH", f"/api/v1/jobs/{jid}", body)
        err = e.value
        assert (getattr(err, "status", None), fragment in str(err)) == (status, True), err
        daemon.assert_alive()
    else:
        assert_refused(daemon, *daemon.api(submitter, "PATCH", f"/api/v1/jobs/{jid}", body), status, fragment)
    after = daemon.job(jid)
    assert {k: after[k] for k in ("queue", "walltime_s", "priority", "name")} == \
        {k: before[k] for k in ("queue", "walltime_s", "priority", "name")}, label


def test_an_allowed_move_still_works(daemon: RootDaemon, alice: User) -> None:
    jid = daemon.submit_as(alice, **job(walltime_s=3600.0))
    status, body = daemon.api(alice, "PATCH", f"/api/v1/jobs/{jid}", {"queue": "capped", "name": "moved"})
    assert status == 200 and (body["job"]["queue"], body["job"]["name"]) == ("capped", "moved"), body


ACTION_CASES = [
    ("a signal of 5000 digits", "/signal", {"signal": "9" * 5000}, "$.signal"),
    ("hold types of 5000 letters", "/hold", {"types": "u" * 5000}, "$.types"),
    ("a range in a one-job request", "/wait", None, "a range names several jobs"),
]


@pytest.mark.parametrize(("label", "suffix", "body", "fragment"), ACTION_CASES, ids=[c[0] for c in ACTION_CASES])
def test_a_hostile_action_is_refused(daemon: RootDaemon, alice: User, label: str, suffix: str, body: Any,
                                     fragment: str) -> None:
    jid = daemon.submit_as(alice, **job())
    target = f"{jid}%5B1-2%5D" if "range" in label else jid
    got = daemon.api(alice, "POST" if body is not None else "GET", f"/api/v1/jobs/{target}{suffix}", body)
    assert_refused(daemon, *got, 400, fragment)
    assert daemon.job(jid)["state"] == "held"


# ---------------------------------------------------------------- item 7: nothing is read before authentication

def tcp(d: RootDaemon, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    host, _, port = d.http_url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def token(d: RootDaemon, user: str) -> str:
    out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", user, "--config", str(d.config)],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    return out.stdout.strip()


ENCODING_CASES = [
    ("gzip garbage, no token", "gzip", None, 401, "a token is required"),
    ("gzip garbage, a forged token", "gzip", "forged", 401, "not valid"),
    ("gzip garbage, a valid token", "gzip", "sdalice", 400, "Content-Encoding 'gzip'"),
    ("brotli, a valid token", "br", "sdalice", 400, "Content-Encoding 'br'"),
]


@pytest.mark.parametrize(("label", "encoding", "who", "status", "fragment"), ENCODING_CASES,
                         ids=[c[0] for c in ENCODING_CASES])
def test_a_body_is_not_touched_before_authentication(daemon: RootDaemon, label: str, encoding: str, who: str | None,
                                                     status: int, fragment: str) -> None:
    before = stored(daemon)
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    if who is not None:
        headers["Authorization"] = f"Bearer {token(daemon, who) if who != 'forged' else 'forged'}"
    assert_refused(daemon, *tcp(daemon, "POST", "/api/v1/jobs", b"abcd", headers), status, fragment)
    assert stored(daemon) == before
    assert "Traceback" not in daemon.log.read_text(), label


# ---------------------------------------------------------------- item 8: other users' secrets

def test_a_jobs_secrets_are_its_owners(daemon: RootDaemon, alice: User, bob: User) -> None:
    jid = daemon.submit_as(alice, script="#!/bin/sh\necho script-s3cret\n", env={"API_KEY": "env-s3cret"}, hold=True)
    status, own = daemon.api(alice, "GET", f"/api/v1/jobs/{jid}")
    assert status == 200 and own["job"]["script"].endswith("script-s3cret\n")
    assert own["job"]["env"]["API_KEY"] == "env-s3cret"
    for path in (f"/api/v1/jobs/{jid}", "/api/v1/jobs", "/api/v1/jobs?fields=id,script,env,argv,env_spec",
                 f"/api/v1/jobs/{jid}/wait?timeout_s=0"):
        status, seen = daemon.api(bob, "GET", path)
        assert status == 200 and "s3cret" not in json.dumps(seen), (path, seen)
    status, seen = daemon.api(bob, "GET", f"/api/v1/jobs/{jid}")
    assert (seen["job"]["owner"], seen["job"]["script"], seen["job"]["env"]) == ("sdalice", None, {})
    mine = daemon.command(alice, "qstat", "-f", jid)
    theirs = daemon.command(bob, "qstat", "-f", jid)
    assert mine.returncode == theirs.returncode == 0, (mine, theirs)
    assert "env-s3cret" in mine.stdout and "s3cret" not in theirs.stdout, theirs.stdout
    assert "Job_Owner = sdalice" in theirs.stdout


# ---------------------------------------------------------------- item 11: query parameters, paths, ranges

QUERY_CASES = [
    ("wait timeout NaN", "/wait?timeout_s=nan", "timeout_s"),
    ("wait timeout inf", "/wait?timeout_s=inf", "timeout_s"),
    ("wait timeout negative", "/wait?timeout_s=-1", "timeout_s"),
    ("wait timeout of 1e12 s", "/wait?timeout_s=1e12", "timeout_s"),
    ("list limit of 5000 digits", "?limit=" + "9" * 5000, "limit"),
    ("list limit negative", "?limit=-3", "limit"),
]


@pytest.mark.parametrize(("label", "suffix", "fragment"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_query_parameters_are_finite_and_bounded(daemon: RootDaemon, alice: User, label: str, suffix: str,
                                                  fragment: str) -> None:
    base = f"/api/v1/jobs/{daemon.submit_as(alice, **job())}" if suffix.startswith("/wait") else "/api/v1/jobs"
    assert_refused(daemon, *daemon.api(alice, "GET", base + suffix), 400, fragment)


@pytest.mark.parametrize("option", ["-o", "-e"])
def test_qsub_refuses_an_empty_output_path(daemon: RootDaemon, alice: User, option: str) -> None:
    before = stored(daemon)
    out = daemon.command(alice, "qsub", option, "", "--", "true")
    assert out.returncode == 2 and out.stderr.startswith(f"qsub: illegal {option} value\n"), out
    assert stored(daemon) == before


RANGE_CASES = [
    ("qdel of a huge range of no job", ["qdel", "999999[1-200000]"], 153, "qdel: Unknown Job Id 999999[1-200000]\n"),
    ("qstat -x of a huge range of no job", ["qstat", "-x", "1[1-3000000]"], 153,
     "qstat: Unknown Job Id 1[1-3000000].testsrv\n"),
    ("qhold of a huge range of no job", ["qhold", "999999[1-200000]"], 153, "qhold: Unknown Job Id 999999[1-200000]\n"),
]


@pytest.mark.parametrize(("label", "argv", "code", "stderr"), RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_a_range_is_one_request(daemon: RootDaemon, alice: User, label: str, argv: list[str], code: int,
                                stderr: str) -> None:
    out = daemon.command(alice, *argv, timeout=20)  # one request: well within; one per index took minutes
    assert (out.returncode, out.stderr) == (code, stderr), out
    daemon.assert_alive()


def test_a_range_acts_on_the_subjobs_that_exist(daemon: RootDaemon, alice: User, bob: User) -> None:
    parent = daemon.submit_as(alice, **job(array="1-5"))
    n = parent.removesuffix("[]")
    denied = daemon.command(bob, "qdel", f"{n}[2-3]")
    assert (denied.returncode, denied.stderr) == (159, f"qdel: Unauthorized Request: job {n}[2-3] belongs to sdalice\n")
    out = daemon.command(alice, "qdel", f"{n}[2-3]", timeout=20)
    assert (out.returncode, out.stderr) == (0, ""), out
    again = daemon.command(alice, "qdel", f"{n}[1-3000000]", timeout=20)
    assert again.returncode == 35, again
    assert again.stderr == f"qdel: Job has finished {n}[2]\nqdel: Job has finished {n}[3]\n"
    assert [daemon.job(f"{n}[{i}]")["state"] for i in range(1, 6)] == ["finished"] * 5
    shown = daemon.command(alice, "qstat", "-x", "-t", f"{n}[2-3000000]", timeout=20)
    assert shown.returncode == 0 and [line.split()[0] for line in shown.stdout.splitlines()[2:]] == \
        [f"{n}[{i}].testsrv" for i in range(2, 6)], shown
