"""qnodes against a real daemon: pbsnodes layouts, fake GPUs, offline/resume with a comment, exit codes.

One daemon (1 node, 4 fake GPUs) runs one 2-GPU job for the whole module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.pbs_display import golden, normalize, ok, run, token
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("qnodes"), nodes=1, gpus=4).start()
    try:
        jid = d.submit(argv=["sleep", "300"], name="uses-two", chunks=[{"ncpus": 2, "ngpus": 2}], walltime_s=600)
        d.wait_state(jid, "running")
        wait_for("node telemetry", lambda: all(_node(d).get(k) is not None for k in ("cpu_pct", "mem_used_mb",
                                                                                      "last_seen")))
        yield d
    finally:
        d.stop()
        _kill_leftovers(d.state)


def _node(d: Daemon) -> dict[str, object]:
    return dict(d.client.call("GET", "/api/v1/nodes/node01")["node"])


# The machine's memory and the agent's live telemetry vary: name each varying value.
VARYING = [
    (re.compile(r"(resources_available\.mem = )\d+kb"), r"\1MEMkb"),
    (re.compile(r"(cpupercent = )\d+"), r"\1N"),
    (re.compile(r"(mem_used = )\d+kb"), r"\1Nkb"),
    (re.compile(r"mem_used=(\d+mb|--),util=(\d+%|--)"), "mem_used=Nmb,util=N%"),
    (re.compile(r"(enforcement = )(cgroup2\S*|proctree)"), r"\1MODE"),  # the host's cgroups (tests/integration/test_enforcement.py)
]


def test_full_listing_marks_fake_gpus(daemon: Daemon, tmp_path: Path) -> None:
    text = ok(daemon.url, "qnodes", "-a")
    assert ok(daemon.url, "qnodes") == text  # no option: like -a
    for pattern, repl in VARYING:
        text = pattern.sub(repl, text)
    golden("qnodes_a.txt", normalize(text, tmp_path))
    doc = json.loads(ok(daemon.url, "qnodes", "-a", "-F", "json"))
    node = doc["nodes"]["node01"]
    assert node["resources_available"]["ngpus"] == 4 and node["resources_assigned"]["ngpus"] == 2
    assert node["jobs"] == ["1.testsrv"] and all(g["fake"] for g in node["gpus"])


def test_one_line_summaries(daemon: Daemon) -> None:
    mem = re.compile(r"\b\d+gb\b")
    golden("qnodes_S.txt", mem.sub("Ngb", ok(daemon.url, "qnodes", "-S")))
    golden("qnodes_Sj.txt", mem.sub("Ngb", ok(daemon.url, "qnodes", "-Sj")))
    row = ok(daemon.url, "qnodes", "-Sj", "node01").splitlines()[-1].split()
    assert row[:5] == ["node01", "free", "1", "1", "0"] and row[-2:] == ["2/4", "1"]


def test_offline_and_resume_with_a_comment(daemon: Daemon) -> None:
    assert ok(daemon.url, "qnodes", "-l") == ""
    assert ok(daemon.url, "qnodes", "-o", "-C", "bad GPU 2", "node01") == ""
    node = _node(daemon)
    assert (node["state"], node["comment"]) == ("offline", "bad GPU 2")
    assert ok(daemon.url, "qnodes", "-l") == f"{'node01':<20} offline bad GPU 2\n"
    assert "     comment = bad GPU 2\n" in ok(daemon.url, "qnodes", "node01")
    assert ok(daemon.url, "qnodes", "-r", "-C", "fixed", "node01") == ""
    wait_for("node01 back up", lambda: _node(daemon)["state"] == "up")
    assert ok(daemon.url, "qnodes", "-l") == ""
    assert ok(daemon.url, "qnodes", "-r", "node01") == ""  # not offline: nothing to clear


def test_exit_codes(daemon: Daemon) -> None:
    bob = token(daemon, "bob")
    out = run(daemon.http_url, "qnodes", "-o", "node01", token=bob)
    assert out.returncode == 159 and out.stderr.startswith("qnodes: Error marking node node01 - ")
    assert _node(daemon)["state"] == "up"
    assert run(daemon.http_url, "qnodes", "-S", token=bob).returncode == 0  # anyone may look
    out = run(daemon.url, "qnodes", "nosuch")
    assert (out.returncode, out.stderr) == (153, "Node: nosuch,  Error: Unknown node nosuch\n")
    assert run(daemon.url, "qnodes", "-o").returncode == 2
    assert run(daemon.url, "qnodes", "-C", "only a comment", "node01").returncode == 2
    out = run("unix:///nonexistent.sock", "qnodes", "-a")
    assert out.returncode == 186 and out.stderr.startswith("qnodes: cannot connect to server")
    assert "Examples:" in ok(daemon.url, "qnodes", "--help")
