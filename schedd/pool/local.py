"""The ``local`` pool: N node agents as subprocesses of ``schedd up``.

Each agent is a real ``nodeagent`` process dialling the daemon's Unix socket,
with its own state directory, so it behaves exactly like an agent on another
machine. One that dies is restarted (with a growing delay, reset after a
minute of good health). GPUs: real ones through NVML when this machine has
them and a single node is asked for; otherwise each agent fakes its GPUs and
says so when it registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AgentSpec", "LocalPool", "local_agents", "nvml_gpu_count"]

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


class LocalPool:
    def __init__(self, server_url: str, state_dir: Path, agents: list[AgentSpec], heartbeat_s: float) -> None:
        self.server_url = server_url
        self.state_dir = state_dir
        self.agents = agents
        self.heartbeat_s = heartbeat_s
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

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
        return argv + list(a.extra_args)

    def start(self) -> None:
        for a in self.agents:
            self._tasks.append(asyncio.create_task(self._keep(a), name=f"agent-{a.name}"))

    async def _keep(self, a: AgentSpec) -> None:
        delay = 0.2
        while not self._stopping:
            began = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*self.argv(a), stdin=asyncio.subprocess.DEVNULL,
                                                        preexec_fn=_die_with_parent)
            self.procs[a.name] = proc
            code = await proc.wait()
            if self._stopping:
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
    return [AgentSpec(f"{prefix}{i:02d}", cpus or (os.cpu_count() or 1), mem_mb, fake, switch_user, extra_args)
            for i in range(1, count + 1)]
