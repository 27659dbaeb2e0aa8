"""Every rank's metrics (#10): each rank of a gang has a SCHEDD_METRICS file of
its own, followed by its node; rank 0's points keep their names, rank R's are
``rankR.``-prefixed, as the node samples of other ranks already are. A batch
naming a rank is taken only from the node that runs that rank."""

from __future__ import annotations

import sys

from schedd.protocol import Points
from schedd.series.book import Series
from schedd.series.feed import take_points
from schedd.series.settings import MetricsSettings
from tests.integration.conftest import Daemon, wait_for

CODE = """
import os
from schedd_report import report
rank = int(os.environ["PBS_TASKNUM"])
for i in range(30):
    report(step=i, loss=rank * 10 + i)
with open(os.environ["SCHEDD_METRICS"], "a") as f:
    f.write("oops\\n")
"""


def test_every_rank_of_a_gang_reports_under_its_prefix(daemon: Daemon) -> None:
    jid = daemon.submit(argv=[sys.executable, "-S", "-c", CODE], chunks=[{"ncpus": 1, "ngpus": 0, "count": 2}])
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == 0 and len({n["node"] for n in job["exec_nodes"]}) == 2, job

    def series() -> dict[str, list[list[float]]]:
        body = daemon.client.call("GET", f"/api/v1/jobs/{jid}/metrics?keys=loss,rank1.loss&max_points=100")
        return {s["key"]: s["points"] for s in body["series"]}

    got = wait_for("both ranks' points", lambda: (s := series()) and all(len(s.get(k, [])) == 30 for k in
                                                                         ("loss", "rank1.loss")) and s)
    assert [p[2] for p in got["loss"]] == list(range(30))
    assert [p[2] for p in got["rank1.loss"]] == [10 + i for i in range(30)]
    body = daemon.client.call("GET", f"/api/v1/jobs/{jid}/metrics?series=0")
    assert body["malformed"] == 2 and body["last"]["rank1.loss"]["step"] == 29, body
    err = daemon.client.call("GET", f"/api/v1/jobs/{jid}/log?stream=err&tail=20")["lines"]
    assert sum("malformed line of SCHEDD_METRICS (rank 1)" in line for line in err) == 1, err


class _Place:
    def __init__(self, node: str) -> None:
        self.node = node


class _Rec:
    def __init__(self, nodes: list[str]) -> None:
        self.attempt = 0
        self.exec_nodes = [_Place(n) for n in nodes]


class _State:
    """What take_points reads of the State: the job's record (an ended job: no active entry)."""

    def __init__(self, nodes: list[str]) -> None:
        self.active: dict[str, object] = {}
        self.jobs = {"7": _Rec(nodes)}


def test_a_rank_s_batch_is_taken_only_from_its_node() -> None:
    series = Series(None, MetricsSettings())
    state = _State(["n1", "n2"])
    pts = {"loss": [(1.0, 0, 0.5)]}
    assert take_points(series, state, "n1", Points("7", 0, pts, rank=1)) == 0  # type: ignore[arg-type]
    assert take_points(series, state, "n2", Points("7", 0, pts, rank=1)) == 1  # type: ignore[arg-type]
    assert take_points(series, state, "n2", Points("7", 0, pts, rank=2)) == 0  # type: ignore[arg-type]
    assert take_points(series, state, "n1", Points("7", 0, pts)) == 1  # type: ignore[arg-type]
    assert set(series.keys("7")) == {"loss", "rank1.loss"}
