"""Replay a workload trace through the simulator and print scheduling metrics.

::

    python -m bench.replay --trace PATH --preset {fcfs,easy,conservative,fairshare}
                           [--policies FILE] [--machine {nodes,pool}] [--nodes N]
                           [--sample LEN --iter N --seed S] [--json]
                           [--dump FILE [--dump-reservations]]

Machine models:

``pool``   the classic literature model, to compare with published numbers:
           P interchangeable processors (P = MaxProcs, else MaxNodes, from the SWF
           header) as one node of P CPUs; jobs in submit order; runtime capped at
           the requested time; requested time = runtime when the trace has none;
           jobs larger than the machine dropped. With ``--preset easy`` this is
           EASY as Mu'alem & Feitelson define it (FCFS order, one reservation).
``nodes``  (default) the trace mapped onto nodes: SWF on MaxNodes nodes of
           MaxProcs/MaxNodes CPUs, bigger jobs as gangs of whole nodes; GPU traces
           on 8-GPU nodes, jobs over 8 GPUs as gangs of 8-GPU chunks. For GPU
           traces ``--nodes`` sets the pool size; by default it is sized so the
           offered load (GPU-seconds / span) is 80 % of the pool.

Metrics: wait = first start - submit; bounded slowdown with tau = 10 s is
``max((wait + run) / max(run, 10), 1)``; utilisation = used resource-seconds /
(capacity x (last end - first submit)), in CPUs for SWF and GPUs for GPU traces.

``--sample LEN --iter N --seed S`` is the RLScheduler protocol (Zhang et al.,
SC'20): N windows of LEN consecutive jobs at random offsets, each replayed on an
empty machine, metrics averaged.

``--dump FILE`` writes the schedule itself, one line per job in submission
order (first start, last start, end, attempts, and every start's time with its
nodes, CPUs, memory and GPUs), so that two versions of the scheduler can be
compared byte for byte (``cmp``): the simulator is deterministic, so equal
dumps mean equal schedules. ``--dump-reservations`` adds one line per cycle: a
digest of that cycle's reservations (job, start, placement) in plan order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.traces import Trace, TraceJob, load
from policies import Backfill, FairShare, Placement, Priority
from schedd.config import load_pipeline
from schedd.errors import ConfigError
from schedd.core.context import Plan
from schedd.core.model import Chunk, Gpu, Job, Node
from schedd.core.model import Placement as Where
from schedd.core.scheduler import Pipeline
from schedd.core.sim import SimJob, Simulator

__all__ = ["Metrics", "main", "pipeline_for", "replay"]

PRESETS = ("fcfs", "easy", "conservative", "fairshare")
GPUS_PER_NODE = 8


def pipeline_for(preset: str, unit: str = "gpus") -> Pipeline:
    """The policy pipeline a preset names; fair-share counts ``unit``-seconds."""
    if preset == "fcfs":
        return Pipeline.of(Placement(), actions=("allocate",))
    if preset == "easy":
        return Pipeline.of(Placement(), Backfill("easy"), actions=("allocate", "backfill"))
    if preset == "conservative":
        return Pipeline.of(Placement(), Backfill("conservative"), actions=("allocate", "backfill"))
    if preset == "fairshare":
        fs = FairShare("gpu_seconds" if unit == "gpus" else "cpu_seconds", half_life_s=86400.0)
        prio = Priority({"fairshare": 10000, "age": 1000})
        return Pipeline.of(fs, prio, Placement(), Backfill("easy"), actions=("allocate", "backfill"))
    raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")


@dataclass(frozen=True)
class Machine:
    nodes: list[Node]
    unit: str  # "cpus" or "gpus": what utilisation counts
    capacity: int


def machine_for(trace: Trace, model: str, nodes: int | None) -> Machine:
    gpu_trace = any(j.gpus for j in trace.jobs)
    if gpu_trace:
        n = nodes or _auto_nodes(trace)
        gpus = tuple(Gpu(i) for i in range(GPUS_PER_NODE))
        made = [Node(f"n{i}", 64, 512 * 1024, gpus) for i in range(n)]
        return Machine(made, "gpus", n * GPUS_PER_NODE)
    procs = trace.max_procs or trace.max_nodes or max(j.procs for j in trace.jobs)
    if model == "pool":
        return Machine([Node("pool", procs, 0)], "cpus", procs)
    n = nodes or trace.max_nodes or procs
    per = max(1, procs // n)
    return Machine([Node(f"n{i}", per, 0) for i in range(n)], "cpus", n * per)


def _auto_nodes(trace: Trace) -> int:
    """Nodes such that the trace's offered GPU load is 80 % of the pool."""
    span = max(1.0, trace.jobs[-1].submit_s - trace.jobs[0].submit_s)
    demand = sum(j.gpus * j.runtime_s for j in trace.jobs) / span
    biggest = max(j.gpus for j in trace.jobs)
    return max(math.ceil(demand / 0.8 / GPUS_PER_NODE), math.ceil(biggest / GPUS_PER_NODE))


def to_sim_jobs(jobs: Sequence[TraceJob], machine: Machine) -> tuple[list[SimJob], int]:
    """Trace records as simulator jobs, and how many were dropped as too large."""
    out, dropped = [], 0
    node = machine.nodes[0]
    for order, tj in enumerate(jobs):
        chunks = _chunks(tj, node, len(machine.nodes))
        if chunks is None:
            dropped += 1
            continue
        requested = tj.requested_s if tj.requested_s and tj.requested_s > 0 else tj.runtime_s
        runtime = min(tj.runtime_s, requested)
        job = Job(
            id=str(tj.id), order=order, owner=tj.user, account=tj.group, chunks=chunks,
            walltime_s=max(requested, 1.0), submit_time=tj.submit_s,
        )
        out.append(SimJob(job, max(runtime, 0.0)))
    return out, dropped


def _chunks(tj: TraceJob, node: Node, n_nodes: int) -> tuple[Chunk, ...] | None:
    if node.ngpus:
        g = tj.gpus
        if g <= node.ngpus:
            return (Chunk(ncpus=0, ngpus=g),)
        count = math.ceil(g / node.ngpus)
        return None if count > n_nodes else (Chunk(ncpus=0, ngpus=node.ngpus, count=count),)
    if tj.procs <= node.cpus:
        return (Chunk(ncpus=tj.procs),)
    count = math.ceil(tj.procs / node.cpus)
    return None if count > n_nodes else (Chunk(ncpus=node.cpus, count=count),)


@dataclass(frozen=True)
class Metrics:
    jobs: int
    dropped: int
    avg_wait_s: float
    p50_wait_s: float
    p95_wait_s: float
    avg_bsld: float
    utilisation: float
    makespan_s: float
    sim_jobs_per_s: float
    cycles: int


class Recorder:
    """An observer that keeps every start's placement (and, optionally, a digest of
    each cycle's reservations) to write the schedule out with :meth:`write`."""

    def __init__(self, reservations: bool = False) -> None:
        self.starts: dict[str, list[tuple[float, Where]]] = {}
        self.cycles: list[str] | None = [] if reservations else None

    def __call__(self, sim: Simulator, plan: Plan) -> None:
        for job, placement in plan.starts:
            self.starts.setdefault(job.id, []).append((sim.now, placement))
        if self.cycles is not None:
            h = hashlib.sha256()
            for job_id, res in plan.reservations.items():
                h.update(f"{job_id} {res.start!r} {_placement(res.placement)} {res.claim}\n".encode())
            self.cycles.append(f"cycle {len(self.cycles)} {sim.now!r} {len(plan.reservations)} {h.hexdigest()}")

    def write(self, sim: Simulator, path: Path) -> None:
        lines = []
        for job_id, out in sim.outcomes.items():
            starts = " ".join(f"{t!r}@{_placement(p)}" for t, p in self.starts.get(job_id, []))
            lines.append(f"{job_id} first={out.first_start!r} last={out.start!r} end={out.end!r} "
                         f"attempts={out.attempts} starts={starts}")
        lines.extend(self.cycles or [])
        path.write_text("\n".join(lines) + "\n")


def _placement(placement: Where) -> str:
    return ",".join(f"{cp.node}:{cp.ncpus}:{cp.mem_mb}:{'.'.join(map(str, cp.gpus))}" for cp in placement)


def replay(
    sim_jobs: list[SimJob], machine: Machine, pipeline: Pipeline, dropped: int = 0,
    recorder: Recorder | None = None, dump: Path | None = None,
) -> Metrics:
    """Run ``sim_jobs`` to completion and measure; with ``recorder``, write the schedule to ``dump``."""
    sim = Simulator(machine.nodes, pipeline, observer=recorder)
    t0 = time.perf_counter()
    sim.run(sim_jobs)
    wall = time.perf_counter() - t0
    if recorder is not None and dump is not None:
        recorder.write(sim, dump)
    waits, bslds, used = [], [], 0.0
    first = min(sj.job.submit_time for sj in sim_jobs)
    last = first
    for out in sim.outcomes.values():
        run = out.end - out.start
        waits.append(out.wait)
        bslds.append(max((out.end - out.submit) / max(run, 10.0), 1.0))
        size = out.job.ngpus if machine.unit == "gpus" else out.job.ncpus
        used += size * run
        last = max(last, out.end)
    span = max(last - first, 1e-9)
    waits.sort()
    return Metrics(
        jobs=len(sim_jobs), dropped=dropped,
        avg_wait_s=statistics.fmean(waits), p50_wait_s=_pct(waits, 0.50), p95_wait_s=_pct(waits, 0.95),
        avg_bsld=statistics.fmean(bslds), utilisation=used / (machine.capacity * span),
        makespan_s=span, sim_jobs_per_s=len(sim_jobs) / wall if wall > 0 else float("inf"),
        cycles=sim.cycles,
    )


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def sampled(sim_jobs: list[SimJob], machine: Machine, pipeline_of: str | Path, length: int, iters: int, seed: int) -> Metrics:
    """The RLScheduler protocol: average over ``iters`` random windows of ``length`` jobs."""
    rng = random.Random(seed)
    runs = []
    for _ in range(iters):
        start = rng.randint(0, max(0, len(sim_jobs) - length))
        window = [_fresh(sj) for sj in sim_jobs[start : start + length]]
        runs.append(replay(window, machine, _pipeline(pipeline_of, machine.unit)))
    return Metrics(
        jobs=sum(r.jobs for r in runs), dropped=0,
        **{f: statistics.fmean(getattr(r, f) for r in runs) for f in (
            "avg_wait_s", "p50_wait_s", "p95_wait_s", "avg_bsld", "utilisation", "makespan_s", "sim_jobs_per_s")},
        cycles=sum(r.cycles for r in runs),
    )


def _fresh(sj: SimJob) -> SimJob:
    from dataclasses import replace

    return SimJob(replace(sj.job), sj.runtime_s)


def _pipeline(spec: str | Path, unit: str) -> Pipeline:
    if isinstance(spec, Path):
        return load_pipeline(spec)
    return pipeline_for(spec, unit)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True, type=Path)
    ap.add_argument("--preset", choices=PRESETS, default="easy")
    ap.add_argument("--policies", type=Path, help="a policies.toml instead of a preset")
    ap.add_argument("--machine", choices=("nodes", "pool"), default="nodes")
    ap.add_argument("--nodes", type=int, help="pool size in nodes (GPU traces; SWF: overrides MaxNodes)")
    ap.add_argument("--sample", type=int, metavar="LEN", help="RLScheduler protocol: window length")
    ap.add_argument("--iter", type=int, default=10, metavar="N")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, help="replay only the first N jobs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dump", type=Path, metavar="FILE", help="write the schedule, one line per job")
    ap.add_argument("--dump-reservations", action="store_true", help="with --dump: a digest per cycle too")
    args = ap.parse_args(argv)
    try:
        trace = load(args.trace)
        machine = machine_for(trace, args.machine, args.nodes)
        spec: str | Path = args.policies or args.preset
        pipeline = _pipeline(spec, machine.unit)
    except (OSError, ValueError, ConfigError) as e:
        print(f"replay: {e}", file=sys.stderr)
        return 2
    jobs = trace.jobs[: args.limit] if args.limit else trace.jobs
    sim_jobs, dropped = to_sim_jobs(jobs, machine)
    if args.sample:
        m = sampled(sim_jobs, machine, spec, args.sample, args.iter, args.seed)
    else:
        recorder = Recorder(args.dump_reservations) if args.dump else None
        m = replay(sim_jobs, machine, pipeline, dropped, recorder, args.dump)
    _print(m, trace, args, machine)
    return 0


def _print(m: Metrics, trace: Trace, args: argparse.Namespace, machine: Machine) -> None:
    label = args.policies.name if args.policies else args.preset
    if args.json:
        print(json.dumps({"trace": trace.name, "preset": label, "machine": args.machine,
                          "capacity": machine.capacity, "unit": machine.unit, **m.__dict__}))
        return
    print(f"trace        {trace.name}  ({machine.capacity} {machine.unit}, {len(machine.nodes)} nodes, model {args.machine})")
    print(f"policy       {label}")
    print(f"jobs         {m.jobs}  (dropped {m.dropped} too large, {trace.skipped} invalid in trace)")
    print(f"wait         avg {m.avg_wait_s:.0f} s  p50 {m.p50_wait_s:.0f} s  p95 {m.p95_wait_s:.0f} s")
    print(f"bounded sld  {m.avg_bsld:.2f}  (tau = 10 s)")
    print(f"utilisation  {m.utilisation:.3f}")
    print(f"makespan     {m.makespan_s:.0f} s")
    print(f"speed        {m.sim_jobs_per_s:.0f} simulated jobs per wall-second ({m.cycles} cycles)")


if __name__ == "__main__":
    raise SystemExit(main())
