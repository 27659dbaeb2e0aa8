"""The state directory on a small tmpfs that fills up.

What a user sees: submissions (and every other change) refused with a 503
``store_full`` whose message says the store is full and nothing was accepted;
``qsub`` prints it and exits 162 (PBSE_SYSTEM). What schedd keeps: the jobs it
acknowledged, the jobs running (they go on under their agents), and the end of
a job that finished while the disk was full (written once space returns).
It recovers by itself when the filler is deleted: the next submission
succeeds, with no restart. A kill -9 and restart afterwards shows that what
it kept is in the store, and that no refused submission got in.

Needs root (``mount -t tmpfs``); skipped elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedd.cli.client import ApiError
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for

BIG = "#!/bin/sh\n# " + "x" * 60_000 + "\ntrue\n"  # fills the store a few dozen submissions at a time


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield state
    finally:
        _kill_leftovers(state)
        subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system says ENOSPC; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def _qsub(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCHEDD_URL": d.url}
    return subprocess.run([sys.executable, "-m", "schedd.cli.qsub", *args], capture_output=True, text=True,
                          env=env, cwd=d.tmp, timeout=60)


def test_full_state_dir_refuses_new_work_keeps_what_it_had_and_recovers_by_itself(tmpfs: Path, tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=1, gpus=2)
    assert d.state == tmpfs
    d.start()
    try:
        gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
        loop = "touch {tmp}/{name}.started; while [ ! -e {gate} ]; do sleep 0.05; done\n"
        a = d.submit(script=loop.format(tmp=tmp_path, name="a", gate=gate_a), name="long", queue="1xgpu")
        b = d.submit(script=loop.format(tmp=tmp_path, name="b", gate=gate_b), name="ends-while-full", queue="1xgpu")
        wait_for("both jobs started", lambda: (tmp_path / "a.started").exists() and (tmp_path / "b.started").exists())

        filler = _fill(tmpfs)
        acked: list[str] = []
        refused: ApiError | None = None
        for i in range(400):  # the WAL may still take a few: it reuses the space it has
            try:
                acked.append(d.submit(script=BIG, name=f"fill{i}", hold=True))
            except ApiError as e:
                refused = e
                break
        assert refused is not None, "the store never said it was full"
        assert (refused.status, refused.code) == (503, "store_full"), refused.message
        assert refused.message.startswith("state store is full: ") and refused.message.endswith(
            "; nothing was accepted"), refused.message

        # Refused up front from now on, by the API and by qsub (PBS's exit code for a server error).
        with pytest.raises(ApiError) as again:
            d.submit(script="true\n", name="refused")
        assert again.value.status == 503 and "nothing was accepted" in again.value.message
        script = tmp_path / "job.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        out = _qsub(d, str(script))
        assert out.returncode == 162, (out.returncode, out.stdout, out.stderr)
        assert out.stdout == ""
        assert out.stderr.startswith("qsub: state store is full: ") and "nothing was accepted" in out.stderr, out.stderr
        with pytest.raises(ApiError) as alter:
            d.client.call("PATCH", f"/api/v1/jobs/{acked[0] if acked else a}", {"name": "nope"})
        assert alter.value.status == 503

        # Reads go on; the running jobs go on; one ends meanwhile, in memory.
        assert d.job(a)["state"] == "running"
        gate_b.touch()
        ended = d.wait_state(b, "finished")
        assert ended["exit_status"] == 0, ended
        assert d.job(a)["state"] == "running"

        # Space returns: no restart, the next submission succeeds and runs.
        filler.unlink()
        after = wait_for("a submission accepted again", lambda: _try_submit(d, f"echo ok > {tmp_path}/after.out\n"))
        assert d.wait_state(after, "finished")["exit_status"] == 0
        events = d.client.call("GET", f"/api/v1/jobs/{b}/events")["events"]
        assert [e["kind"] for e in events].count("end") == 1, events  # the end, held, is now written
        gate_a.touch()
        assert d.wait_state(a, "finished")["exit_status"] == 0

        # Everything acknowledged is in the store, nothing refused is.
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(30)
        d.client.close()
        d.start()
        history = d.client.call("GET", "/api/v1/jobs?finished=1&fields=id,name,state")["jobs"]
        names = {j["name"]: j for j in history}
        assert {str(j["id"]) for j in history} == {a, b, after, *acked}, history
        assert names["ends-while-full"]["state"] == "finished" and names["long"]["state"] == "finished"
        assert "refused" not in names and "job.sh" not in names

        log = d.log.read_text()
        assert log.count("new work is refused") == 1, "the full disk is logged once, not per retry"
        assert log.count("writable again") == 1
        assert log.count("job metrics are dropped") <= 1 and log.count("metric chunks not committed") <= 1
        assert "Traceback" not in log.split("new work is refused")[1].split("writable again")[0]
    finally:
        gate_a.touch()
        d.stop()


def _try_submit(d: Daemon, script: str) -> str | None:
    try:
        return d.submit(script=script, name="after")
    except ApiError as e:
        assert e.status == 503, e.message
        return None


def test_store_full_error_names_the_state_file(tmpfs: Path) -> None:
    """The store alone: a flush on a full disk says which file, and recovers."""
    from schedd.store import JobRow, Store, StoreFull

    store = Store(tmpfs / "schedd.db", retry_s=0.05)
    store.start()
    try:
        store.put_jobs([JobRow("1", 1, "queued", "ann", "ml", "q", 1.0, None, b"{}")])
        store.flush_sync()
        filler = _fill(tmpfs)
        with pytest.raises(StoreFull, match=f"state store is full: {tmpfs / 'schedd.db'}: database or disk is full"):
            for i in range(2, 400):
                store.put_jobs([JobRow(str(i), i, "queued", "ann", "ml", "q", 1.0, None, b"x" * 30_000)])
                store.flush_sync()
        assert store.full is not None
        held = i
        store.withdraw_jobs([str(held)])  # a refused submission's rows never reach the file
        filler.unlink()
        wait_for("the held rows written", lambda: store.full is None)
        store.flush_sync()
        assert [r.id for r in store.load_jobs()] == [str(n) for n in range(1, held)]
    finally:
        store.close()


def test_metrics_are_dropped_while_full_job_control_is_kept(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Job metrics give way to job control: while the disk is full the store drops
    metric chunks (one warning for the episode) and keeps the job rows it holds."""
    from schedd.store import JobRow, Store, StoreFull
    from schedd.store.series import ChunkRow

    store = Store(tmpfs / "schedd.db", retry_s=0.05)
    store.start()
    try:
        store.put_jobs([JobRow("1", 1, "running", "ann", "ml", "q", 1.0, None, b"{}")])
        store.flush_sync()
        filler = _fill(tmpfs)
        with pytest.raises(StoreFull):
            for i in range(2, 400):
                store.put_jobs([JobRow(str(i), i, "queued", "ann", "ml", "q", 1.0, None, b"x" * 30_000)])
                store.flush_sync()
        last = i
        for seq in range(50):  # a job's metrics keep coming meanwhile
            store.put_chunks([ChunkRow("1", "loss", seq, "custom", 100, 0.0, 1.0, b"s", b"d" * 20_000)])
            with pytest.raises(StoreFull):
                store.flush_sync()
        assert sum("job metrics are dropped" in r.getMessage() for r in caplog.records) == 1
        assert sum("new work is refused" in r.getMessage() for r in caplog.records) == 1
        filler.unlink()
        wait_for("the held rows written", lambda: store.full is None)
        store.flush_sync()
        assert [r.id for r in store.load_jobs()][-1] == str(last)  # the held job rows: all written
        assert store.series_heads("1") == []  # the chunks of the episode: dropped
        store.put_chunks([ChunkRow("1", "loss", 50, "custom", 1, 2.0, 2.0, b"s", b"d")])
        store.flush_sync()
        assert [k for k, *_ in store.series_heads("1")] == ["loss"]  # metrics are written again
    finally:
        store.close()


def test_a_withdrawn_submission_leaves_nothing_in_its_batch_and_early_waiters_are_free() -> None:
    """The two batch rules the full-disk path relies on, without a disk: a
    withdrawal drops the job's queued row and events (not another job's), and a
    flush enqueued before any data waits for nothing in its batch."""
    from schedd.store import EventRow, JobRow
    from schedd.store._batch import AddEvents, Batch, PutJobs, SyncWaiter, WithdrawJobs

    batch = Batch()
    early, late = SyncWaiter(), SyncWaiter()
    batch.add(early)
    batch.add(PutJobs((JobRow("7", 7, "queued", "ann", "ml", "q", 1.0, None, b"{}"),
                       JobRow("8", 8, "queued", "ann", "ml", "q", 1.0, None, b"{}"))))
    batch.add(AddEvents((EventRow("7", 1.0, "submit"), EventRow("8", 1.0, "submit"))))
    batch.add(late)
    batch.add(WithdrawJobs(("7",)))
    assert batch.jobs["7"] is None and batch.jobs["8"] is not None
    assert [e.job_id for e in batch.events] == ["8"]
    assert (batch.waiters, batch.free) == ([early, late], 1)
