"""How long one scheduling cycle takes as pending jobs and nodes grow.

::

    python -m bench.cycle [--pending N --nodes M] [--repeat R] [--json]

With no ``--pending``/``--nodes`` it runs the whole table: {1k, 10k, 100k} pending
x {16, 256, 1024} nodes of 8 GPUs. The scenario is a busy ML pool in steady
state, seeded: nodes ~95 % full of 1/2/4/8-GPU jobs (a fifth of them in the
preemptable ``low`` queue), pending jobs from 40 users in 8 accounts across the
``1xgpu``/``2xgpu``/``8xgpu``/``low`` queues with some 2-node gangs, and a
decayed usage history. The pipeline is the shipped default: fair-share,
multifactor priority, limits, best-fit placement, EASY backfill with every
pending job considered (no ``max_jobs_tested``) and preemption.

Each measurement: one warm-up cycle, then ``repeat`` cycles on the same
snapshot; min / median / p95 / max wall milliseconds are printed with the host
and commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Sequence

from schedd.config import load_pipeline
from schedd.core.context import Snapshot
from schedd.core.model import Chunk, ChunkPlacement, Gpu, Job, Node, QueueDef, Running
from schedd.core.scheduler import Pipeline, run_cycle

__all__ = ["main", "measure", "scenario"]

QUEUES = {
    "1xgpu": QueueDef("1xgpu", priority=10, tier=1, preempts=("low",)),
    "2xgpu": QueueDef("2xgpu", priority=10, tier=1, preempts=("low",)),
    "8xgpu": QueueDef("8xgpu", priority=20, tier=1, preempts=("low",)),
    "low": QueueDef("low", priority=0, tier=0),
}
_SIZES = [(1, "1xgpu"), (1, "1xgpu"), (2, "2xgpu"), (4, "8xgpu"), (8, "8xgpu")]


def scenario(pending: int, nodes: int, seed: int = 1) -> Snapshot:
    """A seeded steady-state snapshot at ``now = 1e6``."""
    rng = random.Random(seed)
    now = 1e6
    gpus = tuple(Gpu(i, f"GPU-{i}", "H100", 81920) for i in range(8))
    made = [Node(f"n{i:04d}", 64, 1024 * 1024, gpus) for i in range(nodes)]
    running, order = [], 0
    for node in made:
        free = list(range(8))
        while len(free) > 0 and rng.random() < 0.97:
            g = min(rng.choice([1, 2, 4, 8]), len(free))
            take, free = free[:g], free[g:]
            order += 1
            job = _job(rng, order, g, 1, now - rng.uniform(0, 3 * 3600))
            job.queue = "low" if rng.random() < 0.2 else job.queue
            cp = ChunkPlacement(node.name, 8 * g, 64 * 1024 * g, tuple(take))
            running.append(Running(job, (cp,), job.submit_time, job.submit_time + job.walltime_s))
    jobs = []
    for _ in range(pending):
        order += 1
        g, q = rng.choice(_SIZES)
        count = 2 if g == 8 and rng.random() < 0.3 else 1
        job = _job(rng, order, g, count, now - rng.uniform(0, 86400))
        job.queue = "low" if rng.random() < 0.1 else q
        jobs.append(job)
    usage = {(f"acct{a}", f"user{u}"): rng.uniform(0, 1e6) for a in range(8) for u in range(a, 40, 8)}
    return Snapshot(now, jobs, running, made, QUEUES, {}, usage)


def _job(rng: random.Random, order: int, gpus: int, count: int, submit: float) -> Job:
    u = rng.randrange(40)
    chunk = Chunk(ncpus=8 * gpus, mem_mb=64 * 1024 * gpus, ngpus=gpus, count=count)
    return Job(
        id=str(order), order=order, owner=f"user{u}", account=f"acct{u % 8}", queue="1xgpu",
        chunks=(chunk,), walltime_s=rng.choice([1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0]),
        submit_time=submit,
    )


def default_pipeline() -> Pipeline:
    """The shipped ``conf/policies.toml``."""
    return load_pipeline()


def measure(pending: int, nodes: int, repeat: int) -> dict[str, object]:
    snap = scenario(pending, nodes)
    pipeline = default_pipeline()
    plan = run_cycle(snap, pipeline)  # warm-up: fills the per-job priority cache
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        plan = run_cycle(snap, pipeline)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "pending": pending, "nodes": nodes, "running": len(snap.running),
        "min_ms": round(times[0], 2), "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2),
        "max_ms": round(times[-1], 2), "starts": len(plan.starts),
        "preemptions": len(plan.preemptions), "reservations": len(plan.reservations),
        "tested": plan.tested, "truncated": plan.truncated,
    }


def _host() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    return f"{platform.node()} {platform.machine()} python {platform.python_version()} commit {commit or '?'}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cycle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pending", type=int)
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--repeat", type=int, help="cycles measured per point (default 15, 5 at 100k)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pendings = [args.pending] if args.pending else [1_000, 10_000, 100_000]
    nodeses = [args.nodes] if args.nodes else [16, 256, 1024]
    if not args.json:
        print(f"# {_host()}")
        print(f"{'pending':>8} {'nodes':>6} {'running':>8} {'min_ms':>8} {'median_ms':>10} {'p95_ms':>8} {'max_ms':>8} {'starts':>6} {'preempt':>7} {'tested':>7} truncated")
    for p in pendings:
        for n in nodeses:
            r = measure(p, n, args.repeat or (5 if p >= 100_000 else 15))
            if args.json:
                print(json.dumps(r))
            else:
                print(f"{r['pending']:>8} {r['nodes']:>6} {r['running']:>8} {r['min_ms']:>8} {r['median_ms']:>10} {r['p95_ms']:>8} {r['max_ms']:>8} {r['starts']:>6} {r['preemptions']:>7} {r['tested']:>7} {r['truncated']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
