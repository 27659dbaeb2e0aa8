"""A gang's ranks share one .o/.e file and none erases another's lines (issue #15).

Every rank writes at once, the first thing it does, to stdout and stderr; on
main before the fix one rank's truncation erased the other's first line in
about 2 jobs of 5. Rank 0 now starts the files afresh, once per attempt, and
the daemon launches the other ranks only after that: every line must be there,
in every job, for gangs of 2 and of 4 ranks on separate agents, joined or not.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Daemon, wait_for

WRITE = 'echo "out rank $RANK of $WORLD_SIZE"; echo "err rank $RANK of $WORLD_SIZE" >&2'


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def test_every_rank_line_reaches_the_job_output(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=4, gpus=1).start()
    try:
        jobs = []
        for i in range(40):
            ranks = 4 if i % 4 == 0 else 2
            joined = i % 3 == 0
            jid = d.submit(argv=["sh", "-c", WRITE], chunks=[{"ncpus": 1, "ngpus": 0, "count": ranks}],
                           name=f"race{i}", join="oe" if joined else "n")
            jobs.append((jid, ranks, joined))
        for jid, ranks, joined in jobs:
            job = d.wait_state(jid, "finished", timeout=120)
            assert job["exit_status"] == 0, job
            assert len({c["node"] for c in job["exec_nodes"]}) == ranks  # one rank per agent
            out = [f"out rank {r} of {ranks}" for r in range(ranks)]
            err = [f"err rank {r} of {ranks}" for r in range(ranks)]
            if joined:
                assert _lines(Path(job["stdout_path"])) == sorted(out + err), jid
            else:
                assert _lines(Path(job["stdout_path"])) == sorted(out), jid
                assert _lines(Path(job["stderr_path"])) == sorted(err), jid
    finally:
        d.stop()


def test_a_rerun_gang_starts_its_output_afresh(tmp_path: Path) -> None:
    """PBS overwrites a rerun job's output: the new attempt's lines only, each once."""
    d = Daemon(tmp_path, nodes=2, gpus=1).start()
    try:
        marker = tmp_path / "go"
        script = f'echo "attempt $RANK"; while [ ! -e {marker} ]; do sleep 0.05; done; echo "done $RANK"'
        jid = d.submit(argv=["sh", "-c", script], chunks=[{"ncpus": 1, "ngpus": 0, "count": 2}], name="rerun")
        job = d.wait_state(jid, "running")
        out = Path(job["stdout_path"])
        wait_for("both ranks wrote", lambda: out.exists() and len(out.read_text().splitlines()) == 2)
        d.client.call("POST", f"/api/v1/jobs/{jid}/requeue")
        wait_for("the second attempt", lambda: d.job(jid)["attempt"] == 1 and d.job(jid)["state"] == "running")
        wait_for("the new attempt wrote", lambda: len(out.read_text().splitlines()) == 2)
        marker.touch()
        job = d.wait_state(jid, "finished")
        assert job["exit_status"] == 0, job
        assert _lines(out) == ["attempt 0", "attempt 1", "done 0", "done 1"]
    finally:
        d.stop()
