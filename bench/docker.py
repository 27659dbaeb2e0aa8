"""Docker job start latency against the process runtime, and against ``docker run``.

    python -m bench.docker [--jobs N] [--settle S] [--burst B] [--json]

Three ways to run the same one-line Python job (the base interpreter printing
``time.time()``; in the container, the same interpreter at the same path, from
the test image ``schedd-test/python:X.Y.Z`` built from this machine's files):

* schedd, a node whose runtime is ``process``;
* schedd, a node whose runtime is ``docker`` (a sibling container per job);
* ``docker run --rm IMAGE python ...`` from a shell: what the engine itself costs.

For each, N jobs one at a time on an idle one-node pool: **exec** = submit to
the job's own first instruction (the time it prints), **done** = submit to
``finished`` seen by a 10 ms poll (schedd) or to ``docker run`` returning. The
docker/process ratio is the price of a container; docker-run vs schedd-docker
is schedd's overhead on top of the engine's. ``--burst B``: B trivial jobs in
one batch on a two-node pool, jobs/s until the last finished, per runtime;
and B ``docker run --rm`` from 8 shells at once, the engine's own ceiling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

from bench._daemon import LocalSchedd
from bench.throughput import percentile
from tests.dockerimages import _base_interpreter, python_image

_CODE = "import time; print(repr(time.time()))"
_POOL = '[[groups]]\nname = "node"\nswitch_user = false\nruntime = "{runtime}"\ndocker_image = "{image}"\n'


def _schedd(tmp: Path, runtime: str, image: str, n: int, settle_s: float) -> tuple[list[float], list[float]]:
    d = LocalSchedd(tmp, nodes=1, cpus_per_node=8, pool=_POOL.format(runtime=runtime, image=image))
    d.start()
    execs, dones = [], []
    try:
        for i in range(n + 1):  # the first is a warm-up: imports, the engine's first create
            time.sleep(settle_s)  # an idle pool: let the previous job's end settle
            out = tmp / f"stamp.{i}"
            body = {"argv": [str(_base_interpreter()), "-c", _CODE], "workdir": str(tmp), "stdout_path": str(out)}
            t0 = time.time()
            jid = d.client.call("POST", "/api/v1/jobs", body)["job"]["id"]
            rec = _finished(d, jid)
            done = time.time()
            if rec["exit_status"] != 0:
                raise RuntimeError(f"{runtime} job {jid} failed: {rec}")
            if i:
                execs.append(float(out.read_text()) - t0)
                dones.append(done - t0)
    finally:
        d.stop()
        d.kill_leftovers()
    return execs, dones


def _burst(tmp: Path, runtime: str, image: str, n: int) -> float:
    """Jobs/s: ``n`` trivial jobs submitted in one batch, until the last has finished."""
    d = LocalSchedd(tmp, nodes=2, cpus_per_node=8, pool=_POOL.format(runtime=runtime, image=image))
    d.start()
    try:
        body = {"argv": [str(_base_interpreter()), "-c", "pass"], "workdir": str(tmp), "stdout_path": "/dev/null",
                "stderr_path": "/dev/null"}
        t0 = time.monotonic()
        ids = d.client.call("POST", "/api/v1/jobs/batch", {"jobs": [body] * n})["ids"]
        for jid in ids:
            if _finished(d, jid, timeout_s=600)["exit_status"] != 0:
                raise RuntimeError(f"{runtime} burst job {jid} failed")
        return n / (time.monotonic() - t0)
    finally:
        d.stop()
        d.kill_leftovers()


def _docker_run_burst(image: str, n: int, parallel: int = 8) -> float:
    """Jobs/s of ``n`` ``docker run --rm`` from ``parallel`` shells at once: the engine's own ceiling."""
    argv = ["docker", "run", "--rm", "--network", "host", image, str(_base_interpreter()), "-c", "pass"]
    t0 = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(argv, capture_output=True, check=True), range(n)))
    return n / (time.monotonic() - t0)


def _finished(d: LocalSchedd, jid: str, timeout_s: float = 60) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        rec: dict[str, Any] = d.client.call("GET", f"/api/v1/jobs/{jid}")["job"]
        if rec["state"] == "finished":
            return rec
        time.sleep(0.01)
    raise RuntimeError(f"job {jid} did not finish within {timeout_s:g} s")


def _docker_run(image: str, n: int) -> tuple[list[float], list[float]]:
    execs, dones = [], []
    for i in range(n + 1):
        t0 = time.time()
        out = subprocess.run(["docker", "run", "--rm", "--network", "host", image, str(_base_interpreter()), "-c",
                              _CODE], capture_output=True, text=True, check=True)
        if i:
            dones.append(time.time() - t0)
            execs.append(float(out.stdout) - t0)
    return execs, dones


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.docker", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--settle", type=float, default=0.2, help="idle seconds before each job")
    p.add_argument("--burst", type=int, default=0, help="also: N jobs in one batch on 2 nodes, jobs/s per runtime")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    image = python_image(docker.from_env())
    r: dict[str, Any] = {"jobs": args.jobs, "image": image}
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as tmp:
        runs = {
            "process": _schedd(Path(tmp) / "process", "process", image, args.jobs, args.settle),
            "docker": _schedd(Path(tmp) / "docker", "docker", image, args.jobs, args.settle),
            "docker_run": _docker_run(image, args.jobs),
        }
        if args.burst:
            for runtime in ("process", "docker"):
                r[f"{runtime}_burst_jobs_per_s"] = round(_burst(Path(tmp) / f"burst-{runtime}", runtime, image,
                                                                args.burst), 1)
            r["docker_run_burst_jobs_per_s"] = round(_docker_run_burst(image, args.burst), 1)
    for name, (execs, dones) in runs.items():
        for what, vals in (("exec", execs), ("done", dones)):
            r[f"{name}_{what}_p50_ms"] = round(1000 * percentile(vals, 0.5), 1)
            r[f"{name}_{what}_p90_ms"] = round(1000 * percentile(vals, 0.9), 1)
    r["docker_vs_process_exec"] = round(r["docker_exec_p50_ms"] / r["process_exec_p50_ms"], 2)
    r["schedd_docker_vs_docker_run_done"] = round(r["docker_done_p50_ms"] / r["docker_run_done_p50_ms"], 2)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        for name in runs:
            print(f"{name:>11}: exec p50 {r[f'{name}_exec_p50_ms']:7.1f} ms  p90 {r[f'{name}_exec_p90_ms']:7.1f} ms"
                  f"   done p50 {r[f'{name}_done_p50_ms']:7.1f} ms  p90 {r[f'{name}_done_p90_ms']:7.1f} ms")
        for runtime in ("process", "docker", "docker_run"):
            if f"{runtime}_burst_jobs_per_s" in r:
                how = "from 8 shells" if runtime == "docker_run" else "in one batch, 2 nodes"
                print(f"{runtime:>11}: {args.burst} jobs {how}: {r[f'{runtime}_burst_jobs_per_s']} jobs/s")
        print(f"docker/process exec p50: {r['docker_vs_process_exec']}x; "
              f"schedd docker/docker run done p50: {r['schedd_docker_vs_docker_run_done']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
