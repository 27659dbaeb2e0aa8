"""What one job rank costs on a node, without the daemon: the agent's launch path alone.

::

    python -m bench.ranks [--ranks N] [--dir DIR] [--cgroups] [--json]

A ``JobTable`` (the agent's table of ranks) in a fresh state directory under
``DIR`` launches ``N`` ranks of the script ``true`` at once, each through the
forkserver, a forked supervisor and the job's shell, and acknowledges each
exit as schedd would. Printed: ranks per second, and the CPU each part spent
per rank — the table (this process: the agent's share), the forkserver's forks,
the supervisors (the forkserver's reaped children, less their jobs) and the jobs
(each exit's ``cpu_s``: the supervisor's reaped children). ``--dir`` picks the filesystem the rank directories are on (the
agent's ``--run-dir``: ``/dev/shm`` is a tmpfs); ``--cgroups`` gives each rank
its groups as an agent with ``--enforcement auto`` does (root only).
Run it from the tree to measure; compare trees in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from bench._daemon import tree_cpu_s
from nodeagent import cgroups
from nodeagent.jobs import JobTable, RankKey
from schedd.protocol import Exited, Launch, LaunchSpec

__all__ = ["main"]


@functools.cache
def _user() -> str:
    """This process's user, looked up once: building a Launch is schedd's work, and
    counted in the agent's column it was a quarter of it (psutil, per rank)."""
    return psutil.Process().username()


def _launch(workdir: Path, i: int) -> Launch:
    wd = str(workdir)
    spec = LaunchSpec(
        job_id=f"{i}.bench", script="true", name="rank", user=_user(), queue="batch",
        workdir=wd, stdout_path=f"{wd}/{i}.o", stderr_path=f"{wd}/{i}.e",
        walltime_s=60.0, ncpus=1, mem_mb=0, gpus=[], kill_delay_s=0.5, env={"PATH": "/usr/bin:/bin"},
    )
    return Launch(job_id=f"{i}.bench", attempt=0, rank=0, spec=spec)


async def _until_exits(table: JobTable, n: int) -> float:
    """Acknowledge ``n`` exits; the CPU seconds their jobs used (each supervisor
    reports its reaped children's, the job's, in the exit)."""
    done, job_cpu = 0, 0.0
    while done < n:
        event = await table.events.get()
        if isinstance(event, Exited):
            table.ack(RankKey(event.job_id, event.attempt, event.rank))
            done, job_cpu = done + 1, job_cpu + event.cpu_s
    return job_cpu


def _cpu(forkserver: psutil.Process) -> tuple[float, float, float]:
    """(this process, the forkserver, its supervisors with their jobs): the
    supervisors it reaped, and the live ones (a supervisor serves rank after rank)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    fs = forkserver.cpu_times()
    own = fs.user + fs.system
    return me.ru_utime + me.ru_stime, own, tree_cpu_s(forkserver) - own


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine spent (every process and the kernel's own
    threads: a cgroup's teardown runs in kernel workers no process is charged)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq)


async def _launch_all(table: JobTable, tmp: Path, ranks: int, inflight: int) -> float:
    """Launch ranks 1..ranks, at most ``inflight`` at a time (0: all at once); the jobs' CPU seconds."""
    if not inflight:
        for i in range(1, ranks + 1):
            table.launch(_launch(tmp, i))
        return await _until_exits(table, ranks)
    job, sent, done = 0.0, 0, 0
    while done < ranks:
        while sent < ranks and sent - done < inflight:
            sent += 1
            table.launch(_launch(tmp, sent))
        job += await _until_exits(table, 1)
        done += 1
    return job


async def run(ranks: int, base: Path, use_cgroups: bool, inflight: int = 0) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ranks-", dir=base))
    layout = cgroups.detect("bench-ranks", tmp / "state", "auto") if use_cgroups else None
    table = JobTable(tmp / "state", node="n1", switch_user=False, cgroups=layout)
    try:
        await table.open()
        table.launch(_launch(tmp, 0))  # the forkserver starts; not counted
        await _until_exits(table, 1)
        assert table.forkserver.proc is not None
        server = psutil.Process(table.forkserver.proc)
        before, t0, m0 = _cpu(server), time.perf_counter(), _machine_cpu_s()
        job = await _launch_all(table, tmp, ranks, inflight) * 1000 / ranks
        wall, after, m1 = time.perf_counter() - t0, _cpu(server), _machine_cpu_s()
        agent, forks, supervised = ((b - a) * 1000 / ranks for a, b in zip(before, after))
        return {"ranks": ranks, "ranks_per_s": round(ranks / wall, 1), "agent_cpu_ms": round(agent, 2),
                "forkserver_cpu_ms": round(forks, 2), "supervisor_cpu_ms": round(supervised - job, 2),
                "job_cpu_ms": round(job, 2), "total_cpu_ms": round(agent + forks + supervised, 2),
                "machine_cpu_ms": round((m1 - m0) * 1000 / ranks, 2)}
    finally:
        await table.close()
        if layout is not None:
            cgroups.remove_agent_group(layout)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ranks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=300, help="ranks launched at once (default 300)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the rank directories go")
    ap.add_argument("--inflight", type=int, default=0,
                    help="at most this many ranks at a time, the next launched as one ends (default 0: all at once)")
    ap.add_argument("--cgroups", action="store_true", help="a cgroup per rank (root)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = asyncio.run(run(args.ranks, args.dir, args.cgroups, args.inflight))
    if args.json:
        print(json.dumps({**result, "dir": str(args.dir), "cgroups": args.cgroups, "tree": os.getcwd()}))
    else:
        print(f"{result['ranks_per_s']:.0f} ranks/s; CPU ms per rank: agent {result['agent_cpu_ms']:.2f}, "
              f"forkserver {result['forkserver_cpu_ms']:.2f}, supervisor {result['supervisor_cpu_ms']:.2f}, "
              f"job {result['job_cpu_ms']:.2f}, total {result['total_cpu_ms']:.2f}; "
              f"the machine {result['machine_cpu_ms']:.2f}  "
              f"({args.dir}, cgroups {'on' if args.cgroups else 'off'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
