"""Turn a prepared rank (argv, environment, scratch) into a container runner's spec.

Called by :func:`nodeagent.runtime.process.spawn_job` when the rank runs in docker. The
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
* **no way back to root**: no-new-privileges and every capability dropped
  (see :mod:`nodeagent.runtime.runner`), so a setuid binary in the image cannot
  make the job root on the node's network and in its bind mounts;
* **only what the owner can reach is mounted**: the engine mounts as root,
  and the parents of a mount are not in the container, so a work directory
  under a 0700 directory would be handed over whole. :func:`reachable`
  checks every mount as the owner first, in a child with the owner's ids;
* **GPUs**: real ones are nvidia device requests by index, renumbered 0..n-1
  inside (so CUDA_VISIBLE_DEVICES is 0..n-1 there); fake GPUs have no device,
  the job sees the fake indices as a process would;
* **limits**: CPUs (capped at the machine's, which the engine requires),
  memory without extra swap, /dev/shm sized for PyTorch data loaders;
* a script with ``#!`` is executed as is (the kernel reads its interpreter
  line); without, by ``/bin/sh`` — the image may have no bash;
* HOME is the rank's TMPDIR: the submitter's home is not in the image, and
  libraries that cache under ~ need somewhere writable;
* job metrics: the rank's ``SCHEDD_METRICS`` file is in its scratch (so at
  the same path inside), and :func:`copy_helpers` puts ``schedd_report.py``
  there too (the agent's install is not mounted; a copy of 2 KB is simpler
  and safer than one more mount of a root-owned tree). MLflow's tracking URI
  names schedd's TCP address, which the container reaches as the node does
  (host network).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import msgspec

from nodeagent.jobdir import SupervisorSpec, write_atomic
from nodeagent.jobenv import HELPERS
from nodeagent.runtime.engine import LABEL, ContainerSpec

__all__ = ["CONTAINER_SPEC", "HELPERS_DIR", "RESULT", "Unreachable", "copy_helpers", "reachable", "write_spec"]

CONTAINER_SPEC = "container-spec.json"
RESULT = "container.json"
#: The directory of the helpers' copy in a container rank's scratch (on its PYTHONPATH).
HELPERS_DIR = "pyhelpers"
_HELPER_FILES = ("schedd_report.py",)


def copy_helpers(scratch: Path, owner: tuple[int, int] | None) -> str:
    """Copy the job helpers (``schedd_report``) into the rank's fresh scratch; the
    directory to put on its PYTHONPATH. Made with O_EXCL and O_NOFOLLOW (root
    writes in a directory the job's owner owns: nothing they placed there is
    followed or overwritten), then handed to ``owner`` (uid, gid) — it is their
    job's file, read-only. Raises OSError. O(size of the helpers), ~2 KB."""
    where = scratch / HELPERS_DIR
    os.mkdir(where, 0o755)
    for name in _HELPER_FILES:
        data = (Path(HELPERS) / name).read_bytes()
        fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            os.write(fd, data)
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
    if owner is not None:
        os.chown(where, *owner, follow_symlinks=False)
    return str(where)


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
        mounts=sorted({job.workdir, str(scratch), str(cwd)}), owner=job.user,
        mount_roles={str(cwd): "working directory", str(scratch): "scratch", job.workdir: "workdir"},
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


class Unreachable(Exception):
    """A mount the job's owner cannot enter; the message names it, the user and why."""


def reachable(cspec: ContainerSpec) -> dict[str, str]:
    """Each mount's host path as the owner reaches it: ``{mount: real path}``.

    The check runs in a forked child that has dropped to the container's user
    (uid, gid, groups: a process with no privilege), which enters each mount
    with ``chdir`` — search permission on every component and on the directory
    itself, symlinks followed with the owner's rights — and reports the path
    the kernel resolved (``getcwd``). The engine then mounts that real path,
    not the one given: a symlink in it swapped after the check changes
    nothing. What remains is a component of the real path in a directory the
    owner may write being replaced between this check and the mount (tens of
    ms); the engine mounts by path, and only a mount of the checked directory
    itself, not of a path, would close that. Raises :class:`Unreachable`."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its answer is the pipe's content
        os.close(read_end)
        _probe(cspec, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        answer = f.read()
    os.waitpid(pid, 0)
    try:
        found = json.loads(answer)
    except ValueError:
        raise Unreachable(f"could not check the mounts as user {cspec.owner or cspec.user}") from None
    if "error" in found:
        raise Unreachable(str(found["error"]))
    return {str(k): str(v) for k, v in found["real"].items()}


def _probe(cspec: ContainerSpec, out: int) -> None:
    """The child of :func:`reachable`: drop to the container's user, enter each
    mount, write the answer as JSON, exit (never returns into the runner)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # a signal here is not the runner's to forward
        answer: dict[str, object] = {"real": _enter_all(cspec)}
        code = 0
    except Unreachable as exc:
        answer = {"error": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - whatever it is, it is the launch's reason
        answer = {"error": f"could not check the mounts as user {cspec.owner or cspec.user}: {exc!r}"}
    finally:
        with contextlib.suppress(BaseException):
            data = json.dumps(answer).encode()
            while data:
                data = data[os.write(out, data):]
        os._exit(code)


def _enter_all(cspec: ContainerSpec) -> dict[str, str]:
    """As the container's user: each mount's real path, or Unreachable."""
    uid, _, gid = cspec.user.partition(":")
    if os.geteuid() == 0:
        os.setgroups([int(gid), *(int(g) for g in cspec.group_add)])
        os.setgid(int(gid))
        os.setuid(int(uid))  # real, effective and saved: no way back for this child
    who = cspec.owner or f"uid {uid}"
    real = {}
    for path in cspec.mounts:
        what = f"{cspec.mount_roles.get(path, 'mount')} {path}"
        try:
            os.chdir(path)
            real[path] = os.getcwd()
        except PermissionError:
            raise Unreachable(f"{what}: permission denied for user {who}") from None
        except FileNotFoundError:
            raise Unreachable(f"{what}: no such directory") from None
        except OSError as exc:
            raise Unreachable(f"{what}: {exc.strerror or exc} (as user {who})") from None
    return real
