"""The soak benchmark, short (``python -m bench.soak`` runs 100,000 jobs): a
real daemon and two agents run 1,000 short jobs with a history window of
3 seconds. Every job runs and finishes exactly once, no file descriptor is
left open, and the history is pruned as it goes (the database holds the
window's jobs, not every job)."""

from __future__ import annotations

import time
from pathlib import Path

from bench._daemon import LocalSchedd
from bench.soak import report, sample, soak, with_history

JOBS = 1000
WINDOW_S = 3.0


def test_short_jobs_finish_exactly_once_and_nothing_grows(tmp_path: Path) -> None:
    d = LocalSchedd(tmp_path, nodes=2, cpus_per_node=32)
    with_history(d, WINDOW_S)
    work = tmp_path / "work"
    work.mkdir()
    d.start()
    try:
        r = soak(d, work, JOBS, WINDOW_S, batch=100, backlog=200, samples=10, warmup=0.3, stall_s=60.0)
        # Once the window has passed the last jobs, the database holds the window, not every job
        # (how many are left at the very end depends on how fast the 1,000 ran, not on pruning).
        t0 = time.monotonic()
        d._until("the history pruned to the window", lambda: _rows(d) < 0.75 * JOBS, t0, timeout_s=60.0)
    finally:
        d.stop()
    text = report(r)
    assert r.exactly_once, text
    # No descriptor leaks: the daemon's stay put while jobs flow; the agents' (which
    # follow the running jobs) are back to their start-up count once the last job is over.
    assert r.warmup >= 0, text
    assert max(s.daemon_fds for s in r.samples[r.warmup:]) <= r.samples[r.warmup].daemon_fds + 2, text
    assert r.idle_fds_after[0] <= r.idle_fds_before[0] + 1 and r.idle_fds_after[1] <= r.idle_fds_before[1], text
    # The history was pruned while the jobs ran.
    assert r.pruned_log_lines > 0, text


def _rows(d: LocalSchedd) -> int:
    return sample(d, JOBS, time.monotonic()).history_rows
