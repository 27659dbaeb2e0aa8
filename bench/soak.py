"""Soak: many short jobs through a real daemon and its agents; does anything grow?

::

    python -m bench.soak [--jobs 100000] [--agents 4] [--history-s 60] [--batch 1000]
                         [--backlog 3000] [--samples 20] [--warmup 0.2] [--json]

``schedd up --nodes K`` (:class:`bench._daemon.LocalSchedd`, a temporary state
directory) with ``history_days`` set to ``--history-s`` seconds, so that the
history window fills early in the run and the housekeeping task
(:mod:`schedd.daemon.housekeeping`) prunes it from then on, as it would a
two-week window in a daemon that runs for months. Jobs are submitted in
batches (``POST /jobs/batch``) while fewer than ``--backlog`` wait or run, so
the queue stays bounded and what is measured is the steady state.

Each job is ``sh -c 'echo "$PBS_JOBID" >> ran'``: the file says which jobs ran
and how often. Every ``jobs / samples`` finished jobs it samples the daemon's
and the agents' RSS and open file descriptors (psutil), the SQLite files'
size (db + WAL + shm), the database's pages and free pages and the rows of
its ``jobs`` table; the agents' descriptors follow the jobs running at that
moment, so their leak check is the idle count after the last job against the
one after the first few jobs. ``kill -USR1`` stops the submissions: the jobs
submitted so far finish and are checked. At the end it checks that every job finished exactly once:
the ``ran`` file holds each submitted id once and nothing else, the daemon's
``schedd_jobs_finished_total`` is the number of jobs, all ``completed``, and
no job still in the database has two ``start`` or two ``end`` events.

Growth is measured from the *warm-up* sample — the first after ``--warmup``
of the jobs and 1.5 history windows — to the last one and to the largest after
it: before that the caches, the history and the allocator's pools are filling.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench._daemon import LocalSchedd
from bench.throughput import host

__all__ = ["Sample", "SoakResult", "main", "report", "soak", "with_history"]

_FINISHED_COMPLETED = 'schedd_jobs_finished_total{result="completed"}'


@dataclass(frozen=True)
class Sample:
    finished: int
    elapsed_s: float
    daemon_rss_mb: float
    agents_rss_mb: float  # all agents together
    daemon_fds: int
    agents_fds: int  # all agents together
    db_mb: float  # schedd.db + -wal + -shm
    db_pages: int
    free_pages: int
    history_rows: int  # rows of the jobs table: the window's jobs and the live ones


@dataclass
class SoakResult:
    jobs: int
    agents: int
    history_s: float
    elapsed_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    warmup: int = -1  # index of the warm-up sample
    ran_once: int = 0  # ids in the ran file exactly once
    ran_twice: list[str] = field(default_factory=list)
    never_ran: int = 0
    strangers: list[str] = field(default_factory=list)  # ran, never submitted
    finished_counter: int = 0
    completed_counter: int = 0
    double_events: list[str] = field(default_factory=list)  # "ID kind" with two or more
    pruned_log_lines: int = 0
    #: (daemon, agents) open fds with nothing running: after the first jobs, and after the last one
    idle_fds_before: tuple[int, int] = (0, 0)
    idle_fds_after: tuple[int, int] = (0, 0)

    @property
    def exactly_once(self) -> bool:
        return (self.ran_once == self.jobs and not self.ran_twice and not self.never_ran and not self.strangers
                and self.finished_counter == self.jobs and self.completed_counter == self.jobs
                and not self.double_events)

    def growth(self, name: str) -> tuple[float, float]:
        """(last, peak) relative to the warm-up sample: 0.03 is 3 % more."""
        if self.warmup < 0:
            return float("nan"), float("nan")
        base = float(getattr(self.samples[self.warmup], name))
        after = [float(getattr(s, name)) for s in self.samples[self.warmup:]]
        if base == 0:
            return (0.0, 0.0) if max(after) == 0 else (float("inf"), float("inf"))
        return after[-1] / base - 1, max(after) / base - 1


GROWTH = ("daemon_rss_mb", "agents_rss_mb", "daemon_fds", "agents_fds", "db_mb", "db_pages", "history_rows")


def _processes(d: LocalSchedd) -> tuple[psutil.Process, list[psutil.Process]]:
    daemon = psutil.Process(d.pid)
    agents = [p for p in daemon.children() if "nodeagent" in " ".join(_cmdline(p))]
    return daemon, agents


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return list(p.cmdline())
    except psutil.Error:
        return []


def _db(state: Path) -> tuple[float, int, int, int]:
    """(MiB of the three files, pages, free pages, jobs rows), read-only beside the daemon."""
    db = state / "schedd.db"
    size = sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        rows = int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()
    return size / 2**20, pages, free, rows


def sample(d: LocalSchedd, finished: int, t0: float) -> Sample:
    daemon, agents = _processes(d)
    db_mb, pages, free, rows = _db(d.state)
    return Sample(
        finished=finished,
        elapsed_s=time.monotonic() - t0,
        daemon_rss_mb=daemon.memory_info().rss / 2**20,
        agents_rss_mb=sum(a.memory_info().rss for a in agents) / 2**20,
        daemon_fds=daemon.num_fds(),
        agents_fds=sum(a.num_fds() for a in agents),
        db_mb=db_mb, db_pages=pages, free_pages=free, history_rows=rows,
    )


def with_history(d: LocalSchedd, history_s: float) -> None:
    """``history_days`` among the top-level keys of the benchmark's schedd.toml (before any table)."""
    text = d.config.read_text()
    head, sep, tail = text.partition("\n[")
    d.config.write_text(f"{head}\nhistory_days = {history_s / 86_400!r}\n{sep}{tail}")


def soak(d: LocalSchedd, work: Path, jobs: int, history_s: float, batch: int = 1000, backlog: int = 3000,
         samples: int = 20, warmup: float = 0.2, stall_s: float = 120.0,
         log: Callable[[str], None] = lambda m: None, should_stop: Callable[[], bool] = lambda: False,
         ) -> SoakResult:
    """Run ``jobs`` jobs through a started daemon (``_with_history`` applied); see the module docstring."""
    agents = len(_processes(d)[1])
    r = SoakResult(jobs, agents, history_s)
    ran = work / "ran"
    ran.write_text("")
    job = {"argv": ["sh", "-c", f'echo "$PBS_JOBID" >> {ran}'], "stdout_path": "/dev/null",
           "stderr_path": "/dev/null", "workdir": str(work)}
    every = max(1, jobs // samples)
    ids: list[str] = []
    t0 = time.monotonic()
    # A few jobs first, so that what is started at the first job (each agent's
    # forkserver and its socket) is there when the idle descriptors are counted.
    prime = min(jobs, 10 * max(agents, 1))
    ids += d.client.call("POST", "/api/v1/jobs/batch", {"jobs": [job] * prime})["ids"]
    d._until(f"the first {prime} jobs finished", lambda: d.finished() >= prime, t0)
    r.idle_fds_before = _settled_fds(d)
    next_sample, last_done, changed = 0, -1, t0
    while True:
        done = d.finished()
        if done >= next_sample or done >= jobs:
            s = sample(d, done, t0)
            r.samples.append(s)
            log(f"{s.finished:>7} jobs {s.elapsed_s:7.1f} s  daemon {s.daemon_rss_mb:6.1f} MiB {s.daemon_fds:3} fds  "
                f"agents {s.agents_rss_mb:6.1f} MiB {s.agents_fds:3} fds  db {s.db_mb:6.2f} MiB "
                f"({s.free_pages} free pages) {s.history_rows} rows")
            next_sample = (done // every + 1) * every
        if done >= jobs:
            break
        if should_stop() and len(ids) < jobs:  # stop submitting; what was submitted still runs and is checked
            log(f"stopping at {len(ids)} jobs submitted (of {jobs})")
            jobs = r.jobs = len(ids)
            continue
        if done != last_done:
            last_done, changed = done, time.monotonic()
        elif time.monotonic() - changed > stall_s:
            raise RuntimeError(f"no job finished for {stall_s:g} s at {done} of {jobs}\n{d.tail()}")
        if len(ids) < jobs and len(ids) - done < backlog:
            n = min(batch, jobs - len(ids))
            ids += d.client.call("POST", "/api/v1/jobs/batch", {"jobs": [job] * n})["ids"]
            continue
        time.sleep(0.05)  # a poll interval for the finished counter, not a guess at timing
    r.elapsed_s = time.monotonic() - t0
    r.idle_fds_after = _idle_fds(d, r.idle_fds_before)
    for i, s in enumerate(r.samples):
        if s.finished >= warmup * jobs and s.elapsed_s >= 1.5 * history_s and i < len(r.samples) - 1:
            r.warmup = i
            break
    _check(d, r, ids, ran)
    return r


def _settled_fds(d: LocalSchedd, for_s: float = 3.0) -> tuple[int, int]:
    """(daemon, agents) open fds with nothing running, the least seen over
    ``for_s`` seconds: the last job's descriptors may still be closing."""
    end = time.monotonic() + for_s
    best: tuple[int, int] | None = None
    while best is None or time.monotonic() < end:
        daemon, agents = _processes(d)
        now = (daemon.num_fds(), sum(a.num_fds() for a in agents))
        best = now if best is None else (min(best[0], now[0]), min(best[1], now[1]))
        time.sleep(0.1)  # a poll interval
    return best


def _idle_fds(d: LocalSchedd, before: tuple[int, int], timeout_s: float = 60.0) -> tuple[int, int]:
    """(daemon, agents) open fds once every job is over: an agent holds a
    running job's pipes and sockets, so only an idle pool compares with the
    start. Polled until back to ``before`` or ``timeout_s`` (then what is left)."""
    end = time.monotonic() + timeout_s
    while True:
        daemon, agents = _processes(d)
        now = (daemon.num_fds(), sum(a.num_fds() for a in agents))
        if (now[0] <= before[0] and now[1] <= before[1]) or time.monotonic() > end:
            return now
        time.sleep(0.1)  # a poll interval for the condition


def _check(d: LocalSchedd, r: SoakResult, ids: list[str], ran: Path) -> None:
    counts = Counter(ran.read_text().split())
    submitted = set(ids)
    r.ran_once = sum(1 for i in ids if counts.get(i) == 1)
    r.ran_twice = sorted(i for i, c in counts.items() if c > 1)[:20]
    r.never_ran = sum(1 for i in ids if i not in counts)
    r.strangers = sorted(set(counts) - submitted)[:20]
    r.finished_counter = d.finished()
    text = d.metrics()
    r.completed_counter = int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                  if line.startswith(_FINISHED_COMPLETED)))
    db = d.state / "schedd.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        twice = conn.execute("SELECT job_id, kind FROM events WHERE kind IN ('start', 'end')"
                             " GROUP BY job_id, kind HAVING count(*) > 1 LIMIT 20").fetchall()
    finally:
        conn.close()
    r.double_events = [f"{j} {k}" for j, k in twice]
    r.pruned_log_lines = sum(1 for line in d.tail(10**9).splitlines() if "finished jobs older than" in line)


def report(r: SoakResult) -> str:
    lines = [f"{r.jobs} jobs through {r.agents} agents in {r.elapsed_s:.0f} s ({r.jobs / r.elapsed_s:.0f} jobs/s), "
             f"history window {r.history_s:g} s",
             "",
             "| finished | s | daemon RSS MiB | agents RSS MiB | daemon fds | agents fds | SQLite MiB | pages | free pages | jobs rows |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(r.samples):
        mark = " (warm-up)" if i == r.warmup else ""
        lines.append(f"| {s.finished}{mark} | {s.elapsed_s:.0f} | {s.daemon_rss_mb:.1f} | {s.agents_rss_mb:.1f} | "
                     f"{s.daemon_fds} | {s.agents_fds} | {s.db_mb:.2f} | {s.db_pages} | {s.free_pages} | {s.history_rows} |")
    lines += ["", "growth after warm-up (last / peak):"]
    for name in GROWTH:
        last, peak = r.growth(name)
        lines.append(f"  {name:<14} {100 * last:+6.1f} % / {100 * peak:+6.1f} %")
    lines.append(f"  open fds with nothing running (daemon, agents): {r.idle_fds_before} after the first jobs, "
                 f"{r.idle_fds_after} after the last job")
    verdict = "yes" if r.exactly_once else "NO"
    lines += ["", f"every job finished exactly once: {verdict} (ran once {r.ran_once}, twice {len(r.ran_twice)}, "
              f"never {r.never_ran}, unknown {len(r.strangers)}; finished counter {r.finished_counter}, "
              f"completed {r.completed_counter}; jobs with two start/end events {len(r.double_events)}); "
              f"history sweeps that deleted jobs: {r.pruned_log_lines}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=64, help="cpus per agent's node (default 64)")
    ap.add_argument("--history-s", type=float, default=60.0, help="history_days, in seconds (default 60)")
    ap.add_argument("--batch", type=int, default=1000, help="jobs per POST /jobs/batch (default 1,000)")
    ap.add_argument("--backlog", type=int, default=3000, help="most jobs queued or running at once (default 3,000)")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the jobs before the warm-up sample")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.agents < 1 or args.history_s <= 0:
        ap.error("--jobs and --agents must be >= 1, --history-s > 0")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(host())
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop.set())  # finish what was submitted, check it, report
    with tempfile.TemporaryDirectory(prefix="schedd-soak-") as tmp:
        d = LocalSchedd(Path(tmp), args.agents, args.cpus)
        with_history(d, args.history_s)
        work = Path(tmp) / "work"
        work.mkdir()
        try:
            d.start()
            r = soak(d, work, args.jobs, args.history_s, args.batch, args.backlog, args.samples, args.warmup,
                     log=log, should_stop=stop.is_set)
        finally:
            d.stop()
    if args.json:
        out: dict[str, Any] = asdict(r)
        out["exactly_once"] = r.exactly_once
        out["growth"] = {name: r.growth(name) for name in GROWTH}
        print(json.dumps(out))
    else:
        print(report(r))
    return 0 if r.exactly_once else 1


if __name__ == "__main__":
    raise SystemExit(main())
