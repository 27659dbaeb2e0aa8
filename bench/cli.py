"""How fast the PBS commands feel: whole processes, side by side with Slurm's.

::

    python -m bench.cli [--queued N] [--repeat R] [--install uv|pip|editable] [--vs-slurm] [--json]

A command is a short-lived process users run in loops, so each measurement
is the wall time of a whole process (fork, interpreter, imports, the request,
the output), the median of ``repeat`` runs, interleaved so that load on this
noisy machine hits every command alike:

* the floors: ``python3 -c pass`` (as the issue names it; on this machine
  ``python3`` is a pyenv shim) and the venv's interpreter itself;
* ``qsub job.sh`` of a one-line script (held, so nothing runs);
* ``qstat`` on an empty queue, and with ``N`` (default 10,000) jobs queued;

The commands are those of a normal install of the client (``--install uv``,
the default, or ``pip``: ``schedd`` alone, not editable, bytecode compiled, in a
fresh venv of this interpreter), whose own ``python -c pass`` is the floor;
``editable`` runs this checkout's ``.venv`` commands instead. pip's console-script
wrapper imports ``re`` itself, uv's does not: the two differ by that.
* with ``--vs-slurm``: ``sbatch`` of the same script and ``squeue`` with
  the same ``N`` jobs pending (one held array), on the local Slurm anchor.

Bulk work: one ``POST /jobs/batch`` of ``N`` jobs and one ``qsub -J 1-N``
array against a loop of single ``sbatch`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._daemon import ROOT, LocalSchedd
from bench._slurm import Slurm, SlurmError

__all__ = ["main"]

BIN = Path(sys.executable).parent


def _wall(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _medians(cmds: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """Median ms per command, the commands interleaved run by run."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for name, run in cmds.items():  # warm-up: page cache, bytecode
        run()
    for _ in range(repeat):
        for name, run in cmds.items():
            times[name].append(run() * 1000)
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def install(how: str, work: Path) -> Path:
    """The bin directory of a client installed ``how`` (see the module's doc)."""
    if how == "editable":
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "schedd" / "cli")], check=False)
        return BIN
    venv = work / f"client-{how}"
    if how == "uv":
        subprocess.run([str(BIN / "uv"), "venv", "-q", "-p", sys.executable, str(venv)], check=True)
        subprocess.run([str(BIN / "uv"), "pip", "install", "-q", "--no-deps", "--compile-bytecode", str(ROOT)],
                       env=dict(os.environ, VIRTUAL_ENV=str(venv)), check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(ROOT)], check=True)
    return venv / "bin"


def measure(queued: int, repeat: int, vs_slurm: bool, how: str = "uv") -> dict[str, float]:
    """Every figure, in a temporary directory removed afterwards (the client's venv, the daemon's state)."""
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        return _measure(work, queued, repeat, vs_slurm, how)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(work: Path, queued: int, repeat: int, vs_slurm: bool, how: str) -> dict[str, float]:
    script = work / "job.sh"
    script.write_text("#PBS -N one\ntrue\n")
    daemon = LocalSchedd(work / "schedd", nodes=1)
    out: dict[str, float] = {}
    try:
        client = install(how, work)
        daemon.start()
        env = dict(os.environ, SCHEDD_URL=daemon.url)
        floor: dict[str, Callable[[], float]] = {
            "python3_pass_ms": lambda: _wall(["python3", "-c", "pass"], env, work),
            "venv_python_pass_ms": lambda: _wall([str(client / "python"), "-c", "pass"], env, work),
        }
        empty = _medians({**floor, "qstat_empty_ms": lambda: _wall([str(client / "qstat")], env, work)}, repeat)
        t0 = time.perf_counter()
        daemon.client.call("POST", "/api/v1/jobs/batch",
                           {"jobs": [{"argv": ["true"], "hold": True, "workdir": str(work)}] * queued})
        out["batch_submit_per_s"] = round(queued / (time.perf_counter() - t0))
        cmds: dict[str, Callable[[], float]] = {
            **floor,
            "qsub_ms": lambda: _wall([str(client / "qsub"), "-h", str(script)], env, work),
            "qstat_ms": lambda: _wall([str(client / "qstat")], env, work),
        }
        out.update(_medians(cmds, repeat))
        out["qstat_empty_ms"] = empty["qstat_empty_ms"]
        out["qstat_empty_floor_ms"] = empty["venv_python_pass_ms"]
        t0 = time.perf_counter()
        subprocess.run([str(client / "qsub"), "-h", "-J", f"1-{queued}", str(script)], env=env, cwd=work,
                       stdout=subprocess.DEVNULL, check=True)
        out["qsub_array_per_s"] = round(queued / (time.perf_counter() - t0))
    finally:
        daemon.stop()
    if vs_slurm:
        out.update(_slurm(work, queued, repeat))
    return out


def _slurm(work: Path, queued: int, repeat: int) -> dict[str, float]:
    slurm = Slurm(log=lambda m: print(m, file=sys.stderr))
    try:
        slurm.start()
    except SlurmError as e:
        print(f"slurm: {e}", file=sys.stderr)
        return {}
    try:
        env = slurm.env
        script = work / "slurm.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        slurm.sbatch("-Q", "-H", "-J", "pending", "-o", "/dev/null", f"--array=1-{queued}", "--wrap=true")
        cmds: dict[str, Callable[[], float]] = {
            "sbatch_ms": lambda: _wall(["sbatch", "-Q", "-H", "-J", "one", "-o", "/dev/null", str(script)], env, work),
            "squeue_ms": lambda: _wall(["squeue"], env, work),
        }
        result = {f"slurm_{k}": v for k, v in _medians(cmds, repeat).items()}
        result["slurm_sbatch_loop_per_s"] = round(1000 / result["slurm_sbatch_ms"], 1)
        slurm.cancel("one")
        slurm.cancel("pending")
        return result
    finally:
        slurm.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, default=10_000, help="jobs queued for qstat/squeue (default 10,000)")
    ap.add_argument("--repeat", type=int, default=15, help="runs per command, medians reported (default 15)")
    ap.add_argument("--install", choices=("uv", "pip", "editable"), default="uv",
                    help="how the measured client is installed (default: uv, not editable)")
    ap.add_argument("--vs-slurm", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.queued, args.repeat, args.vs_slurm, args.install)
    if args.json:
        print(json.dumps(r))
        return 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {platform.node()} {platform.machine()} python {platform.python_version()} loadavg {load}")
    for k, v in r.items():
        print(f"{k:28} {v:>12}")
    bare = r["venv_python_pass_ms"]
    print(f"qsub_ms / the same interpreter's -c pass: {r['qsub_ms'] / bare:.2f}  (target <= 1.3)")
    print(f"qstat_empty_ms / -c pass (measured alongside): {r['qstat_empty_ms'] / r['qstat_empty_floor_ms']:.2f}"
          "  (target <= 1.3)")
    print(f"qstat_ms with {args.queued} queued / -c pass: {r['qstat_ms'] / bare:.2f}  (target <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
