"""The Slurm side of ``bench.throughput``: the same measurements on the local
single-host Slurm that ``../shared/anchors/slurm.sh`` starts (Debian's 22.05,
the anchor's tuned ``fast`` profile, one node of 64 CPUs), driven the way a
user drives it: one ``sbatch`` process per submission, ``squeue`` to watch.

Slurm keeps no sub-second times without accounting (the anchor runs none), so
its start latency is taken from the job's own clock (``date +%s.%N``), exactly
as for schedd's exec latency; its recorded ``SubmitTime``/``StartTime`` have
whole-second resolution and are reported as such.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bench._daemon import ROOT

__all__ = ["SCRIPT", "Slurm", "SlurmError"]

SCRIPT = ROOT.parent / "shared" / "anchors" / "slurm.sh"
_CONF = re.compile(r"^export SLURM_CONF=(\S+)$", re.M)


class SlurmError(Exception):
    """Slurm could not be started or did not answer; the message says what it printed."""


class Slurm:
    def __init__(self, script: Path = SCRIPT, log: Callable[[str], None] = print) -> None:
        self.script = script
        self.env = dict(os.environ)
        self.log = log
        self.started = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """``slurm.sh start`` (installs Debian's packages if missing), then wait for the node."""
        if not self.script.exists():
            raise SlurmError(f"{self.script} not found")
        out = subprocess.run(["bash", str(self.script), "start"], capture_output=True, text=True, timeout=900, check=False)
        m = _CONF.search(out.stdout)
        if out.returncode != 0 or m is None:
            raise SlurmError(f"`slurm.sh start` exited {out.returncode}: {(out.stdout + out.stderr).strip()[-2000:]}")
        self.started = True
        self.env["SLURM_CONF"] = m[1]
        self.log(f"slurm: {self._run('sinfo', '-h', '-o', '%N %c CPUs %T').strip()} ({self._run('sbatch', '--version').strip()})")

    def stop(self) -> None:
        if self.started:
            subprocess.run(["bash", str(self.script), "stop"], capture_output=True, text=True, timeout=120, check=False)
            self.started = False

    def _run(self, *argv: str, check: bool = True) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=120, check=False)
        if check and out.returncode != 0:
            raise SlurmError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def sbatch(self, *args: str) -> str:
        return self._run("sbatch", "--parsable", *args).strip()

    def queue_len(self) -> int:
        return len(self._run("squeue", "-h", "-o", "%i", check=False).split())

    def wait_empty(self, timeout_s: float, poll_s: float = 0.1) -> float | None:
        """Poll ``squeue`` until no job is left; the time it was seen empty, None on timeout."""
        end = time.monotonic() + timeout_s
        while self.queue_len() > 0:
            if time.monotonic() > end:
                return None
            time.sleep(poll_s)  # the anchor's POLL: a poll interval, not a guess at timing
        return time.time()

    def cancel(self, name: str) -> None:
        self._run("scancel", "-n", name, check=False)
        if self.wait_empty(120) is None:
            self.log(f"slurm: jobs named {name} still queued after scancel")

    # ------------------------------------------------------------ measurements

    def submit_rate(self, n: int) -> float:
        """``n`` sequential ``sbatch -H --wrap=true`` (held: pure submission), per second."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.sbatch("-Q", "-H", "-J", "held", "-o", "/dev/null", "--wrap=true")
        rate = n / (time.perf_counter() - t0)
        self.cancel("held")
        return rate

    def array_rate(self, n: int) -> float:
        """One ``sbatch -H --array=1-n``: tasks per second of that call."""
        t0 = time.perf_counter()
        self.sbatch("-Q", "-H", "-J", "heldarr", "-o", "/dev/null", f"--array=1-{n}", "--wrap=true")
        rate = n / (time.perf_counter() - t0)
        self.cancel("heldarr")
        return rate

    def e2e(self, n: int, array: bool, timeout_s: float) -> tuple[float, float, int]:
        """``n`` jobs of ``true``, submitted one ``sbatch`` each (or one array), until the queue
        is empty: (jobs/s, submit-phase submissions/s, jobs not done at the timeout)."""
        self._run("sdiag", "-r", check=False)
        t0 = time.time()
        if array:
            self.sbatch("-Q", "-J", "e2e", "-o", "/dev/null", f"--array=1-{n}", "--wrap=true")
        else:
            for _ in range(n):
                self.sbatch("-Q", "-J", "e2e", "-o", "/dev/null", "--wrap=true")
        ts = time.time()
        done = self.wait_empty(timeout_s)
        left = 0
        if done is None:
            left = self.queue_len()
            self.cancel("e2e")
            done = time.time()
        return (n - left) / (done - t0), n / (ts - t0), left

    def latency(self, n: int, settle_s: float, work: Path) -> tuple[list[float], list[float]]:
        """``n`` single jobs on an idle cluster: (exec latency s from the job's clock,
        recorded StartTime - SubmitTime s at Slurm's one-second resolution)."""
        execs: list[float] = []
        recorded: list[float] = []
        for i in range(n):
            self.wait_empty(60)
            time.sleep(settle_s)  # an idle cluster: let periodic work settle, as the anchor does
            out = work / f"slurm-lat.{i}"
            out.unlink(missing_ok=True)
            t0 = time.time()
            jid = self.sbatch("-J", "lat", "-o", "/dev/null", f"--wrap=date +%s.%N > {out}")
            end = time.monotonic() + 30
            while time.monotonic() < end:
                st = self._run("squeue", "-h", "-j", jid, "-t", "all", "-o", "%T", check=False).strip()
                if st in ("COMPLETED", "FAILED", ""):
                    break
                time.sleep(0.01)  # the anchor's 10 ms squeue poll
            show = self._run("scontrol", "show", "job", "-o", jid, check=False)
            sub, start = _field(show, "SubmitTime"), _field(show, "StartTime")
            if sub is not None and start is not None:
                recorded.append(start - sub)
            try:
                execs.append(float(out.read_text()) - t0)
            except (OSError, ValueError):
                self.log(f"slurm: latency job {jid} left no start time")
        return execs, recorded


def _field(show: str, key: str) -> float | None:
    m = re.search(rf"\b{key}=(\S+)", show)
    if m is None:
        return None
    try:
        return datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None
