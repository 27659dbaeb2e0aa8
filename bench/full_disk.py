"""Full disk and durable acknowledgement: the figures of issue #11's "store failure" part.

Three measurements against ``schedd up`` (1 local agent), as root:

1. **cost of durable ack**: submissions per second, one at a time and from 8
   client threads, now that the answer waits for the commit (compare by running
   this same script on an older checkout: ``PYTHONPATH=OLD python -m bench.full_disk``);
2. **kill -9 right after an answer**: rounds of one-by-one submissions, the
   daemon SIGKILLed on the k-th answer, restarted; acknowledged ids lost;
3. **full state dir**: the state dir on a 3 MiB tmpfs filled by a filler file;
   what a submission gets, what ``qsub`` prints and exits with, the jobs the
   store kept after a kill -9, and how long after the filler is deleted the
   next submission is accepted (no restart).

``python -m bench.full_disk [--submits 300] [--rounds 5]``; skips part 3 unless root.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._daemon import LocalSchedd
from schedd.cli.client import ApiError, Client

BIG = "#!/bin/sh\n# " + "x" * 60_000 + "\ntrue\n"


def _job(work: Path, **extra: Any) -> dict[str, Any]:
    return {"workdir": str(work), "hold": True, **({"argv": ["true"]} if "script" not in extra else {}), **extra}


def submit_rates(root: Path, n: int) -> tuple[float, float]:
    """Submissions per second: one client one at a time, then 8 client threads."""
    d = LocalSchedd(root / "rates", nodes=0)
    d.start()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            d.client.call("POST", "/api/v1/jobs", _job(root))
        serial = n / (time.perf_counter() - t0)

        def worker() -> None:
            c = Client(d.url)
            for _ in range(n // 8):
                c.call("POST", "/api/v1/jobs", _job(root))
            c.close()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return serial, (n // 8 * 8) / (time.perf_counter() - t0)
    finally:
        d.stop()


def kill_rounds(root: Path, rounds: int, per_round: int = 12) -> tuple[int, int]:
    """(acknowledged, lost) over ``rounds`` kill -9s, each right after the k-th answer."""
    d = LocalSchedd(root / "kill", nodes=0)
    acked: list[str] = []
    lost: set[str] = set()
    for rnd in range(rounds + 1):
        d.start()
        present = {str(j["id"]) for j in d.client.call("GET", "/api/v1/jobs?fields=id")["jobs"]}
        lost |= {j for j in acked if j not in present}
        if rnd == rounds:
            break
        k = 1 + (rnd * 5) % per_round
        for _ in range(k):
            acked.append(str(d.client.call("POST", "/api/v1/jobs", _job(root, script=BIG))["job"]["id"]))
        os.kill(d.pid, signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait(30)
        d.proc = None
        d.client.close()
    d.stop()
    return len(acked), len(lost)


def full_disk(root: Path) -> dict[str, Any]:
    """The state dir on a small tmpfs, filled; see the module docstring."""
    state = root / "full" / "state"
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], check=True)
    d = LocalSchedd(root / "full", nodes=1, cpus_per_node=4)
    out: dict[str, Any] = {}
    try:
        d.start()
        gate = root / "gate"
        running = d.client.call("POST", "/api/v1/jobs", {"script": f"touch {root}/started; while [ ! -e {gate} ];"
                                                         " do sleep 0.05; done\n", "workdir": str(root)})["job"]["id"]
        while not (root / "started").exists():
            time.sleep(0.02)  # a poll for a condition
        filler = state / "filler"
        with filler.open("wb", buffering=0) as f:
            for size in (65536, 512):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass
        acked, refused = [], 0
        first: ApiError | None = None
        for _ in range(400):
            try:
                acked.append(str(d.client.call("POST", "/api/v1/jobs", _job(root, script=BIG))["job"]["id"]))
            except ApiError as e:
                first = first or e
                refused += 1
                if refused == 20:
                    break
        out["acked_while_filling"], out["refused"] = len(acked), refused
        out["answer"] = f"{first.status} {first.code}: {first.message}" if first else "none"
        script = root / "job.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        q = subprocess.run([sys.executable, "-m", "schedd.cli.qsub", str(script)], capture_output=True, text=True,
                           env={**os.environ, "SCHEDD_URL": d.url}, cwd=root)
        out["qsub"] = f"exit {q.returncode}: {q.stderr.strip()}"
        out["running_job_state_while_full"] = d.client.call("GET", f"/api/v1/jobs/{running}")["job"]["state"]
        filler.unlink()
        t0 = time.perf_counter()
        while True:
            try:
                acked.append(str(d.client.call("POST", "/api/v1/jobs", _job(root))["job"]["id"]))
                break
            except ApiError:
                time.sleep(0.01)  # a poll for a condition
        out["accepted_again_after_s"] = time.perf_counter() - t0
        gate.touch()
        os.kill(d.pid, signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait(30)
        d.proc = None
        d.client.close()
        d.start()
        jobs = d.client.call("GET", "/api/v1/jobs?finished=1&fields=id")["jobs"]
        present = {str(j["id"]) for j in jobs}
        out["acked_lost_after_kill9"] = len([j for j in acked if j not in present])
        out["jobs_in_store"] = len(present)
        out["jobs_acked_total"] = len(acked) + 1
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.full_disk", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--submits", type=int, default=300, help="submissions timed per mode (default 300)")
    ap.add_argument("--rounds", type=int, default=5, help="kill -9 rounds (default 5)")
    ap.add_argument("--rates-only", action="store_true", help="only part 1 (to alternate with an older checkout)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-full-") as tmp:
        root = Path(tmp)
        serial, parallel = submit_rates(root, args.submits)
        print(f"submissions/s: one at a time {serial:,.0f}; 8 client threads {parallel:,.0f}")
        if args.rates_only:
            return 0
        acked, lost = kill_rounds(root, args.rounds)
        print(f"kill -9 right after an answer: {args.rounds} rounds, {acked} acknowledged, {lost} lost")
        if os.geteuid() == 0:
            for key, value in full_disk(root).items():
                print(f"full disk: {key}: {value:.3f}" if isinstance(value, float) else f"full disk: {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
