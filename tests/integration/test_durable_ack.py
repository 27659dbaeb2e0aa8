"""Durable before ack: a submission schedd answered survives a ``kill -9`` that
follows the answer at once.

The client submits jobs one by one and records every id it was given; on the
k-th answer it SIGKILLs the daemon from the same thread, before doing anything
else. After a restart every recorded id must be there. A few rounds on the
same state directory (each round's restart reloads the previous rounds too),
with k varying and scripts large enough that a commit takes a while: an answer
sent before its commit is lost here, as it was before the API awaited it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from schedd.cli.client import ApiError
from tests.integration.conftest import Daemon, _kill_leftovers

ROUNDS = 4
PER_ROUND = 12
SCRIPT = "#!/bin/sh\n# " + "x" * 256_000 + "\ntrue\n"  # a big record: its commit is not instant


def _submit_then_kill(d: Daemon, n: int, k: int, tag: str) -> list[str]:
    """Submit ``n`` jobs one at a time; SIGKILL the daemon on receiving the k-th answer."""
    assert d.proc is not None
    acked: list[str] = []
    for i in range(n):
        body = {"script": SCRIPT, "name": f"{tag}-{i}", "workdir": str(d.tmp), "hold": True}
        answer = d.client.call("POST", "/api/v1/jobs", body)
        acked.append(str(answer["job"]["id"]))
        if len(acked) == k:
            os.kill(d.proc.pid, signal.SIGKILL)  # right after the answer: nothing else first
            break
    d.proc.wait(30)
    return acked


def _all_ids(d: Daemon) -> set[str]:
    jobs = d.client.call("GET", "/api/v1/jobs?fields=id,name")["jobs"]
    return {str(j["id"]) for j in jobs}


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_every_acknowledged_submission_survives_kill9_right_after_its_answer(tmp_path: Path, synchronous: str) -> None:
    """With either synchronous mode: a process crash loses nothing answered
    (FULL adds an fsync per commit, for power loss, which no test here can cut)."""
    acked: list[str] = []
    d = Daemon(tmp_path, nodes=0)
    d.nodes = 0
    line = f'store_synchronous = "{synchronous}"\n'
    d.config.write_text(d.config.read_text().replace("\n[queues.default]", f"{line}\n[queues.default]", 1))
    assert f'store_synchronous = "{synchronous}"' in d.config.read_text()
    try:
        for rnd in range(ROUNDS):
            d.start()
            present = _all_ids(d)
            missing = [j for j in acked if j not in present]
            assert not missing, f"round {rnd}: acknowledged but lost after kill -9: {missing}"
            k = 1 + (rnd * 5) % PER_ROUND  # 1, 6, 11, 4: early, middle and late kills
            acked += _submit_then_kill(d, PER_ROUND, k, f"r{rnd}")
            d.client.close()
        d.start()
        present = _all_ids(d)
        assert [j for j in acked if j not in present] == [], "acknowledged but lost after the last kill -9"
        assert len(acked) == sum(1 + (r * 5) % PER_ROUND for r in range(ROUNDS))
    finally:
        d.stop()
        _kill_leftovers(d.state)


def test_a_batch_and_an_array_are_durable_when_answered(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=0)
    d.nodes = 0
    try:
        d.start()
        assert d.proc is not None
        jobs = [{"script": SCRIPT, "name": f"b{i}", "workdir": str(tmp_path), "hold": True} for i in range(5)]
        ids = [i.split(".")[0] for i in d.client.call("POST", "/api/v1/jobs/batch", {"jobs": jobs})["ids"]]
        array = d.client.call("POST", "/api/v1/jobs", {"script": SCRIPT, "array": "1-20", "workdir": str(tmp_path),
                                                       "hold": True})
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(30)
        d.client.close()
        d.start()
        present = _all_ids(d)
        parent = str(array["job"]["id"])
        number = parent.split("[")[0]
        assert set(ids) <= present, ids
        assert {parent, *(f"{number}[{i}]" for i in range(1, 21))} <= present
    finally:
        d.stop()
        _kill_leftovers(d.state)


def test_a_release_answered_is_durable(tmp_path: Path) -> None:
    """qrls (like qdel, qhold, qalter) answers after the commit that holds the change."""
    d = Daemon(tmp_path, nodes=0)
    d.nodes = 0
    try:
        d.start()
        assert d.proc is not None
        jid = d.submit(script=SCRIPT, hold=True)
        d.client.call("PATCH", f"/api/v1/jobs/{jid}", {"name": "renamed"})
        d.client.call("POST", f"/api/v1/jobs/{jid}/release", {})
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(30)
        d.client.close()
        d.start()
        job = d.job(jid)
        assert (job["name"], job["state"]) == ("renamed", "queued"), job
        with pytest.raises(ApiError):  # sanity: the client does see errors
            d.client.call("GET", "/api/v1/jobs/99999")
    finally:
        d.stop()
        _kill_leftovers(d.state)
