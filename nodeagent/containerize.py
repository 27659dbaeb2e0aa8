"""Turn a prepared rank (argv, environment, scratch) into a container runner's spec.

Called by :func:`nodeagent.spawn.spawn_job` when the rank runs in docker. The
choices, and why:

* **same paths inside and out**: the work directory and the rank's scratch
  (TMPDIR, PBS_NODEFILE, the script, a rebuilt environment's checkout) are
  bind-mounted at their host paths, so every path schedd hands the job is
  valid inside the container and output lands where ``qstat -f`` says;
* **host network**: ranks of a gang reach MASTER_ADDR:MASTER_PORT as processes
  do (NCCL wants it too), no port mapping to keep;
* **the job's user**: the container runs as the owner's uid:gid (with their
  groups) — or the agent's own ids — never as the image's root, so files in
  the work directory belong to the user;
* **GPUs**: real ones are nvidia device requests by index, renumbered 0..n-1
  inside (so CUDA_VISIBLE_DEVICES is 0..n-1 there); fake GPUs have no device,
  the job sees the fake indices as a process would;
* **limits**: CPUs (capped at the machine's, which the engine requires),
  memory without extra swap, /dev/shm sized for PyTorch data loaders;
* a script with ``#!`` is executed as is (the kernel reads its interpreter
  line); without, by ``/bin/sh`` — the image may have no bash;
* HOME is the rank's TMPDIR: the submitter's home is not in the image, and
  libraries that cache under ~ need somewhere writable.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from nodeagent.dockerrt import LABEL, ContainerSpec
from nodeagent.jobdir import SupervisorSpec, write_atomic

__all__ = ["CONTAINER_SPEC", "RESULT", "write_spec"]

CONTAINER_SPEC = "container-spec.json"
RESULT = "container.json"


def write_spec(jobdir: Path, spec: SupervisorSpec, image: str, argv: list[str], env: dict[str, str],
               cwd: Path, scratch: Path, ids: tuple[int, int, list[int]] | None) -> Path:
    """Write the rank's :class:`ContainerSpec` for its runner; the file's path.

    ``argv``/``env``/``cwd``: the job as it would run as a process; ``ids``:
    (uid, gid, groups) of the job's user, None for the agent's own."""
    launch = spec.launch
    job = launch.spec
    env = dict(env)
    prefix = f"{env['VIRTUAL_ENV']}/bin" if job.env_spec is not None and "VIRTUAL_ENV" in env else ""
    env.pop("PATH", None)  # the image's PATH (plus the venv's) applies, not the host's
    env["HOME"] = env.get("TMPDIR", "/tmp")
    gpu_ids = [str(g) for g in job.gpus] if spec.docker_gpus else []
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpu_ids)))
    uid, gid, groups = ids if ids is not None else (os.getuid(), os.getgid(), [])
    if job.script is not None:
        command = [argv[-1]] if job.script.startswith("#!") else ["/bin/sh", argv[-1]]
    else:
        command = argv
    cspec = ContainerSpec(
        name=spec.container(), image=image,
        command=command, env=env, user=f"{uid}:{gid}", workdir=str(cwd),
        mounts=sorted({job.workdir, str(scratch), str(cwd)}),
        labels={f"{LABEL}.node": spec.node, f"{LABEL}.job": job.job_id, f"{LABEL}.attempt": str(launch.attempt),
                f"{LABEL}.rank": str(launch.rank), f"{LABEL}.owner": job.user,
                f"{LABEL}.gpus": ",".join(str(g) for g in job.gpus), f"{LABEL}.jobs": str(jobdir.parent)},
        result_path=str(jobdir / RESULT), host=spec.docker_host, group_add=[str(g) for g in groups if g != gid],
        gpu_ids=gpu_ids, nano_cpus=min(job.ncpus, os.cpu_count() or 1) * 10**9 if job.ncpus else 0,
        mem_mb=job.mem_mb, shm_mb=max(64, job.mem_mb // 2), path_prefix=prefix,
    )
    path = jobdir / CONTAINER_SPEC
    write_atomic(path, msgspec.json.encode(cspec))
    return path
