"""``nodeagent --server URL --name NAME [--fake-gpus N] ...``: run one node agent.

Startup and shutdown are paired, torn down in reverse: state-dir lock -> GPU
backend -> cgroups (what the node can enforce with: :mod:`nodeagent.cgroups`)
-> job table (re-adopts what runs; stale empty cgroups are removed) -> the
connection loop. SIGTERM or
SIGINT stops the connection and leaves every job running under its supervisor;
the next agent on the same state directory picks them up again.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from nodeagent import cgroups, rundir
from nodeagent.agent import Agent, AgentConfig, endpoint, node_memory_mb
from nodeagent.gpu import open_backend
from nodeagent.jobs import JobTable, Runtime
from schedd.logsetup import configure

__all__ = ["default_state_dir", "main"]

log = logging.getLogger("nodeagent")


def default_state_dir(name: str) -> Path:
    """``$XDG_STATE_HOME/schedd/agent-NAME``, else ``~/.local/state/schedd/agent-NAME``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "schedd" / f"agent-{name}"


def _cpus() -> int:
    """CPUs this process may run on (a cpuset in a container), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_EPILOG = """\
examples:
  nodeagent --server unix:///var/lib/schedd/schedd.sock --name gpu01
  nodeagent --server https://sched:8330 --ca ca.pem --token-file /etc/schedd/agent.token --name gpu02
  nodeagent --server http://127.0.0.1:8330 --token-file t --name dev --fake-gpus 4 --no-switch-user
  nodeagent ... --runtime docker --docker-image python:3.12-slim   every job in a container

enforcement (memory, CPUs, kills): auto uses a cgroup per job rank where the agent may
  (root on a cgroup v2 or hybrid host, or --cgroup-root DIR delegated to it), else RSS
  sampling and the process tree; qnodes -a shows which (enforcement = ...).

exit codes: 0 stopped (SIGTERM/SIGINT; running jobs stay with their supervisors and are
  adopted by the next agent), 2 usage or a bad option value (e.g. another agent holds --state-dir)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodeagent", description="schedd node agent: runs jobs on this node.",
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="http://HOST:PORT or unix:///path/to/schedd.sock")
    p.add_argument("--name", required=True, help="node name, unique in the pool")
    p.add_argument("--fake-gpus", type=int, default=None, metavar="N", help="pretend to have N GPUs (no NVML)")
    p.add_argument("--token-file", type=Path, default=None, help="file holding the bearer token")
    p.add_argument("--ca", default="", metavar="FILE", help="CA certificate(s) to verify an https:// server by")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object per log line, for a log pipeline")
    p.add_argument("--state-dir", type=Path, default=None, help="default: $XDG_STATE_HOME/schedd/agent-NAME")
    p.add_argument("--cpus", type=int, default=None, help="CPUs to offer (default: all usable)")
    p.add_argument("--mem-mb", type=int, default=None, help="memory to offer (default: RAM or cgroup limit)")
    p.add_argument("--heartbeat-s", type=float, default=10.0, help="until schedd's Welcome says otherwise")
    p.add_argument("--ping-s", type=float, default=20.0,
                   help="WebSocket ping interval; a session with no pong within half of it is left and dialled again")
    p.add_argument("--scratch-dir", default="", help="root of per-job TMPDIRs (default: inside the rank's directory)")
    p.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                   help="keep rank directories in DIR/jobs, a tmpfs such as /run/schedd-agent "
                        "(STATE/jobs links there; default: in the state dir)")
    p.add_argument("--no-switch-user", action="store_true", help="as root, run jobs as root, not as their owner")
    p.add_argument("--env-cache", type=Path, default=None, metavar="DIR",
                   help="where captured environments are rebuilt and cached (default: STATE_DIR/envs)")
    p.add_argument("--env-cache-mb", type=int, default=20 * 1024, metavar="MB",
                   help="evict least recently used environments beyond this size (default 20480)")
    p.add_argument("--env-installer", choices=("auto", "uv", "pip"), default="auto",
                   help="auto: uv when it is on PATH, else pip (default auto)")
    p.add_argument("--runtime", choices=("process", "docker"), default="process",
                   help="process: jobs are processes (a job asking -l container=IMAGE still gets a container); "
                        "docker: every job runs in a container (default process)")
    p.add_argument("--docker-image", default="", metavar="IMAGE",
                   help="--runtime docker: the image of jobs that name none, and the base of rebuilt environments")
    p.add_argument("--docker-host", default="", metavar="URL",
                   help="docker engine (default: $DOCKER_HOST, else unix:///var/run/docker.sock)")
    p.add_argument("--enforcement", choices=cgroups.MODES, default=os.environ.get("SCHEDD_ENFORCEMENT", "auto"),
                   help="auto: cgroups where usable, else the process tree; cgroup: cgroups or refuse to start; "
                        "proctree: RSS sampling and the process tree (default $SCHEDD_ENFORCEMENT, else auto)")
    p.add_argument("--cgroup-root", default=os.environ.get("SCHEDD_CGROUP_ROOT", ""), metavar="DIR",
                   help="a cgroup v2 directory delegated to the agent for its job groups "
                        "(default $SCHEDD_CGROUP_ROOT, else MOUNT/schedd as root)")
    return p


def _config(args: argparse.Namespace) -> AgentConfig:
    """Validate the command line into a config; raises ValueError with a precise message."""
    endpoint(args.server)
    if not args.name or "/" in args.name:
        raise ValueError(f"--name must be a non-empty node name, got {args.name!r}")
    if args.fake_gpus is not None and args.fake_gpus < 0:
        raise ValueError(f"--fake-gpus must be >= 0, got {args.fake_gpus}")
    if args.heartbeat_s <= 0:
        raise ValueError(f"--heartbeat-s must be > 0, got {args.heartbeat_s}")
    if args.ping_s <= 0:
        raise ValueError(f"--ping-s must be > 0, got {args.ping_s}")
    if args.env_cache_mb <= 0:
        raise ValueError(f"--env-cache-mb must be > 0, got {args.env_cache_mb}")
    if args.enforcement not in cgroups.MODES:  # from the environment: argparse checks only flags
        raise ValueError(f"--enforcement must be one of {', '.join(cgroups.MODES)}, got {args.enforcement!r}")
    if args.runtime == "docker" and not args.docker_image:
        raise ValueError("--runtime docker needs --docker-image IMAGE (the image of jobs that name none)")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    return AgentConfig(
        server=args.server, name=args.name, token=token, heartbeat_s=args.heartbeat_s, ping_s=args.ping_s,
        cpus=args.cpus if args.cpus is not None else _cpus(),
        mem_mb=args.mem_mb if args.mem_mb is not None else node_memory_mb(),
        labels={"runtime": args.runtime}, ca_file=args.ca,
        incarnation=os.environ.get("SCHEDD_NODE_UID", ""),  # the pod's UID (downward API) on Kubernetes
    )


def _lock(state_dir: Path) -> int:
    """Hold an exclusive lock on a directory (the state dir, the run dir) for the agent's life: one agent per dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / rundir.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another agent is using {state_dir}") from None
    return fd


async def serve(config: AgentConfig, state_dir: Path, fake_gpus: int | None, *,
                scratch_root: str = "", switch_user: bool = True, env_cache: Path | None = None,
                env_cache_mb: int = 20 * 1024, env_installer: str = "auto", runtime: Runtime = Runtime(),
                layout: cgroups.Layout | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT; jobs are left running."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gpus = open_backend(fake_gpus, config.name)
    table = JobTable(state_dir, node=config.name, scratch_root=scratch_root, switch_user=switch_user,
                     env_cache=str((env_cache or state_dir / "envs").absolute()), env_cache_mb=env_cache_mb,
                     env_installer=env_installer, runtime=replace(runtime, gpus=not gpus.fake), cgroups=layout)
    await table.open()
    if layout is not None:  # what a crashed agent left: empty groups no running rank owns
        cgroups.sweep(layout, {path.name for _k, path, _s, done in table.rank_dirs() if not done})
    log.info("agent %s: %d cpus, %d MB, %d GPUs%s, state %s", config.name, config.cpus, config.mem_mb,
             len(gpus.info()), " (fake)" if gpus.fake else "", state_dir)
    try:
        await Agent(config, table, gpus).run(stop)
    finally:
        await table.close()
        gpus.close()
        if layout is not None and not table.running():
            cgroups.remove_agent_group(layout)
        log.info("agent %s stopped; %d job ranks left running under their supervisors",
                 config.name, len(table.running()))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_format, logging.INFO, "%(asctime)s nodeagent %(levelname)s %(message)s")
    try:
        config = _config(args)
        state_dir = args.state_dir or default_state_dir(args.name)
        lock = _lock(state_dir)
    except ValueError as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        return 2
    locks = [lock]
    try:
        if args.run_dir is not None:
            rundir.prepare(args.run_dir)
            locks.append(_lock(args.run_dir))
            rundir.link_jobs(state_dir, args.run_dir)
        layout = cgroups.detect(config.name, state_dir, args.enforcement, args.cgroup_root)
        config = replace(config, enforcement=cgroups.mode_of(layout))
    except (ValueError, OSError) as exc:
        for fd in locks:
            os.close(fd)
        print(f"nodeagent: {exc}" if isinstance(exc, ValueError) else f"nodeagent: --run-dir {args.run_dir}: {exc}",
              file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, state_dir, args.fake_gpus, scratch_root=args.scratch_dir,
                          switch_user=not args.no_switch_user, env_cache=args.env_cache,
                          env_cache_mb=args.env_cache_mb, env_installer=args.env_installer,
                          runtime=Runtime(args.runtime, args.docker_image, args.docker_host), layout=layout))
        if args.run_dir is not None:
            rundir.release(state_dir, args.run_dir)
    finally:
        for fd in locks:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
