"""The docker runtime's shared parts: what a rank's container is, and the engine calls
that outlive its runner (kill, remove, find orphans).

A rank that runs in docker still has its supervisor (walltime, signals, the
exit record; see :mod:`nodeagent.supervisor`); the job's top process is then a
*runner* (:mod:`nodeagent.runtime.runner`), which creates the container, copies its
output into the PBS files and forwards signals to it — as ``docker run`` does
for a shell. What the runner cannot do once SIGKILLed is done here, by name:
the supervisor's SIGKILL escalation kills the container too, and whoever
records the exit removes it. Containers carry labels (``schedd.node``,
``schedd.job``, ``schedd.attempt``, ``schedd.rank``) so an agent that restarts
finds the containers of ranks it no longer knows and removes them.

The ``docker`` SDK is imported on first use only: a node that never runs a
container never pays for it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import docker

__all__ = ["CgroupUsage", "ContainerResult", "ContainerSpec", "EngineError", "LABEL", "cgroup_usage", "exists", "client", "container_name", "kill", "orphans", "remove"]

log = logging.getLogger("nodeagent.runtime.engine")

#: Prefix of every label schedd puts on a container.
LABEL = "schedd"
#: Engine API timeout (s): every call here is a short one.
_TIMEOUT_S = 30


class ContainerSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Everything the runner needs to create and follow one rank's container."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    user: str  # "uid:gid"
    workdir: str
    mounts: list[str]  # host paths bind-mounted at the same path, read-write
    labels: dict[str, str]
    result_path: str  # where the runner writes its ContainerResult
    host: str = ""  # engine URL; "" = DOCKER_HOST or the default socket
    group_add: list[str] = []
    #: GPUs to request from the nvidia runtime (ids or uuids); none when the
    #: node's GPUs are fake (there is no device to hand over)
    gpu_ids: list[str] = []
    nano_cpus: int = 0
    mem_mb: int = 0
    shm_mb: int = 64
    #: prepended to the image's PATH (a rebuilt environment's venv)
    path_prefix: str = ""
    #: the job's owner (a user name), named when a mount is out of their reach
    owner: str = ""
    #: what each mount is ("workdir", "scratch"...), for that message
    mount_roles: dict[str, str] = {}


class ContainerResult(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How the container ended, written by the runner before it exits."""

    container_id: str = ""
    started: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    peak_mem_mb: int = 0
    cpu_s: float = 0.0  # the cgroup's CPU time at the last sample (<= 0.2 s before the end)
    error: str = ""  # could not create or start it: the launch failure's reason


class CgroupUsage(msgspec.Struct, frozen=True):
    """A container's cgroup counters: memory now (anonymous, like RSS), the cgroup's
    memory high-water mark (page cache included), CPU seconds used."""

    mem_bytes: int
    peak_bytes: int
    cpu_s: float


def cgroup_usage(container_id: str) -> CgroupUsage | None:
    """Read the container's cgroup (v1 or v2, cgroupfs or systemd driver); None when
    it is gone (the engine removes it as the container ends) or unreadable.

    >>> cgroup_usage("0" * 64) is None
    True
    """
    cid = container_id
    try:
        v1 = f"/sys/fs/cgroup/memory/docker/{cid}"
        if os.path.isdir(v1):
            stat = _keyed(f"{v1}/memory.stat")
            cpu_ns = int(_read(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage"))
            return CgroupUsage(stat.get("rss", 0) + stat.get("rss_huge", 0),
                               int(_read(f"{v1}/memory.max_usage_in_bytes")), cpu_ns / 1e9)
        for v2 in (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope", f"/sys/fs/cgroup/docker/{cid}"):
            if os.path.isdir(v2):
                stat = _keyed(f"{v2}/memory.stat")
                peak = _read(f"{v2}/memory.peak") if os.path.exists(f"{v2}/memory.peak") else _read(f"{v2}/memory.current")
                return CgroupUsage(stat.get("anon", 0), int(peak), _keyed(f"{v2}/cpu.stat").get("usage_usec", 0) / 1e6)
    except (OSError, ValueError):
        return None
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _keyed(path: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat)."""
    return {k: int(v) for k, v in (line.split() for line in _read(path).splitlines() if line.strip())}


def container_name(node: str, job_id: str, attempt: int, rank: int) -> str:
    """A docker-valid, unique name per rank attempt.

    >>> container_name("node01", "17[3].srv", 2, 0)
    'schedd-node01-17_3_.srv-a2-r0'
    """
    return "schedd-" + re.sub(r"[^a-zA-Z0-9_.-]", "_", f"{node}-{job_id}-a{attempt}-r{rank}")


class EngineError(Exception):
    """The docker engine cannot be reached; the message says where it was looked for."""


def client(host: str = "") -> docker.DockerClient:
    """An engine client: ``host``, else DOCKER_HOST, else the default socket."""
    import docker

    try:
        if host:
            return docker.DockerClient(base_url=host, timeout=_TIMEOUT_S)
        return docker.from_env(timeout=_TIMEOUT_S)
    except docker.errors.DockerException as exc:
        where = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        raise EngineError(f"cannot reach the docker engine at {where}: {exc}") from None


def exists(host: str, name: str) -> bool:
    """The container is there (running or not); False too when the engine is unreachable."""
    return _on_container("inspect", host, name, lambda api: api.inspect_container(name))


def kill(host: str, name: str, signal: str = "KILL") -> bool:
    """Send ``signal`` to the container if it runs; False if there is none (or no engine)."""
    return _on_container("kill", host, name, lambda api: api.kill(name, signal=signal))


def remove(host: str, name: str) -> bool:
    """Remove the container, killing it first if it still runs; True if it was there."""
    return _on_container("remove", host, name, lambda api: api.remove_container(name, force=True))


def _on_container(what: str, host: str, name: str, call: Callable[[Any], object]) -> bool:
    """One engine call on a named container: True if done; False, logged, if the
    container is absent (quietly), not running (409), or the engine unreachable."""
    import docker.errors

    try:
        call(client(host).api)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        log.info("%s %s: %s", what, name, exc.explanation or exc)
        return False
    except (EngineError, docker.errors.DockerException) as exc:
        log.error("%s %s: %s", what, name, exc)
        return False
    return True


def orphans(host: str, node: str, jobs_root: str, known: set[str]) -> list[str]:
    """Names of the containers of this node and agent state (by label) not in ``known``.

    Both labels: two pools on one engine may well both have a ``node01``."""
    labels = [f"{LABEL}.node={node}", f"{LABEL}.jobs={jobs_root}"]
    found: list[dict[str, Any]] = client(host).api.containers(all=True, filters={"label": labels})
    names = [str(c["Names"][0]).lstrip("/") for c in found if c.get("Names")]
    return [n for n in names if n not in known]
