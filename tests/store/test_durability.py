"""A flushed write survives the process being killed: a child writes, flushes, SIGKILLs
itself (mid-way through more writes), and the parent finds every flushed row."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schedd.store import Store

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from schedd.store import EventRow, JobRow, Store

    def job(n, state="queued"):
        return JobRow(str(n), n, state, "ann", "ml", "gpu1", float(n), None, b'{"n":%d}' % n)

    store = Store(Path(sys.argv[1]))
    store.start()
    for n in range(2000):
        store.put_jobs([job(n)])
        store.add_events([EventRow(str(n), float(n), "submit")])
    store.put_jobs([job(n, "running") for n in range(0, 2000, 2)])
    store.put_meta("next_seq", "2000")
    store.flush_sync()
    print("flushed", flush=True)
    for n in range(2000, 50000):  # not flushed: the kill lands while these are written
        store.put_jobs([job(n)])
    os.{how}
    """
)


@pytest.mark.parametrize("how", ["kill(os.getpid(), signal.SIGKILL)", "_exit(3)"], ids=["sigkill", "os_exit"])
def test_every_flushed_row_survives_a_crash(db: Path, how: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD.replace("{how}", how), str(db)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert child.stdout == "flushed\n", child.stderr
    assert child.returncode == (-signal.SIGKILL if "SIGKILL" in how else 3)
    assert Path(f"{db}-wal").stat().st_size > 0  # recovery reads the WAL the child left

    store = Store(db)
    jobs = {j.id: j for j in store.load_jobs(ids=[str(n) for n in range(2000)])}
    assert len(jobs) == 2000
    assert all(jobs[str(n)].state == ("running" if n % 2 == 0 else "queued") for n in range(2000))
    assert len(store.events()) == 2000  # the unflushed tail added no events
    assert store.get_meta("next_seq") == "2000"
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
