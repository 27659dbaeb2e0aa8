"""Daemon throughput, side by side with a local Slurm: submissions, end-to-end
jobs, submit-to-start latency, memory and restart with a large queue.

::

    python -m bench.throughput [--jobs N] [--agents K] [--vs-slurm] [--json]
                               [--submits M] [--qsub Q] [--batch B] [--latency L] [--recovery R]

The real daemon (``schedd up --nodes K --cpus-per-node 64``, no GPUs, a
temporary state directory) is driven over its Unix socket by the stdlib client
of :mod:`schedd.cli.client` (one keep-alive connection), the way ``qsub`` does.
The job is ``true`` (1 cpu, queue ``default``) everywhere:

* **submissions/s** — ``M`` (1,000) ``POST /jobs``, one request per job, held
  so that nothing runs meanwhile (Slurm: ``sbatch -H`` in a loop, 500); ``Q``
  (200) ``qsub -h -- true`` processes, a process per submission as ``sbatch``
  is; one ``POST /jobs/batch`` of ``B`` (10,000) held jobs; one held array
  ``1-B`` (Slurm has no multi-job request: ``sbatch -H --array=1-B`` is its
  bulk form and stands for both).
* **end to end** — ``N`` (2,000) jobs, submitted one request each (Slurm: one
  ``sbatch`` each), then again as one array, from the first submission until
  the last has finished (schedd's ``schedd_jobs_finished`` counter, Slurm's
  ``squeue``, both polled every 100 ms). A job that never finishes is counted
  as lost once nothing has finished for ``--stall`` seconds, and the rate is
  over the jobs that did.
* **start latency** on an idle pool — ``L`` (50) single jobs, one at a time,
  ``--settle`` seconds apart. *decision*: the record's ``start_time -
  submit_time`` (when a cycle chose to start it); *exec*: the job's own clock
  (``date +%s.%N``) minus the client's clock just before its submit request,
  i.e. what a user sees, for both systems. (The agent's own launch time is no
  longer read: it logs a rank's launch at DEBUG.)
* **100k queued jobs** — a fresh daemon, ``R`` (100,000) held jobs submitted in
  batches of ``B``; the daemon's RSS; SIGTERM; start again on the same state:
  seconds to the ``schedd ready`` line, to the first ``GET /healthz`` and to
  every agent back; RSS after. ``--recovery 0`` skips it.

With ``--vs-slurm`` schedd is stopped first, then ``../shared/anchors/slurm.sh
start`` runs the same jobs on Slurm (see :mod:`bench._slurm`) and ``stop``
ends it: the two never share the CPUs. ``--json`` prints one object; the Slurm
numbers carry the same keys prefixed ``slurm_``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._daemon import ROOT, LocalSchedd
from bench._slurm import SCRIPT, Slurm, SlurmError

__all__ = ["TARGETS", "main", "measure_schedd", "measure_slurm"]

Results = dict[str, Any]

#: The issue's targets: (key, comparison, bound, what it says).
TARGETS = (
    ("e2e_vs_slurm", ">=", 2.0, "end-to-end throughput >= 2x Slurm's"),
    ("start_latency_p50_ms", "<=", 20.0, "p50 submit-to-start <= 20 ms"),
    ("exec_latency_p50_ms", "<=", 20.0, "  the same, to the job's own start"),
    ("batch_submit_per_s", ">=", 20_000.0, "batch submission >= 20,000 jobs/s"),
    ("rss_mb_100k", "<=", 1024.0, "100k queued jobs in <= 1 GiB RSS"),
    ("recovery_healthz_s", "<=", 10.0, "100k queued jobs recovered in <= 10 s"),
)
_HELD = re.compile(r'^schedd_jobs\{queue="[^"]*",state="held"\} ([0-9.e+]+)$', re.M)


def _job(work: Path, **extra: Any) -> dict[str, Any]:
    return {"argv": ["true"], "stdout_path": "/dev/null", "stderr_path": "/dev/null", "workdir": str(work), **extra}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values.

    >>> percentile([3.0, 1.0, 2.0, 4.0], 0.5), percentile([3.0, 1.0, 2.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ---------------------------------------------------------------- schedd


def _wait_finished(d: LocalSchedd, base: int, n: int, stall_s: float) -> tuple[float, int]:
    """Poll until ``n`` more jobs finished, or none did for ``stall_s``: (time seen, lost)."""
    count, seen, changed = base, time.time(), time.monotonic()
    while count - base < n:
        time.sleep(0.1)  # the same 100 ms poll as Slurm's squeue loop
        now = d.finished()
        if now != count:
            count, seen, changed = now, time.time(), time.monotonic()
        elif time.monotonic() - changed > stall_s:
            break
    return seen, n - (count - base)


def _e2e(d: LocalSchedd, work: Path, n: int, array: bool, stall_s: float, **extra: Any) -> Results:
    base = d.finished()
    cpu0 = d.cpu_s()
    t0 = time.time()
    if array:
        d.client.call("POST", "/api/v1/jobs", _job(work, array=f"1-{n}", **extra))
    else:
        for _ in range(n):
            d.client.call("POST", "/api/v1/jobs", _job(work, **extra))
    ts = time.time()
    done, lost = _wait_finished(d, base, n, stall_s)
    cpu1 = d.cpu_s()
    ran = n - lost
    return {
        "jobs_per_s": ran / (done - t0), "submit_live_per_s": n / (ts - t0), "lost": lost,
        "daemon_cpu_ms_per_job": 1000 * (cpu1[0] - cpu0[0]) / max(ran, 1),
        "agents_cpu_ms_per_job": 1000 * (cpu1[1] - cpu0[1]) / max(ran, 1),
        "supervisors_cpu_ms_per_job": 1000 * (cpu1[2] - cpu0[2]) / max(ran, 1),
    }


def _latency(d: LocalSchedd, work: Path, n: int, settle_s: float,
             log: Callable[[str], None]) -> tuple[list[float], list[float]]:
    """Seconds, one job at a time: (decision, exec) latencies; see the module docstring."""
    decisions: list[float] = []
    execs: list[float] = []
    for i in range(n):
        time.sleep(settle_s)  # an idle pool: let the previous job's end settle
        out = work / f"lat.{i}"
        t0 = time.time()
        jid = d.client.call("POST", "/api/v1/jobs", _job(work, argv=["date", "+%s.%N"], stdout_path=str(out)))["job"]["id"]
        end = time.monotonic() + 30
        rec: dict[str, Any] = {}
        stamp = None
        while time.monotonic() < end:
            rec = d.client.call("GET", f"/api/v1/jobs/{jid}")["job"]
            if rec["start_time"] is not None and (stamp := _stamp(out)) is not None:
                break
            time.sleep(0.01)  # the anchor's 10 ms poll
        if rec.get("start_time") is None or stamp is None:
            log(f"schedd: latency job {jid} did not start within 30 s (state {rec.get('state')})")
            continue
        decisions.append(rec["start_time"] - rec["submit_time"])
        execs.append(stamp - t0)
        while rec["state"] != "finished" and time.monotonic() < end:  # idle again before the next
            time.sleep(0.01)
            rec = d.client.call("GET", f"/api/v1/jobs/{jid}")["job"]
    return decisions, execs


def _stamp(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def _rate(n: int, call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return n / (time.perf_counter() - t0)


def _submissions(d: LocalSchedd, work: Path, submits: int, batch: int, qsubs: int) -> Results:
    held = _job(work, hold=True)

    def one_by_one() -> None:
        for _ in range(submits):
            d.client.call("POST", "/api/v1/jobs", held)

    r: Results = {
        "submit_per_s": _rate(submits, one_by_one),
        "batch_submit_per_s": _rate(batch, lambda: d.client.call("POST", "/api/v1/jobs/batch", {"jobs": [held] * batch})),
        "array_submit_per_s": _rate(batch, lambda: d.client.call("POST", "/api/v1/jobs", {**held, "array": f"1-{batch}"})),
    }
    if qsubs:
        r.update(_qsub(d, work, qsubs))
    return r


def _qsub(d: LocalSchedd, work: Path, n: int) -> Results:
    """``n`` sequential ``qsub -h -- true`` processes: a process per submission, as ``sbatch``."""
    argv = [sys.executable, "-m", "schedd.cli.qsub", "-h", "-o", "/dev/null", "-e", "/dev/null", "--", "true"]
    env = {**os.environ, "SCHEDD_URL": d.url}
    t0 = time.perf_counter()
    for _ in range(n):
        out = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            return {"qsub_error": f"{' '.join(argv[2:])}: exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    return {"qsub_per_s": n / (time.perf_counter() - t0)}


def measure_schedd(args: argparse.Namespace, tmp: Path, log: Callable[[str], None]) -> Results:
    """Every schedd number, on a daemon with ``args.agents`` agents (and a second one for recovery)."""
    r: Results = {}
    work = tmp / "work"
    work.mkdir()
    d = LocalSchedd(tmp / "a", args.agents, profile=args.profile, gpus_per_node=args.gpus_per_node)
    try:
        t = d.start()
        log(f"schedd up: ready {t.ready_s:.2f} s, {args.agents} agents up {t.nodes_s:.2f} s (pid {d.pid})")
        warm = _e2e(d, work, 20, False, args.stall)  # warm-up: imports, caches, first launches
        log(f"warm-up: 20 jobs, {warm['lost']} lost")
        if args.latency:
            decisions, execs = _latency(d, work, args.latency, args.settle, log)
            for key, vals in (("start_latency", decisions), ("exec_latency", execs)):
                r[f"{key}_p50_ms"] = 1000 * percentile(vals, 0.5)
                r[f"{key}_p99_ms"] = 1000 * percentile(vals, 0.99)
            r["latency_samples"] = len(execs)
            log(f"latency p50: decision {r['start_latency_p50_ms']:.1f} ms, "
                f"exec {r['exec_latency_p50_ms']:.1f} ms")
        runs: list[tuple[str, bool, dict[str, Any]]] = [("e2e", False, {}), ("e2e_array", True, {})]
        if args.gpus_per_node:  # 1-GPU jobs on the fake GPUs, one request each
            runs.append(("e2e_gpu", False, {"chunks": [{"ncpus": 1, "ngpus": 1}]}))
        for key, array, extra in runs:
            e = _e2e(d, work, args.jobs, array, args.stall, **extra)
            r[f"{key}_jobs_per_s"], r[f"{key}_lost"] = e["jobs_per_s"], e["lost"]
            r[f"{key}_daemon_cpu_ms_per_job"] = e["daemon_cpu_ms_per_job"]
            r[f"{key}_agents_cpu_ms_per_job"] = e["agents_cpu_ms_per_job"]
            r[f"{key}_supervisors_cpu_ms_per_job"] = e["supervisors_cpu_ms_per_job"]
            if key == "e2e":
                r["submit_live_per_s"] = e["submit_live_per_s"]
            log(f"{key}: {e['jobs_per_s']:.1f} jobs/s, {e['lost']} of {args.jobs} lost; "
                f"CPU per job: daemon {e['daemon_cpu_ms_per_job']:.1f} ms, agents {e['agents_cpu_ms_per_job']:.1f} ms, "
                f"supervisor+job {e['supervisors_cpu_ms_per_job']:.1f} ms")
        r.update(_submissions(d, work, args.submits, args.batch, args.qsub))
        log(f"submit: {r['submit_per_s']:.0f}/s one by one, {r['batch_submit_per_s']:.0f}/s batch, "
            f"{r['array_submit_per_s']:.0f}/s array, {r.get('qsub_per_s', math.nan):.0f}/s qsub processes "
            f"{r.get('qsub_error', '')}")
    finally:
        d.stop()
    if args.recovery:
        r.update(_recovery(tmp / "b", work, args.agents, args.recovery, args.batch, log))
    return r


def _recovery(root: Path, work: Path, agents: int, n: int, batch: int, log: Callable[[str], None]) -> Results:
    d = LocalSchedd(root, agents)
    try:
        d.start()
        held = _job(work, hold=True)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            d.client.call("POST", "/api/v1/jobs/batch", {"jobs": [held] * min(batch, n - i)})
        load_s = time.perf_counter() - t0
        rss = d.rss_mb()
        t0 = time.perf_counter()
        d.stop()
        stop_s = time.perf_counter() - t0
        t = d.start()
        held_after = int(sum(float(x) for x in _HELD.findall(d.metrics())))
        loaded = re.findall(r"state loaded: (\d+) jobs in ([0-9.]+) s", d.log.read_text())
        r: Results = {
            "rss_mb_100k": rss, "recovery_jobs": n, "recovery_submit_s": load_s, "recovery_stop_s": stop_s,
            "recovery_ready_s": t.ready_s, "recovery_healthz_s": t.healthz_s, "recovery_nodes_s": t.nodes_s,
            "recovery_held_after": held_after, "recovery_load_s": float(loaded[-1][1]) if loaded else math.nan,
            "rss_mb_after_recovery": d.rss_mb(),
        }
        log(f"recovery: {n} held in {load_s:.1f} s, RSS {rss:.0f} MiB; SIGTERM {stop_s:.1f} s; ready {t.ready_s:.2f} s, "
            f"healthz {t.healthz_s:.2f} s, agents {t.nodes_s:.2f} s; {held_after} held after; RSS {r['rss_mb_after_recovery']:.0f} MiB")
        return r
    finally:
        d.stop()


# ---------------------------------------------------------------- Slurm


def measure_slurm(args: argparse.Namespace, tmp: Path, log: Callable[[str], None]) -> Results:
    s = Slurm(args.slurm_script, log)
    r: Results = {}
    try:
        s.start()
        s.e2e(20, False, 120)  # warm-up
        if args.latency:
            execs, recorded = s.latency(args.latency, args.settle, tmp)
            r["slurm_exec_latency_p50_ms"] = 1000 * percentile(execs, 0.5)
            r["slurm_exec_latency_p99_ms"] = 1000 * percentile(execs, 0.99)
            # Slurm records whole seconds only; its exec latency is the precise start.
            r["slurm_start_latency_p50_ms"] = r["slurm_exec_latency_p50_ms"]
            r["slurm_start_latency_p99_ms"] = r["slurm_exec_latency_p99_ms"]
            r["slurm_recorded_start_latency_p50_s"] = percentile(recorded, 0.5)
            r["slurm_latency_samples"] = len(execs)
            log(f"slurm latency: exec p50 {r['slurm_exec_latency_p50_ms']:.0f} ms, p99 {r['slurm_exec_latency_p99_ms']:.0f} ms")
        for key, array in (("slurm_e2e", False), ("slurm_e2e_array", True)):
            rate, live, left = s.e2e(args.jobs, array, args.slurm_timeout)
            r[f"{key}_jobs_per_s"], r[f"{key}_lost"] = rate, left
            if not array:
                r["slurm_submit_live_per_s"] = live
            log(f"{key}: {rate:.1f} jobs/s ({left} not done at the timeout)")
        r["slurm_submit_per_s"] = s.submit_rate(args.slurm_submits)
        r["slurm_array_submit_per_s"] = s.array_rate(args.batch)
        r["slurm_batch_submit_per_s"] = r["slurm_array_submit_per_s"]  # no multi-job request: the array is its bulk
        log(f"slurm submit: {r['slurm_submit_per_s']:.0f}/s one by one, {r['slurm_array_submit_per_s']:.0f}/s array")
    except (SlurmError, subprocess.TimeoutExpired) as e:
        r["slurm_error"] = str(e)
        log(f"slurm: {e}")
    finally:
        s.stop()
    return r


# ---------------------------------------------------------------- report


def host() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False, cwd=ROOT).stdout.strip()
    except OSError:
        commit = "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.node()} {platform.platform()} {os.cpu_count()} cpus python {platform.python_version()} "
            f"commit {commit or '?'} loadavg {load}")


def targets(r: Results) -> list[tuple[str, float, bool | None]]:
    """(what, value, met) for each target; met is None when not measured."""
    if r.get("slurm_e2e_jobs_per_s"):
        r["e2e_vs_slurm"] = r["e2e_jobs_per_s"] / r["slurm_e2e_jobs_per_s"]
    out: list[tuple[str, float, bool | None]] = []
    for key, op, bound, what in TARGETS:
        v = r.get(key)
        if not isinstance(v, (int, float)) or math.isnan(v):
            out.append((what, math.nan, None))
        else:
            out.append((what, float(v), v >= bound if op == ">=" else v <= bound))
    return out


_ROWS: tuple[tuple[str, ...], ...] = (  # (label, schedd key[, Slurm key; default slurm_ + key])
    ("submissions/s, one request each", "submit_per_s"),
    ("submissions/s, one qsub/sbatch process each", "qsub_per_s", "slurm_submit_per_s"),
    ("submissions/s, one batch (Slurm: array)", "batch_submit_per_s"),
    ("submissions/s, one array", "array_submit_per_s"),
    ("submissions/s while jobs run", "submit_live_per_s"),
    ("end to end, jobs/s (one request each)", "e2e_jobs_per_s"),
    ("  jobs lost (never finished)", "e2e_lost"),
    ("end to end, jobs/s (one array)", "e2e_array_jobs_per_s"),
    ("  jobs lost (never finished)", "e2e_array_lost"),
    ("end to end, jobs/s (1-GPU jobs, fake GPUs)", "e2e_gpu_jobs_per_s", "-"),
    ("  jobs lost (never finished)", "e2e_gpu_lost", "-"),
    ("start latency p50 ms (decision)", "start_latency_p50_ms", "-"),
    ("start latency p99 ms (decision)", "start_latency_p99_ms", "-"),
    ("exec latency p50 ms (job's clock)", "exec_latency_p50_ms"),
    ("exec latency p99 ms (job's clock)", "exec_latency_p99_ms"),
)


def report(r: Results) -> str:
    lines = [f"{'metric':40} {'schedd':>10} {'slurm':>10} {'ratio':>7}"]
    for label, key, *other in _ROWS:
        a, b = r.get(key), r.get(other[0] if other else f"slurm_{key}")
        ratio = a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else math.nan
        lines.append(f"{label:40} {_fmt(a):>10} {_fmt(b):>10} {_fmt(ratio):>7}")
    n = r.get("recovery_jobs", 0)
    for label, key in ((f"RSS MiB with {n:,} held jobs", "rss_mb_100k"), ("restart: s to the ready line", "recovery_ready_s"),
                       ("restart: s to the first GET /healthz", "recovery_healthz_s"),
                       ("restart: s to every agent back", "recovery_nodes_s"), ("RSS MiB after the restart", "rss_mb_after_recovery")):
        if key in r:
            lines.append(f"{label:40} {_fmt(r[key]):>10}")
    if "slurm_error" in r:
        lines.append(f"slurm: {r['slurm_error']}")
    lines.append("targets:")
    for what, value, met in targets(r):
        lines.append(f"  {what:40} {_fmt(value):>10}  {'met' if met else 'NOT met' if met is not None else 'not measured'}")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000, help="end-to-end jobs (default 2,000)")
    ap.add_argument("--agents", type=int, default=4, help="local agents of 64 CPUs (default 4)")
    ap.add_argument("--gpus-per-node", type=int, default=0, metavar="N",
                    help="N fake GPUs per agent, and a third end-to-end run of 1-GPU jobs (default 0: none)")
    ap.add_argument("--vs-slurm", action="store_true", help="also run the same on the local Slurm")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--submits", type=int, default=1000, help="one-request submissions timed (default 1,000)")
    ap.add_argument("--slurm-submits", type=int, default=500, help="sequential sbatch timed (default 500)")
    ap.add_argument("--qsub", type=int, default=200, help="sequential qsub processes timed, 0 = skip (default 200)")
    ap.add_argument("--batch", type=int, default=10_000, help="jobs per batch request and array (default 10,000)")
    ap.add_argument("--latency", type=int, default=50, help="single jobs for the latency percentiles (default 50)")
    ap.add_argument("--settle", type=float, default=0.5, help="idle seconds before each latency job (default 0.5)")
    ap.add_argument("--recovery", type=int, default=100_000, help="held jobs for RSS and restart, 0 = skip (default 100,000)")
    ap.add_argument("--stall", type=float, default=20.0, help="seconds without a finish before jobs count as lost")
    ap.add_argument("--slurm-timeout", type=float, default=900.0, help="upper bound of one Slurm end-to-end run (s)")
    ap.add_argument("--slurm-script", type=Path, default=SCRIPT)
    ap.add_argument("--profile", type=Path, help="run the first daemon under cProfile, stats to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state)")
    args = ap.parse_args(argv)
    if args.jobs < 2 or args.batch < 2:
        ap.error("--jobs and --batch must be >= 2 (an array is X-Y with Y > X)")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="schedd-throughput-"))
    r: Results = {"host": host(), "jobs": args.jobs, "agents": args.agents, "date": time.strftime("%Y-%m-%d")}
    log(f"# {r['host']}  (tmp {tmp})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop what we started
    try:
        r.update(measure_schedd(args, tmp, log))
        if args.vs_slurm:
            r.update(measure_slurm(args, tmp, log))
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    r["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        targets(r)
        print(json.dumps(r))
    else:
        print(f"# {r['host']}")
        print(report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
