"""Job metrics: ingest rate from many reporting jobs, and the chart read of a long series.

Two measurements on one ``schedd up`` with real agents and real jobs:

1. **Ingest**: ``--jobs`` jobs (16) start at once and each appends ``--points``
   JSON lines to its SCHEDD_METRICS file (pre-built, written in 10,000-line
   writes: the bench measures the node and the daemon, not the job's Python).
   Rate = points stored / (last point stored - first point stored), read from
   the API. Meanwhile a thread keeps the scheduler busy (a short job submitted
   every 50 ms) and the scheduling cycle's p99 is read from ``/metrics``
   (histogram bucket bounds: coarse); the same churn without ingest first gives
   the baseline. API p99: ``GET /api/v1/jobs/ID`` latency during each phase.
   ``--rate R`` throttles the jobs to R points/s together (each writes every
   50 ms, paced by the clock) for ``--seconds``: the cycle at a target rate
   rather than at full speed. The cycle's own times are also read from the
   daemon's log (``cycle: 1 started, ... X ms``, one per churn job, 0.1 ms
   resolution, at DEBUG: the daemon runs with ``-v``) for an exact p99, and its mean from the histogram's sum.
2. **One long series**: a job reports ``--long`` points (1,000,000) of one
   metric; then ``GET .../metrics?keys=x&max_points=1000`` is timed (client wall
   time over the Unix socket: server time plus the transfer), repeated, and its
   bytes counted.

    python -m bench.metrics [--jobs 16] [--points 100000] [--long 1000000]
    python -m bench.metrics --rate 50000 --seconds 30 --long 0
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._daemon import LocalSchedd

_WRITER = """
import os, sys, time
n, key = int(sys.argv[1]), sys.argv[2]
t = time.time()
with open(os.environ["SCHEDD_METRICS"], "a") as f:
    for a in range(0, n, 10000):
        f.write("".join('{"step":%d,"%s":%d.5}\\n' % (i, key, i % 1000) for i in range(a, min(n, a + 10000))))
"""
#: The same, paced: ``rate`` points/s in writes every 50 ms, each at its tick of the
#: clock (a late write catches up, never sleeps it away).
_PACED = """
import os, sys, time
n, key, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
per = max(1, int(rate * 0.05))
t0 = time.monotonic()
with open(os.environ["SCHEDD_METRICS"], "a") as f:
    for k, a in enumerate(range(0, n, per)):
        f.write("".join('{"step":%d,"%s":%d.5}\\n' % (i, key, i % 1000) for i in range(a, min(n, a + per))))
        f.flush()
        wait = t0 + (k + 1) * 0.05 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
"""
_CYCLE_LOG = re.compile(r"cycle: \d+ started, \d+ preempted, ([0-9.]+) ms")
_BUCKET = re.compile(r'^schedd_cycle_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.M)


def _buckets(text: str) -> list[tuple[float, float]]:
    return [(float("inf") if le == "+Inf" else float(le), float(n)) for le, n in _BUCKET.findall(text)]


def _mean(text: str) -> tuple[float, float]:
    """(sum, count) of the cycle histogram."""
    s = re.search(r"^schedd_cycle_seconds_sum ([0-9.e+-]+)$", text, re.M)
    c = re.search(r"^schedd_cycle_seconds_count ([0-9.e+-]+)$", text, re.M)
    return (float(s.group(1)) if s else 0.0), (float(c.group(1)) if c else 0.0)


def _logged(log: Path, start: int) -> tuple[list[float], int]:
    """Cycle times (ms) the daemon logged past byte ``start``; the log's new end."""
    data = log.read_bytes()
    return [float(x) for x in _CYCLE_LOG.findall(data[start:].decode(errors="replace"))], len(data)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _p99(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> tuple[float, int]:
    diff = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = diff[-1][1] if diff else 0
    for le, n in diff:
        if n >= 0.99 * total:
            return le, int(total)
    return float("inf"), int(total)


class Churn:
    """Submit a short job every 50 ms and time a job lookup, until stopped."""

    def __init__(self, d: LocalSchedd, workdir: str) -> None:
        self.d, self.workdir = d, workdir
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from schedd.cli.client import Client

        c = Client(self.d.url)
        while not self.stop.is_set():
            jid = c.call("POST", "/api/v1/jobs", {"argv": ["true"], "workdir": self.workdir})["job"]["id"]
            t = time.perf_counter()
            c.call("GET", f"/api/v1/jobs/{jid}")
            self.latencies.append(time.perf_counter() - t)
            self.stop.wait(0.05)

    def measure(self, seconds: float | None = None, until: Any = None, every_s: float = 0.1) -> Phase:
        text = self.d.metrics()
        before, (s0, n0) = _buckets(text), _mean(text)
        _, start = _logged(self.d.log, 0)
        self.latencies = []
        cpu0 = self.d.cpu_s()
        t0 = time.monotonic()
        while (seconds is not None and time.monotonic() - t0 < seconds) or (until is not None and not until()):
            time.sleep(every_s)
        wall = time.monotonic() - t0
        cpu1 = self.d.cpu_s()
        text = self.d.metrics()
        p99, cycles = _p99(before, _buckets(text))
        s1, n1 = _mean(text)
        logged, _ = _logged(self.d.log, start)
        lat = sorted(self.latencies)
        return Phase(p99, cycles, lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
                     (s1 - s0) / max(1.0, n1 - n0) * 1000, logged,
                     100 * (cpu1[0] - cpu0[0]) / wall, 100 * (cpu1[1] - cpu0[1]) / wall)


@dataclass
class Phase:
    """One phase's cycle and API figures."""

    bucket_p99_s: float  # the histogram's bucket bound
    cycles: int
    api_p99_s: float
    mean_ms: float  # every cycle's, from the histogram's sum and count
    logged_ms: list[float]  # the cycles that started a job, as the daemon logged them
    daemon_cpu_pct: float  # of one core, over the phase
    agents_cpu_pct: float  # the agent processes (not their jobs)

    def line(self) -> str:
        lg = self.logged_ms
        return (f"cycle p99 <= {self.bucket_p99_s * 1000:g} ms (bucket) over {self.cycles} cycles, mean "
                f"{self.mean_ms:.3f} ms; logged starting cycles: n={len(lg)} median {_pct(lg, 0.5):.1f} "
                f"p99 {_pct(lg, 0.99):.1f} max {max(lg, default=float('nan')):.1f} ms; "
                f"API p99 GET job {self.api_p99_s * 1000:.1f} ms; CPU daemon {self.daemon_cpu_pct:.0f} % "
                f"agents {self.agents_cpu_pct:.0f} %")


def _count(d: LocalSchedd, jid: str, key: str) -> int:
    body = d.client.call("GET", f"/api/v1/jobs/{jid}/metrics?keys={key}&max_points=2")
    return int(body["series"][0]["count"]) if body["series"] else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--long", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.0, help="points/s of all jobs together (0: full speed)")
    ap.add_argument("--seconds", type=float, default=30.0, help="with --rate: how long the jobs report")
    a = ap.parse_args(argv)
    if a.rate:
        a.points = int(a.rate * a.seconds / a.jobs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# bench.metrics  {time.strftime('%Y-%m-%d')}  {platform.node()}  {os.cpu_count()} cpus  "
          f"python {platform.python_version()}  commit {commit}")
    with tempfile.TemporaryDirectory() as tmp:
        d = LocalSchedd(Path(tmp), nodes=2, verbose=True)  # -v: the cycle lines are DEBUG
        d.config.write_text(d.config.read_text().replace(
            "[queues.default]", f"[metrics]\nmax_points_per_job = {max(a.long, a.points) + 10}\n\n[queues.default]"))
        d.start()
        try:
            churn = Churn(d, tmp)
            churn.thread.start()
            base = churn.measure(seconds=10.0)
            total = a.jobs * a.points
            writer = [_PACED, str(a.points), "x", str(a.rate / a.jobs)] if a.rate else [_WRITER, str(a.points), "x"]
            ids = [d.client.call("POST", "/api/v1/jobs", {"argv": [sys.executable, "-c", *writer],
                                                          "workdir": tmp})["job"]["id"] for _ in range(a.jobs)]
            marks: list[tuple[float, int]] = []

            def done() -> bool:
                n = sum(_count(d, j, "x") for j in ids)
                if n:
                    marks.append((time.monotonic(), n))
                return bool(n >= total)

            busy = churn.measure(until=done, every_s=1.0 if a.rate else 0.1)  # paced: a light reader
            churn.stop.set()
            first = next(t for t, n in marks if n > 0)
            rate = (marks[-1][1] - marks[0][1]) / max(1e-9, marks[-1][0] - first)
            print(f"ingest: {a.jobs} jobs x {a.points} points = {total} points, {rate:,.0f} points/s stored "
                  f"({marks[-1][0] - first:.2f} s from first to last)")
            print(f"baseline:      {base.line()}")
            print(f"during ingest: {busy.line()}")
            if not a.long:
                return
            jid = d.client.call("POST", "/api/v1/jobs", {"argv": [sys.executable, "-c", _WRITER, str(a.long), "y"],
                                                         "workdir": tmp})["job"]["id"]
            t0 = time.monotonic()
            while _count(d, jid, "y") < a.long:
                time.sleep(0.2)
            print(f"long series: {a.long} points stored in {time.monotonic() - t0:.1f} s")
            from schedd.cli.client import Client

            c = Client(d.url)
            times, size = [], 0
            for _ in range(a.repeat + 2):
                t = time.perf_counter()
                body = c.call("GET", f"/api/v1/jobs/{jid}/metrics?keys=y&max_points=1000")
                times.append(time.perf_counter() - t)
                import json

                size = len(json.dumps(body, separators=(",", ":")))
                assert len(body["series"][0]["points"]) <= 1000
            times = sorted(times[2:])  # two warm-up requests
            print(f"max_points=1000 over {a.long} points: min {times[0] * 1000:.1f} / median "
                  f"{statistics.median(times) * 1000:.1f} / max {times[-1] * 1000:.1f} ms, {size:,} bytes of JSON "
                  f"({len(body['series'][0]['points'])} points)")
        finally:
            d.stop()


if __name__ == "__main__":
    main()
