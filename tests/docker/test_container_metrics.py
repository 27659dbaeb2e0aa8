"""Job metrics from container ranks (#10): a gang of two ranks, each in a container
of the python test image (no schedd in it), reports with ``schedd_report`` —
the copy in its scratch, on PYTHONPATH — and rank 0 also through MLflow's REST
API at ``MLFLOW_TRACKING_URI`` (host network: the daemon's address as the node
has it). The points come back from the API: rank 0's under their names, rank
1's as ``rank1.``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.docker.test_runtime import docker_daemon, node_containers
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for

#: the test image has this machine's base interpreter at its own path (tests/dockerimages.py)
PYTHON = os.path.realpath(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")

JOB = """
import json, os, urllib.request
import schedd_report
from schedd_report import report
rank = int(os.environ["PBS_TASKNUM"])
assert os.path.exists("/.dockerenv")
assert os.path.dirname(schedd_report.__file__).startswith(os.path.dirname(os.environ["TMPDIR"]))
for i in range(50):
    report(step=i, loss=rank + 1.0 / (i + 1))
if rank == 0:
    body = json.dumps({"run_id": os.environ["MLFLOW_RUN_ID"], "key": "mlf", "value": 0.5,
                       "timestamp": 0, "step": 3}).encode()
    req = urllib.request.Request(os.environ["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/runs/log-metric", body,
                                 {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=20).read()
print("reported", rank)
"""


@pytest.fixture
def cluster(tmp_path: Path, python_image: str, docker_client: docker.DockerClient) -> Iterator[Daemon]:
    daemon = docker_daemon(tmp_path, python_image, nodes=2)
    try:
        yield daemon
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)
        for c in node_containers(docker_client, daemon):
            c.remove(force=True)


def _series(d: Daemon, jid: str) -> dict[str, Any]:
    body = d.client.call("GET", f"/api/v1/jobs/{jid}/metrics?keys=loss,rank1.loss,mlf&max_points=1000")
    return {s["key"]: s for s in body["series"]}


def test_container_ranks_report_through_the_helper_and_mlflow(cluster: Daemon) -> None:
    jid = cluster.submit(argv=[PYTHON, "-S", "-c", JOB], chunks=[{"ncpus": 1, "ngpus": 0, "count": 2}])
    job = cluster.wait_state(jid, "finished")
    err = cluster.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=err&tail=40")["lines"]
    assert job["exit_status"] == 0, err
    assert len({n["node"] for n in job["exec_nodes"]}) == 2  # one rank per node
    out = cluster.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=out&tail=10")["lines"]
    assert sorted(out) == ["reported 0", "reported 1"], out
    got = wait_for("both ranks' points and MLflow's", lambda: (s := _series(cluster, jid)).keys() ==
                   {"loss", "rank1.loss", "mlf"} and s["loss"]["count"] == s["rank1.loss"]["count"] == 50 and s)
    assert [p[1] for p in got["loss"]["points"]] == list(range(50))
    assert got["loss"]["points"][0][2] == 1.0 and got["rank1.loss"]["points"][0][2] == 2.0
    assert got["mlf"]["points"] == [[got["mlf"]["points"][0][0], 3, 0.5]]
