"""Job metrics end to end (#10): real daemon, real agents, real jobs.

A job reports through its SCHEDD_METRICS file (with schedd_report, with raw
lines, with MLflow's own client); the points are read back through the API,
the commands and the live stream; the cap, malformed lines, the output tail
and purge are checked on the way. Waits are for conditions, never guesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from schedd.cli.client import ApiError
from tests.integration.conftest import ROOT, Daemon, wait_for


@pytest.fixture
def capped(tmp_path: Path) -> Any:
    d = Daemon(tmp_path)
    d.config.write_text(d.config.read_text().replace("[queues.default]", "[metrics]\nmax_points_per_job = 300\n\n[queues.default]"))
    d.start()
    yield d
    d.stop()


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _metrics(d: Daemon, jid: str, query: str = "") -> dict[str, Any]:
    return dict(d.client.call("GET", f"/api/v1/jobs/{jid}/metrics{query}"))


def _cli(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SCHEDD_URL=d.url)
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


REPORT = """
from schedd_report import report
import os, sys
assert "schedd" not in sys.modules
for i in range(1200):
    report(step=i, loss=1.0 / (i + 1), acc=i / 1200)
with open(os.environ["SCHEDD_METRICS"], "a") as f:
    f.write("not json\\n")
    f.write('{"step": "x", "loss": 1}\\n')
    f.write('{"step": 1200, "loss": 0.0001}\\n')
import time
time.sleep(1.5)  # a few heartbeats: the node samples the job
print("trained")
"""


def test_file_channel_helper_api_and_commands(daemon: Daemon) -> None:
    # -S: no site-packages; the helper comes from the PYTHONPATH the node sets (stdlib only)
    jid = daemon.submit(argv=[sys.executable, "-S", "-c", REPORT])
    daemon.wait_state(jid, "finished")
    m = wait_for("all points", lambda: (r := _metrics(daemon, jid, "?keys=loss,acc&max_points=100"))
                 ["last"].get("loss", {}).get("step") == 1200 and r)
    series = {s["key"]: s for s in m["series"]}
    assert series["loss"]["count"] == 1201 and series["acc"]["count"] == 1200
    assert series["loss"]["kind"] == "custom"
    assert len(series["loss"]["points"]) <= 100
    assert series["loss"]["points"][0][1:] == [0, 1.0]  # the first point is always kept
    assert m["last"]["loss"]["value"] == pytest.approx(0.0001) and m["malformed"] == 2
    # the whole series, not downsampled, is exactly what was reported
    full = _metrics(daemon, jid, "?keys=acc&max_points=5000")["series"][0]["points"]
    assert [p[1] for p in full] == list(range(1200)) and full[600][2] == pytest.approx(0.5)
    # node samples of the job
    kinds = {s["kind"] for s in _metrics(daemon, jid)["series"]}
    assert "cpu" in kinds
    # one warning in the job's stderr, for the first malformed line only
    err = daemon.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=err&tail=50")["lines"]
    assert sum("malformed line of SCHEDD_METRICS" in line for line in err) == 1, err
    out = daemon.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=out&tail=5")
    assert out["lines"] == ["trained"] and out["truncated"] is False
    # commands
    f = _cli(daemon, "schedd.cli.qstat", "-fx", jid)
    assert "resources_used.metric.loss = 0.0001 (step 1200)" in f.stdout, f.stdout
    # several jobs' last values in one request (qstat -f): unknown ids and jobs without metrics left out
    other = daemon.submit(argv=["true"])
    daemon.wait_state(other, "finished")
    bulk = daemon.client.call("GET", f"/api/v1/metrics/last?jobs={jid},{jid},{other},99999")["jobs"]
    assert list(bulk) == [jid] and bulk[jid]["loss"]["step"] == 1200 and bulk[jid]["loss"]["kind"] == "custom"
    for query, says in (("", "jobs"), ("?jobs=", "jobs"), ("?jobs=" + ",".join(map(str, range(1001))), "at most 1000")):
        with pytest.raises(ApiError) as e:
            daemon.client.call("GET", f"/api/v1/metrics/last{query}")
        assert e.value.status == 400 and says in str(e.value), (query, e.value)
    table = _cli(daemon, "schedd.cli.qmetrics", jid)
    assert table.returncode == 0 and "loss" in table.stdout and "1201" in table.stdout, table
    csv = _cli(daemon, "schedd.cli.qmetrics", "--keys", "acc", "--csv", jid).stdout.splitlines()
    assert csv[0] == "key,time,step,value" and len(csv) == 1201 and csv[1].startswith("acc,")
    peek = _cli(daemon, "schedd.cli.qpeek", "-n", "1", jid)
    assert peek.stdout == "trained\n", peek
    assert _cli(daemon, "schedd.cli.qpeek", "--help").stdout.count("examples") == 1
    # purge deletes the series with the job
    daemon.client.call("DELETE", f"/api/v1/jobs/{jid}?purge=1")
    db = daemon.state / "schedd.db"
    import sqlite3

    def gone() -> bool:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM chunks WHERE job_id = ?", (jid,)).fetchone()[0] == 0
    wait_for("the purged job's series deleted", gone)


def test_cap_is_enforced_and_reported(capped: Daemon) -> None:
    code = "from schedd_report import report\nfor i in range(2000): report(step=i, x=i)\nprint('ok')"
    jid = capped.submit(argv=[sys.executable, "-c", code])
    capped.wait_state(jid, "finished")
    m = wait_for("capped", lambda: (r := _metrics(capped, jid, "?keys=x"))["capped"] and r["series"] and r)
    assert m["series"][0]["count"] == 300
    wait_for("the cap said in the job's stderr", lambda: any(
        "cap of 300 metric points" in line
        for line in capped.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=err&tail=20")["lines"]))
    events = capped.client.call("GET", f"/api/v1/jobs/{jid}/events")["events"]
    assert any(e["kind"] == "metrics_capped" for e in events)


MLFLOW = """
import mlflow
with mlflow.start_run():
    mlflow.log_param("lr", 0.1)
    mlflow.set_tag("team", "vision")
    for i in range(40):
        mlflow.log_metric("mloss", 1.0 / (i + 1), step=i)
    mlflow.log_metrics({"a": 1.0, "b": 2.0}, step=40)
print("mlflow ok")
"""


def test_mlflow_client_lands_on_the_job(daemon: Daemon) -> None:
    pytest.importorskip("mlflow")
    jid = daemon.submit(argv=[sys.executable, "-c", MLFLOW])
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == 0, daemon.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=err&tail=40")
    m = _metrics(daemon, jid, "?keys=mloss,a,b")
    counts = {s["key"]: s["count"] for s in m["series"]}
    assert counts == {"mloss": 40, "a": 1, "b": 1}
    assert m["last"]["mloss"]["step"] == 39 and m["params"] == {"lr": "0.1"} and m["tags"]["team"] == "vision"


def test_stream_sends_points_and_state_changes(daemon: Daemon) -> None:
    go = daemon.tmp / "go"
    code = (f"import os, time\nfrom schedd_report import report\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n"
            "for i in range(5): report(step=i, live=i)\ntime.sleep(0.5)\n")
    jid = daemon.submit(argv=[sys.executable, "-c", code])
    daemon.wait_state(jid, "running")
    events: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()

    def read() -> None:
        req = urllib.request.Request(f"{daemon.http_url}/api/v1/stream?job={jid}",
                                     headers={"Authorization": f"Bearer {_token(daemon)}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            kind = ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if kind == "job" and events[-1][1]["state"] == "finished":
                        break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    wait_for("the stream's first event", lambda: events)
    go.touch()
    assert done.wait(60)
    points = [e for k, e in events if k == "point" and e["key"] == "live"]
    assert [p["value"] for p in points] == [0, 1, 2, 3, 4] and points[0]["job"] == jid
    assert events[-1][1]["exit_status"] == 0


def _token(d: Daemon) -> str:
    from tests.integration.test_api import token

    return token(d, "ann")
