"""qstat against a real daemon (1 node, 4 fake GPUs): layouts, selection, -T, exit codes.

One daemon for the module holds a fixed set of jobs that no test changes:

    1      train-resnet50     4 GPUs, walltime 600, running (sleep 300)
    2      llama-finetune-13b 4 GPUs, queued behind 1: its reservation starts when 1's walltime ends
    3      eval-ckpt          held, queue 1xgpu
    4      preprocess         finished
    5[]    hparam-sweep       array 1-3, all three subjobs running (B)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schedd.cli.qstat_format import est_start
from tests.cli.pbs_display import USER, golden, normalize, ok, run, token, user_column
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for


class Cluster:
    def __init__(self, daemon: Daemon, tmp: Path) -> None:
        self.daemon, self.tmp, self.url = daemon, tmp, daemon.url


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("qstat")
    d = Daemon(tmp, nodes=1, gpus=4).start()
    try:
        first = d.submit(argv=["sleep", "300"], name="train-resnet50", walltime_s=600,
                         chunks=[{"ncpus": 1, "mem_mb": 1024, "ngpus": 4}])
        d.wait_state(first, "running")
        d.submit(argv=["sleep", "1"], name="llama-finetune-13b", walltime_s=3600, chunks=[{"ncpus": 2, "ngpus": 4}])
        d.submit(argv=["true"], name="eval-ckpt", queue="1xgpu", hold=True)
        done = d.submit(argv=["true"], name="preprocess", chunks=[{"ncpus": 1, "ngpus": 0}])
        d.client.call("POST", "/api/v1/jobs", {"argv": ["sleep", "300"], "name": "hparam-sweep", "array": "1-3",
                                               "chunks": [{"ncpus": 1, "ngpus": 0}], "workdir": str(tmp)})
        d.wait_state(done, "finished")
        for i in (1, 2, 3):
            d.wait_state(f"5[{i}]", "running")
        d.wait_state("5[]", "running")
        wait_for("job 2's reservation", lambda: d.job("2").get("planned_start") and d.job("2")["reason"])
        yield Cluster(d, tmp)
    finally:
        d.stop()
        _kill_leftovers(d.state)


def test_default_layout(cl: Cluster) -> None:
    text = ok(cl.url, "qstat")
    text = re.sub(r"\b\d\d:\d\d:\d\d\b", "HH:MM:SS", text)  # Time Use of the running jobs
    golden("qstat_default.txt", normalize(text, cl.tmp, user_column(16)))


def _unwrap(text: str) -> str:
    return text.replace("\n\t", "")


USED = re.compile(r"(resources_used\.(?:cpupercent|cput|mem|walltime|gpu_util) = ).*")


def test_full_layout(cl: Cluster) -> None:
    text = _unwrap(ok(cl.url, "qstat", "-f", "1", "2"))
    assert "\n    Job_Owner = " in text
    golden("qstat_full.txt", normalize(USED.sub(r"\1X", text), cl.tmp, (f"{USER}@", "USER@")))


def test_full_layout_wraps_at_78_columns(cl: Cluster) -> None:
    text = ok(cl.url, "qstat", "-f", "2")
    assert all(len(line.expandtabs(8)) <= 80 for line in text.splitlines())
    assert "\n\t" in text  # the comment is longer than a line
    wide = ok(cl.url, "qstat", "-fw", "2")
    assert "\n\t" not in wide and _unwrap(text) == wide


def test_json_layout(cl: Cluster) -> None:
    text = ok(cl.url, "qstat", "-x", "-f", "-F", "json", "2", "4")
    doc = json.loads(text)
    assert set(doc) == {"timestamp", "pbs_version", "pbs_server", "Jobs"} and doc["pbs_server"] == "testsrv"
    assert list(doc["Jobs"]) == ["2.testsrv", "4.testsrv"]
    assert doc["Jobs"]["4.testsrv"]["Exit_status"] == 0 and doc["Jobs"]["2.testsrv"]["Resource_List"]["ngpus"] == 4
    text = re.sub(r'"(timestamp|history_timestamp)":\d+', r'"\1":0', text)
    text = re.sub(r'"resources_used":\{[^}]*\}', lambda m: re.sub(
        r'"(cpupercent|cput|mem|walltime)":("[^"]*"|\d+)', r'"\1":"X"', m[0]), text)
    text = re.sub(r'"pbs_version":"[^"]*"', '"pbs_version":"V"', text)
    golden("qstat_json.txt", normalize(text, cl.tmp, (f"{USER}@", "USER@")))


def test_queue_layout(cl: Cluster) -> None:
    golden("qstat_queues.txt", ok(cl.url, "qstat", "-Q"))
    full = ok(cl.url, "qstat", "-Qf", "1xgpu")
    assert full.startswith("Queue: 1xgpu\n    queue_type = Execution\n") and "default_chunk.ngpus = 1" in full


def test_server_summary(cl: Cluster) -> None:
    text = ok(cl.url, "qstat", "-B")
    # An array counts as one job (its parent), as in qstat -Q.
    assert text.splitlines()[2].split() == ["testsrv", "0", "4", "1", "2", "1", "0", "0", "0", "Active"]
    assert "default_queue = default" in ok(cl.url, "qstat", "-Bf")


def test_estimated_start_of_a_job_blocked_behind_a_running_one(cl: Cluster) -> None:
    first, blocked = cl.daemon.job("1"), cl.daemon.job("2")
    assert blocked["planned_start"] == pytest.approx(first["start_time"] + 600, abs=5)
    lines = ok(cl.url, "qstat", "-T").splitlines()
    assert lines[2].rstrip() == " " * 75 + "Est" and lines[3].rstrip().endswith("Req'd  Req'd   Start")
    rows = {line.split()[0]: line for line in lines[6:]}
    assert list(rows)[:2] == ["1.testsrv", "5[].testsrv"]  # started jobs first
    expected = est_start(blocked["planned_start"], time.time())
    assert rows["2.testsrv"].endswith(f" Q {expected:>5}") and expected not in ("--", "?")
    assert rows["3.testsrv"].endswith(" H    --")


def test_comment_says_why_a_job_waits(cl: Cluster) -> None:
    lines = ok(cl.url, "qstat", "-s", "2", "3").splitlines()
    assert lines[-3] == "   Not Running: Insufficient amount of resource: ngpus (R: 4 A: 0 T: 4)"
    assert lines[-1] == f"   Job held by {USER}"
    one = ok(cl.url, "qstat", "-s1", "2").splitlines()[-1]
    assert one.endswith(" Q   --     Not Running: Insufficient amount of resource: ngpus (R: 4 A: 0 T: 4)")


def _ids(text: str, skip: int = 2) -> list[str]:
    return [line.split()[0] for line in text.splitlines()[skip:] if line.strip()]


def test_selection_options(cl: Cluster) -> None:
    assert _ids(ok(cl.url, "qstat")) == ["1.testsrv", "2.testsrv", "3.testsrv", "5[].testsrv"]
    assert _ids(ok(cl.url, "qstat", "-x")) == ["1.testsrv", "2.testsrv", "3.testsrv", "4.testsrv", "5[].testsrv"]
    assert _ids(ok(cl.url, "qstat", "-H"), 5) == ["4.testsrv"]
    assert _ids(ok(cl.url, "qstat", "-t", "-J")) == ["5[].testsrv", "5[1].testsrv", "5[2].testsrv", "5[3].testsrv"]
    assert _ids(ok(cl.url, "qstat", "-J")) == ["5[].testsrv"]
    assert _ids(ok(cl.url, "qstat", "-i"), 5) == ["2.testsrv", "3.testsrv"]
    assert _ids(ok(cl.url, "qstat", "-r"), 5) == ["1.testsrv"]
    assert _ids(ok(cl.url, "qstat", "-u", USER), 5) == ["1.testsrv", "2.testsrv", "3.testsrv", "5[].testsrv"]
    assert _ids(ok(cl.url, "qstat", "1xgpu")) == ["3.testsrv"]
    assert _ids(ok(cl.url, "qstat", "-x", "4", "5[2]")) == ["4.testsrv", "5[2].testsrv"]
    assert ok(cl.url, "qstat", "-u", "nobody") == ""  # no job: nothing at all, exit 0
    assert ok(cl.url, "qstat", "-n", "1").splitlines()[-1] == "   node01/0*1"
    wide = ok(cl.url, "qstat", "-w", "2").splitlines()
    assert wide[2].startswith("2.testsrv" + " " * 22 + "llama-finetune* ")


def test_exit_codes(cl: Cluster) -> None:
    out = run(cl.url, "qstat", "4")
    assert (out.returncode, out.stdout) == (35, "")
    assert out.stderr == "qstat: 4.testsrv Job has finished, use -x or -H to obtain historical job information\n"
    out = run(cl.url, "qstat", "999.testsrv")
    assert (out.returncode, out.stderr) == (153, "qstat: Unknown Job Id 999.testsrv\n")
    out = run(cl.url, "qstat", "12abc")
    assert (out.returncode, out.stderr) == (1, "qstat: illegally formed job identifier: 12abc\n")
    out = run(cl.url, "qstat", "nosuchqueue")
    assert (out.returncode, out.stderr) == (170, "qstat: Unknown queue nosuchqueue\n")
    out = run(cl.url, "qstat", "-Z")
    assert out.returncode == 2 and "usage:" in out.stderr
    assert run(cl.url, "qstat", "-a", "-i").returncode == 2  # conflicting options
    # Several operands: each failure is reported, the last one is the exit status.
    out = run(cl.url, "qstat", "999", "1", "4")
    assert out.returncode == 35 and _ids(out.stdout) == ["1.testsrv"]
    assert out.stderr.splitlines() == ["qstat: Unknown Job Id 999.testsrv",
                                       "qstat: 4.testsrv Job has finished, use -x or -H to obtain historical job "
                                       "information"]
    assert run(cl.url, "qstat", "4", "999").returncode == 153
    out = run("unix:///nonexistent.sock", "qstat")
    assert out.returncode == 186 and out.stderr.startswith("qstat: cannot connect to server")


def test_over_tcp_with_a_token(cl: Cluster) -> None:
    mine = ok(cl.url, "qstat")
    out = run(cl.daemon.http_url, "qstat", token=token(cl.daemon, "bob"))
    assert (out.returncode, out.stdout) == (0, mine)  # everyone may look
    out = run(cl.daemon.http_url, "qstat")
    assert out.returncode == 159 and "token" in out.stderr


def test_help_has_examples(cl: Cluster) -> None:
    text: Any = ok(cl.url, "qstat", "--help")
    assert "Examples:" in text and "-T" in text and text.startswith("usage:")
