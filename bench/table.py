"""The policy comparison table of ``bench/RESULTS.md``: every preset on every trace.

::

    python -m bench.table [--traces DIR] [--presets fcfs,easy,...] [--machine pool|nodes]
                          [--limit N] [--rlscheduler]

Prints one Markdown row per (trace, preset). ``--rlscheduler`` instead prints the
RLScheduler-protocol rows (10 windows of 1,024 jobs, seed 1) for the Lublin
trace, next to the published numbers.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.replay import PRESETS, machine_for, pipeline_for, replay, sampled, to_sim_jobs
from bench.traces import load

__all__ = ["main"]

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"

#: RLScheduler (Zhang et al., SC'20) Lublin-1 bounded slowdown and utilisation, FCFS.
PUBLISHED = {"fcfs": (7273.77, 0.657), "easy": (235.82, 0.868)}


def _files(root: Path) -> list[Path]:
    swf = sorted(root.glob("*.swf.gz"))
    return [*swf, root / "philly_jobs_pollux.csv.gz"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.table")
    ap.add_argument("--traces", type=Path, default=TRACES)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--machine", choices=("nodes", "pool"), default="pool")
    ap.add_argument("--limit", type=int, help="first N jobs of each trace")
    ap.add_argument("--only", help="only traces whose file name contains this")
    ap.add_argument("--exclude", help="skip traces whose file name contains this")
    ap.add_argument("--rlscheduler", action="store_true")
    args = ap.parse_args(argv)
    if args.rlscheduler:
        return _rlscheduler(args.traces / "lublin_256.swf.gz")
    print("| trace | machine | preset | jobs | avg wait s | p50 wait s | p95 wait s | avg bsld | util | makespan s | sim jobs/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in _files(args.traces):
        if (args.only and args.only not in path.name) or (args.exclude and args.exclude in path.name):
            continue
        trace = load(path)
        machine = machine_for(trace, args.machine, None)
        jobs = trace.jobs[: args.limit] if args.limit else trace.jobs
        for preset in args.presets.split(","):
            sim_jobs, dropped = to_sim_jobs(jobs, machine)
            m = replay(sim_jobs, machine, pipeline_for(preset, machine.unit), dropped)
            print(
                f"| {trace.name} | {args.machine if machine.unit == 'cpus' else 'nodes'} | {preset} | {m.jobs} | {m.avg_wait_s:.0f} | {m.p50_wait_s:.0f} | "
                f"{m.p95_wait_s:.0f} | {m.avg_bsld:.2f} | {m.utilisation:.3f} | {m.makespan_s:.0f} | "
                f"{m.sim_jobs_per_s:.0f} |",
                flush=True,
            )
    return 0


def _rlscheduler(path: Path) -> int:
    trace = load(path)
    machine = machine_for(trace, "pool", None)
    sim_jobs, _ = to_sim_jobs(trace.jobs, machine)
    print("| Lublin-1 (lublin_256), 10 x 1024 jobs, seed 1 | ours bsld | published bsld | ours util | published util |")
    print("|---|---|---|---|---|")
    for preset, label in (("fcfs", "FCFS, no backfilling"), ("easy", "FCFS + EASY backfilling")):
        m = sampled(sim_jobs, machine, preset, 1024, 10, 1)
        bsld, util = PUBLISHED[preset]
        print(f"| {label} | {m.avg_bsld:.2f} | {bsld} | {m.utilisation:.3f} | {util} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
