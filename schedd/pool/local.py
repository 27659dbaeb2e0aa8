"""The ``local`` pool: N node agents as subprocesses of ``schedd up``.

Each agent is a real ``nodeagent`` process dialling the daemon's Unix socket,
with its own state directory, so it behaves exactly like an agent on another
machine. One that dies is restarted (with a growing delay, reset after a
minute of good health). GPUs: real ones through NVML when this machine has
them and a single node is asked for; otherwise each agent fakes its GPUs and
says so when it registers.

**Resizing** (a reload with a changed group ``count``, or ``POST
/api/v1/pool/GROUP/scale``): once attached to the daemon's state
(:meth:`LocalPool.attach`), the pool is the fleet's :class:`PoolView` with a
``resize``. A raised count starts the missing agents (``GROUP03`` ...) at once.
A lowered one drains the highest-numbered nodes at once — in the same step, so
no cycle places a job on them after the answer — and stops each one's agent
only once it holds no job (a job is never killed for it); the node then stays
DOWN, ``removed by scale-down``, until the group grows again. Emptiness is
checked whenever a message goes to a node (a job's exit is acknowledged) and
when a holding job's walltime runs out, as the Kubernetes driver does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["AgentSpec", "LocalPool", "local_agents", "nvml_gpu_count", "runtime_root"]

log = logging.getLogger("schedd.pool")


def nvml_gpu_count() -> int:
    """GPUs NVML sees here; 0 when there is no driver (the usual case in CI)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    cpus: int
    mem_mb: int
    fake_gpus: int | None  # None = real GPUs through NVML
    switch_user: bool = True  # as root, run jobs as their owner
    extra_args: tuple[str, ...] = ()  # more agent flags (the group's runtime)
    group: str = "node"  # its pool.toml group: the name is GROUP01, GROUP02, ...


#: The comment of a node whose agent a scale-down stopped.
REMOVED = "removed by scale-down"


def runtime_root(state_dir: Path) -> Path | None:
    """Where this pool's agents keep their rank directories: the machine's tmpfs
    (``/dev/shm``), one directory per daemon state directory, as a service's
    ``/run`` would (see :mod:`nodeagent.rundir`: a rank's files there cost a
    few percent of what they cost on this machine's disk); None where there is
    no writable tmpfs — the agents then keep them in their state directories."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return None
    digest = hashlib.sha1(str(state_dir.absolute()).encode()).hexdigest()[:12]
    root = shm / f"schedd-{os.getuid()}-{digest}"
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return root
    except OSError:
        return None
    # Someone else's (made there first, under our name): not ours to use, nor to refuse to start over.
    return root if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() else None


class LocalPool:
    def __init__(self, server_url: str, state_dir: Path, agents: list[AgentSpec], heartbeat_s: float) -> None:
        self.server_url = server_url
        self.state_dir = state_dir
        self.agents = agents
        self.heartbeat_s = heartbeat_s
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        #: The agents that should run, by name: what _keep restarts; a stopped one leaves.
        self.live: dict[str, AgentSpec] = {}
        #: Each group's first agent: what a grown group's new agents are made from.
        self.templates: dict[str, AgentSpec] = {}
        for a in agents:
            self.templates.setdefault(a.group, a)
        self.state: State | None = None
        self.wake: Callable[[], None] = lambda: None
        self._kick = asyncio.Event()

    def argv(self, a: AgentSpec) -> list[str]:
        argv = [sys.executable, "-m", "nodeagent.main", "--server", self.server_url, "--name", a.name,
                "--state-dir", str(self.state_dir / "agents" / a.name), "--heartbeat-s", str(self.heartbeat_s),
                "--env-cache", str(self.state_dir / "envs")]  # one machine: its agents share one cache
        if a.cpus:
            argv += ["--cpus", str(a.cpus)]
        if a.mem_mb:
            argv += ["--mem-mb", str(a.mem_mb)]
        if a.fake_gpus is not None:
            argv += ["--fake-gpus", str(a.fake_gpus)]
        if not a.switch_user:
            argv.append("--no-switch-user")
        run = runtime_root(self.state_dir)
        if run is not None:
            argv += ["--run-dir", str(run / a.name)]
        return argv + list(a.extra_args)

    def start(self) -> None:
        for a in self.agents:
            self._run(a)

    def _run(self, a: AgentSpec) -> None:
        self.live[a.name] = a
        self._tasks.append(asyncio.create_task(self._keep(a), name=f"agent-{a.name}"))

    def attach(self, state: State, wake: Callable[[], None]) -> None:
        """Become the fleet's pool view, resizable (see the module docstring);
        ``wake`` asks for a scheduling cycle (a grown group has room)."""
        from schedd.daemon.fleet import PoolView

        self.state, self.wake = state, wake
        sizes: dict[str, int] = {}
        for a in self.agents:
            sizes[a.group] = sizes.get(a.group, 0) + 1
        state.fleet.pool = PoolView("local", sizes, touched=self._kick.set, resize=self.resize)
        self._tasks.append(asyncio.create_task(self._control(), name="local-pool-control"))

    def resize(self, group: str, count: int) -> dict[str, object]:
        """``group`` should have ``count`` nodes: start agents now, or drain the
        highest-numbered nodes now and stop their agents once they are empty."""
        from schedd.core.model import NodeState
        from schedd.errors import InputError, UnknownJob

        template, state = self.templates.get(group), self.state
        if template is None or state is None or state.fleet.pool is None:
            raise UnknownJob(f"unknown node group {group}; the pool has {', '.join(sorted(self.templates))}")
        if not 0 <= count <= 999:
            raise InputError(f"count must be 0..999, not {count}")
        pool, fleet = state.fleet.pool, state.fleet
        pool.size[group] = count
        for i in range(1, count + 1):
            name = f"{group}{i:02d}"
            if pool.draining.pop(name, None) is not None:  # wanted again before it emptied
                entry = fleet.get(name)
                if entry is not None and entry.admin_state is NodeState.DRAINING:
                    fleet.set_admin(entry, None, "")
            if name not in self.live:
                self._run(replace(template, name=name))
        for name in sorted(n for n, a in self.live.items() if a.group == group and _ordinal(n, group) > count):
            if name in pool.draining:
                continue
            comment = f"scale-down of {group} to {count}: draining, removed once its jobs end"
            pool.draining[name] = comment
            entry = fleet.get(name)
            if entry is not None and entry.admin_state is None:  # an operator's offline/drain stays theirs
                fleet.set_admin(entry, NodeState.DRAINING, comment)
        self._kick.set()
        self.wake()
        log.info("node group %s: %d nodes wanted", group, count)
        return {"group": group, "count": count,
                "draining": sorted(n for n in pool.draining if self.live.get(n, template).group == group)}

    async def _control(self) -> None:
        """Stop the agents of drained nodes as they empty; look again on every
        message to a node, and when a holding job's walltime is over."""
        from schedd.pool.holding import holding

        while True:
            await self._kick.wait()
            self._kick.clear()
            state = self.state
            assert state is not None and state.fleet.pool is not None
            pool, now = state.fleet.pool, state.clock()
            if not pool.draining:  # the usual case: every message kicks, nothing to retire (O(1), not O(ranks))
                continue
            held = holding(state, now)
            for name in [n for n in pool.draining if n in self.live and n not in held.nodes]:
                await self._retire(name)
            if pool.draining and held.until is not None:  # by time alone too (walltime + kill delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), max(0.0, held.until - now))
                self._kick.set()

    async def _retire(self, name: str) -> None:
        """Stop an empty node's agent for good; the node stays DOWN, removed."""
        assert self.state is not None and self.state.fleet.pool is not None
        del self.live[name]
        proc = self.procs.get(name)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
        fleet = self.state.fleet
        fleet.pool.draining.pop(name, None)  # type: ignore[union-attr]
        entry = fleet.get(name)
        if entry is not None:
            if entry.admin_state is not None and entry.admin_state.value == "draining":
                entry.admin_state = None
            fleet.mark_down(entry, REMOVED)
        log.info("node %s: agent stopped (%s)", name, REMOVED)

    async def _keep(self, a: AgentSpec) -> None:
        delay = 0.2
        while not self._stopping and self.live.get(a.name) is a:
            began = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.argv(a), stdin=asyncio.subprocess.DEVNULL,
                                                        preexec_fn=_die_with_parent)
            self.procs[a.name] = proc
            code = await proc.wait()
            if self._stopping or self.live.get(a.name) is not a:
                return
            delay = 0.2 if time.monotonic() - began > 60 else min(delay * 2, 10.0)
            log.warning("agent %s exited with %s; restarting in %.1f s", a.name, code, delay)
            await asyncio.sleep(delay)  # restart backoff, not a wait for an event

    async def stop(self) -> None:
        """SIGTERM every agent (their jobs keep running under their supervisors)."""
        self._stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        run = runtime_root(self.state_dir)
        if run is not None:  # each agent removed its own when it left no rank; the pool's, if empty
            with contextlib.suppress(OSError):
                run.rmdir()


def _die_with_parent() -> None:
    """In the child: SIGTERM when ``schedd up`` dies, even by SIGKILL (Linux prctl).

    The agent then exits and leaves its jobs to their supervisors; the next
    ``schedd up`` starts fresh agents that re-adopt them. Without this, orphaned
    agents would hold their state directories against the new ones.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: agents outlive a killed daemon and are restarted by hand


def local_agents(count: int, gpus: int, cpus: int, mem_mb: int, prefix: str = "node",
                 switch_user: bool = True, extra_args: tuple[str, ...] = ()) -> list[AgentSpec]:
    real = nvml_gpu_count()
    fake = None if (real and count == 1) else gpus
    return [AgentSpec(f"{prefix}{i:02d}", cpus or (os.cpu_count() or 1), mem_mb, fake, switch_user, extra_args, prefix)
            for i in range(1, count + 1)]


def _ordinal(name: str, group: str) -> int:
    """``node03`` of group ``node`` -> 3 (0 when the name is not the group's)."""
    tail = name.removeprefix(group)
    return int(tail) if tail != name and tail.isdigit() else 0
