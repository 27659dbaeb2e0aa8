"""What a job rank's start and end cost with cgroups and without.

::

    python -m bench.enforcement [--ranks N] [--rounds R]

Each rank runs ``true`` under a real supervisor forked the way the agent's
forkserver forks one (``nodeagent.supervisor.run`` in a child that has
already imported it), one rank at a time, waiting for its ``exit.json``.
Rounds alternate the two modes — ``proctree`` (RSS sampling and the process
tree) and ``cgroup`` (this node's :func:`nodeagent.cgroups.detect` layout:
groups made, limits written, the fork inside them, the groups removed) — so
that a loaded machine's drift hits both alike. Printed per mode: the median
and p90 wall time per rank (fork to exit recorded) and the CPU time per rank
of the supervisor and its job together (``RUSAGE_CHILDREN``). Needs root (or a
delegated cgroup) for the cgroup mode.
"""

from __future__ import annotations

import argparse
import getpass
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from nodeagent import cgroups, proctree, supervisor
from nodeagent.jobdir import SPEC, SupervisorSpec, write_record
from schedd.protocol import Launch, LaunchSpec


def _launch(tmp: Path, n: int) -> Launch:
    spec = LaunchSpec(
        job_id=f"{n}.bench", name="bench", user=getpass.getuser(), queue="batch", workdir=str(tmp),
        stdout_path=os.devnull, stderr_path=os.devnull, walltime_s=60.0, ncpus=1, mem_mb=512, gpus=[],
        kill_delay_s=1.0, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, argv=["true"],
    )
    return Launch(job_id=spec.job_id, attempt=0, rank=0, spec=spec)


def _one(tmp: Path, n: int, layout: cgroups.Layout | None) -> float:
    """One rank start to end; its wall seconds."""
    jobdir = tmp / "jobs" / f"{n}.bench.0.0"
    jobdir.mkdir(parents=True)
    spec = SupervisorSpec(launch=_launch(tmp, n), cookie=secrets.token_hex(8), node="bench",
                          switch_user=False, cgroups=layout)
    write_record(jobdir / SPEC, spec)
    log = os.open(jobdir / "supervisor.log", os.O_WRONLY | os.O_CREAT, 0o644)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # what nodeagent.forkserver's child does
        code = 1
        try:
            os.setsid()
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.environ[proctree.COOKIE_ENV] = spec.cookie
            code = supervisor.run(jobdir, None)
        finally:
            os._exit(code)
    os.close(log)
    os.waitpid(pid, 0)
    took = time.perf_counter() - t0
    if not (jobdir / "exit.json").exists():
        sys.exit(f"rank {n} recorded no exit: {(jobdir / 'supervisor.log').read_text()}")
    return took


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.enforcement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=100, help="ranks per round (default 100)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per mode, alternating (default 4)")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.INFO)  # the supervisors' log lines go to their files
    with tempfile.TemporaryDirectory(prefix="bench-enforce-") as tmp_s:
        tmp = Path(tmp_s)
        layout = cgroups.detect("bench", tmp / "state", "cgroup")
        assert layout is not None
        walls: dict[str, list[float]] = {"proctree": [], layout.mode: []}
        cpus: dict[str, float] = {"proctree": 0.0, layout.mode: 0.0}
        n = 0
        for r in range(args.rounds * 2):
            mode, lay = ("proctree", None) if r % 2 == 0 else (layout.mode, layout)
            before = _cpu()
            for _ in range(args.ranks):
                walls[mode].append(_one(tmp, n, lay))
                n += 1
            cpus[mode] += _cpu() - before
        total_ops = args.ranks * args.rounds
        ops: dict[str, list[float]] = {layout.mode: [], "the same without the v1 cpu controller": []}
        lighter = cgroups.Layout(layout.mode, layout.v2, layout.v2_controllers,
                                 {c: p for c, p in layout.v1.items() if c != "cpu"})
        for r in range(args.rounds * 2):  # alternating, as above
            which, lay = (layout.mode, layout) if r % 2 == 0 else ("the same without the v1 cpu controller", lighter)
            ops[which] += _group_ops(lay, args.ranks, r)
        cgroups.remove_agent_group(layout)
    total = args.ranks * args.rounds
    print(f"{total} ranks per mode ({args.rounds} rounds of {args.ranks}, alternating), `true` as the job")
    print("| enforcement | wall ms/rank median | p90 | CPU ms/rank (supervisor + job) |")
    print("| --- | ---: | ---: | ---: |")
    for mode, xs in walls.items():
        q = statistics.quantiles(xs, n=10)
        print(f"| {mode} | {statistics.median(xs) * 1e3:.2f} | {q[8] * 1e3:.2f} | {cpus[mode] / total * 1e3:.2f} |")
    print(f"\nthe cgroup work alone (create with limits, watch, enter and leave, read, remove), {total_ops} times:")
    print("| layout | ms median | p90 |")
    print("| --- | ---: | ---: |")
    for which, xs in ops.items():
        q = statistics.quantiles(xs, n=10)
        print(f"| {which} | {statistics.median(xs) * 1e3:.2f} | {q[8] * 1e3:.2f} |")
    return 0


def _group_ops(layout: cgroups.Layout, times: int, round_: int) -> list[float]:
    """Seconds of a rank's cgroup work without the rank: what the cgroup mode adds."""
    out = []
    for i in range(times):
        t0 = time.perf_counter()
        group = cgroups.RankGroup.create(layout, f"ops-{round_}-{i}", 512, 1)
        fd = group.watch()
        with group.enter():
            pass
        group.oom_kills()
        group.peak_mb()
        group.remove()
        if fd is not None:
            os.close(fd)
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    sys.exit(main())
