"""qacct against a real daemon: per-job history and the per-user summary with fair-share.

ann and bob (tokens over TCP) each run a short job to completion; ann's holds
two GPUs, bob's one. A third job, still queued (held), shows only with -a.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schedd.cli.client import Client
from tests.cli.pbs_display import ok, run, token
from tests.integration.conftest import Daemon, _kill_leftovers

HEADER = ("JobID             User     Account  Queue    Submit              Start               End                "
          "       Wait    Elapsed State         Exit NCPU NGPU ReqMem    ReqTime    CPUTime  MaxRSS     GPUh GPU%")


class History:
    def __init__(self, daemon: Daemon, ids: dict[str, str]) -> None:
        self.daemon, self.ids, self.url = daemon, ids, daemon.url


@pytest.fixture(scope="module")
def hist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    tmp = tmp_path_factory.mktemp("qacct")
    d = Daemon(tmp, nodes=1, gpus=4).start()
    try:
        ann = Client(d.http_url, token=token(d, "ann"))
        bob = Client(d.http_url, token=token(d, "bob"))
        body: dict[str, Any] = {"workdir": str(tmp), "walltime_s": 600}
        ids = {
            "ann": ann.call("POST", "/api/v1/jobs", dict(body, argv=["sleep", "1"], name="ann-train", account="vision",
                                                         chunks=[{"ncpus": 2, "ngpus": 2, "mem_mb": 2048}]))["job"]["id"],
            "bob": bob.call("POST", "/api/v1/jobs", dict(body, argv=["true"], name="bob-eval",
                                                         chunks=[{"ncpus": 1, "ngpus": 1}]))["job"]["id"],
            "held": bob.call("POST", "/api/v1/jobs", dict(body, argv=["true"], hold=True))["job"]["id"],
        }
        for user in ("ann", "bob"):
            d.wait_state(ids[user], "finished")
        ann.close()
        bob.close()
        yield History(d, ids)
    finally:
        d.stop()
        _kill_leftovers(d.state)


def _rows(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    names = lines[0].split("|")
    return [dict(zip(names, line.split("|"))) for line in lines[1:]]


def test_per_job_history(hist: History) -> None:
    text = ok(hist.url, "qacct")
    lines = text.splitlines()
    assert lines[0] == HEADER and set(lines[1]) == {"-", " "} and len(lines) == 4
    rows = {r["User"]: r for r in _rows(ok(hist.url, "qacct", "-p"))}
    assert set(rows) == {"ann", "bob"}
    a = rows["ann"]
    assert (a["JobID"], a["Account"], a["Queue"], a["State"], a["Exit"]) == (f"{hist.ids['ann']}.testsrv", "vision",
                                                                             "default", "completed", "0")
    assert (a["NCPU"], a["NGPU"], a["ReqMem"], a["ReqTime"]) == ("2", "2", "2gb", "00:10:00")
    for column in ("Submit", "Start", "End"):
        time.strptime(a[column], "%Y-%m-%dT%H:%M:%S")
    assert a["Elapsed"] >= "00:00:01" and rows["bob"]["NGPU"] == "1"
    job = hist.daemon.job(hist.ids["ann"])
    record = json.loads(ok(hist.url, "qacct", "-F", "json", "-u", "ann"))["jobs"]
    assert len(record) == 1 and record[0]["gpu_hours"] == pytest.approx(
        max(job["used"]["gpu_s"], 2 * (job["end_time"] - job["start_time"])) / 3600, rel=0.5)
    assert record[0]["elapsed_s"] == pytest.approx(job["end_time"] - job["start_time"])


def test_filters(hist: History) -> None:
    assert [r["User"] for r in _rows(ok(hist.url, "qacct", "-p", "-u", "bob"))] == ["bob"]
    assert [r["User"] for r in _rows(ok(hist.url, "qacct", "-p", "-A", "vision"))] == ["ann"]
    assert _rows(ok(hist.url, "qacct", "-p", "-q", "1xgpu")) == []
    assert _rows(ok(hist.url, "qacct", "-p", "-S", "2999-01-01")) == []
    assert len(_rows(ok(hist.url, "qacct", "-p", "-E", "2999-01-01T00:00"))) == 2
    assert [r["JobID"] for r in _rows(ok(hist.url, "qacct", "-p", "-j", hist.ids["bob"]))] == [
        f"{hist.ids['bob']}.testsrv"]
    states = sorted(r["State"] for r in _rows(ok(hist.url, "qacct", "-p", "-a")))
    assert states == ["completed", "completed", "held"]


def test_summary_with_fair_share(hist: History) -> None:
    usage = hist.daemon.client.call("GET", "/api/v1/usage")
    rows = {r["User"]: r for r in _rows(ok(hist.url, "qacct", "-s", "-p"))}
    assert {"ann", "bob"} <= set(rows) and rows["ann"]["Account"] == "vision" and rows["ann"]["Jobs"] == "1"
    assert rows["ann"]["FairShare"] == f"{usage['fairshare']['vision/ann']:.3f}"
    assert float(rows["ann"]["GPUHours"]) >= 0 and rows["bob"]["Jobs"] == "1"
    lines = ok(hist.url, "qacct", "--summary").splitlines()
    assert lines[0].split() == ["Account", "User", "Jobs", "GPUHours", "CPUHours", "WallHours", "Usage", "FairShare"]
    doc = json.loads(ok(hist.url, "qacct", "-s", "-F", "json"))
    assert doc["unit"] == usage["unit"] and {r["user"] for r in doc["summary"]} >= {"ann", "bob"}


def test_exit_codes(hist: History, tmp_path: Path) -> None:
    out = run(hist.url, "qacct", "-j", "999")
    assert (out.returncode, out.stderr) == (153, "qacct: Unknown Job Id 999.testsrv\n")
    out = run(hist.url, "qacct", "-S", "yesterday")
    assert out.returncode == 2 and "YYYY-MM-DD" in out.stderr
    assert run(hist.url, "qacct", "-j", "1x").returncode == 1
    out = run("unix:///nonexistent.sock", "qacct")
    assert out.returncode == 186
    assert "Examples:" in ok(hist.url, "qacct", "--help")
