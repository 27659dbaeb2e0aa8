"""The per-rank supervisor: ``python -m nodeagent.supervisor JOBDIR [--notify-fd N]``.

Like Slurm's slurmstepd, one small process per job rank, detached from the agent
(its own session), so a job keeps being enforced — walltime, memory, kills —
while the agent restarts or schedd is unreachable, and its exit is recorded on
disk (``exit.json``) for the agent to report whenever it can. The conversation
with the agent is files in JOBDIR (see :mod:`nodeagent.jobdir`).

Life of a rank::

    install signal handlers -> child subreaper -> supervisor.pid -> read ctl/
    -> scratch (TMPDIR, nodefile, script) -> spawn job in its own session
    -> started.json -> loop -> reap everything -> remove scratch -> exit.json

The loop is a ``select`` on the signal wake-up pipe (SIGCHLD, the agent's
nudge, SIGTERM) with a timeout to the next deadline: RSS sample (every
``sample_interval_s``), warning signal, walltime, SIGKILL escalation. No sleeps.

Kill sequence: SIGTERM to the job's process group and every descendant seen,
``kill_delay_s``, then SIGKILL to the group and all descendants. Because the
supervisor is a child subreaper, a process that double-forks and calls setsid
re-parents to it and stays a descendant: nothing escapes. When the job's top
process ends, whatever it left behind is SIGKILLed at once (as PBS's MoM does
with a job's session), and the supervisor only records the exit once no
descendant is left. Memory over ``mem_mb`` skips the grace period: a job that
is already too big can only get bigger. Memory is the RSS of the whole tree,
sampled with psutil (pages shared between processes count in each of them);
no cgroup is needed, at the price of a sampling interval's worth of overshoot.

With cgroups (the agent's ``spec.cgroups``, see :mod:`nodeagent.cgroups`) the
rank gets groups of its own, which the job's top process is forked into: its
processes are found in ``cgroup.procs`` and killed by ``cgroup.kill`` (no
tree walk, no cookie scan); its memory request is the group's limit, kept by
the kernel: an OOM kill there (``memory.events`` / ``memory.oom_control``)
ends the rank with EXIT_MEM and a comment saying so, and the peak is the
group's. The groups are removed once empty. A group that cannot be made falls
back to the process tree, with a line in the log.

Exit status as PBS records it: the top process's exit code; 256 + N when a
signal N killed it; EXIT_WALLTIME / EXIT_MEM when the supervisor enforced a
limit; a Kill's ``status`` when one was given; EXIT_LAUNCH_FAILED when the job
could not be started (with the reason in ``comment``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from nodeagent import proctree
from nodeagent.cgroups import RankGroup, drop_spares, rearm
from nodeagent.metrics import keep_metrics
from nodeagent.jobdir import (
    EXIT,
    PID,
    SPEC,
    STARTED,
    WAKE_SIGNAL,
    ProcessRecord,
    StartedRecord,
    SupervisorSpec,
    notify_line,
    parse_signal,
    read_control,
    read_record,
    write_record,
)
from nodeagent.runtime.process import LaunchFailed, Leader, StartCancelled, adopt_container, remove_scratch, spawn_job
from schedd.protocol import EXIT_LAUNCH_FAILED, EXIT_MEM, EXIT_WALLTIME, Exited, Kill

if TYPE_CHECKING:  # envpack is imported only for jobs with an environment spec
    from nodeagent.env.pack import Venv

__all__ = ["Supervisor", "configure_logging", "main", "run", "run_rank"]

log = logging.getLogger("nodeagent.supervisor")

#: Signals that end the job as a kill when the supervisor itself receives them.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HANDLED = (signal.SIGCHLD, WAKE_SIGNAL, *_STOP_SIGNALS)
#: How long processes may survive SIGKILL (uninterruptible I/O) before the exit
#: is recorded anyway, with a comment.
_SURVIVOR_LIMIT_S = 30.0


@dataclass
class _Ending:
    """Why the supervisor is ending the job, decided once (first reason wins)."""

    how: str  # "walltime" | "memory" | "killed"
    status: int | None
    comment: str


class Supervisor:
    """Runs one rank from spawn to exit.json; see the module docstring."""

    def __init__(self, jobdir: Path, spec: SupervisorSpec, notify_fd: int | None = None,
                 recorded: Callable[[], None] | None = None) -> None:
        """``recorded``: called once the exit is on disk, before the agent is told
        ("E"): a reusable process says it is free for the next rank there."""
        self.recorded = recorded
        self.jobdir = jobdir
        self.dir = str(jobdir)  # records are written by string path: no pathlib per record
        self.spec = spec
        self.launch = spec.launch
        self.notify_fd = notify_fd
        self.start_time = time.time()
        self.started = False
        self.leader: Leader | None = None
        self.leader_status: int | None = None
        self.leader_end: float | None = None  # monotonic
        self.ending: _Ending | None = None
        self.kill_at: float | None = None  # monotonic time of the SIGKILL escalation
        self.failed: str | None = None
        self.warned = False
        self.peak_rss_mb = 0
        #: the children's usage when this rank began, and the largest RSS of those reaped since
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.reaped_maxrss_kb = 0
        #: the last reap found no child at all (ECHILD): as a subreaper, no descendant
        #: either — and none can appear but by a fork of ours (see :meth:`_leftovers`)
        self.childless = False
        #: processes of the rank outlived SIGKILL (its exit was recorded at the limit)
        self.survivors = False
        #: the process told it is free for another rank (only after a clean end)
        self.freed = False
        self.seen: dict[int, psutil.Process] = {}  # every descendant sampled, for strays
        self.subreaper = False
        self.scratch: Path | None = None
        self.venv: Venv | None = None  # the job's rebuilt environment, held (its lock) while it runs
        #: the rank's container name when it runs in docker (nodeagent.runtime.runner is its top process)
        self.container = ""
        self.argv: list[str] = []  # the job's command, for the log
        self.wake = -1
        self.walltime_at = float("inf")  # set when the job starts; walltime_s <= 0: none
        #: the first sample one interval in: at the start the job has only just executed
        self.next_sample = time.monotonic() + spec.sample_interval_s
        #: the rank's cgroups when the agent has some (nodeagent.cgroups); None: the process tree
        self.cgroup: RankGroup | None = None
        #: the rank group's cgroup.events, watched: its last process exiting wakes the loop
        #: (they need not be our children, so no SIGCHLD says so)
        self.cgroup_events: int | None = None

    @functools.cached_property
    def me(self) -> psutil.Process:
        """This process, for the tree walks (only a rank without cgroups samples its tree)."""
        return psutil.Process()

    # ------------------------------------------------------------ main line

    def run(self) -> int:
        wake = self.wake = self._install_signals()
        self.subreaper = self.spec.subreaper and proctree.set_child_subreaper()
        write_record(f"{self.dir}/{PID}", _own_record(os.getpid()))
        self._requests()
        if self.ending is None:
            try:
                if self.spec.image() and os.path.exists(f"{self.dir}/{STARTED}"):
                    self._adopt()  # a previous supervisor started it: its container may run on
                else:
                    self._start()
            except LaunchFailed as exc:
                self.failed = str(exc)
                log.error("launch failed: %s", exc)
            except StartCancelled as exc:
                log.info("%s", exc)
        if self.started:
            self._loop(wake)
        self._finish()
        return 0

    def _install_signals(self) -> int:
        """The wake-up pipe of this rank (signals that came before it began are
        dropped: they were for the idle process, or an earlier rank)."""
        return _signals.arm()

    def _quiet_signals(self) -> None:
        """The rank is over: a stop signal from now on ends this process (idle
        between ranks, it holds no job) — and one that came while the exit was
        being recorded does too."""
        _signals.disarm()

    def release(self) -> None:
        """Give back what this rank held in the process (the group's events, the
        notify pipe): a supervisor process that serves another rank next must not
        keep them. The wake-up pipe is the process's, kept for the next rank."""
        _signals.disarm()  # also when the rank ended before its exit was recorded
        if self.cgroup_events is not None:
            with contextlib.suppress(OSError):
                os.close(self.cgroup_events)
        self.wake, self.cgroup_events = -1, None
        self.close_notify()

    def _loop(self, wake: int) -> None:
        while True:
            self._reap()
            now = time.monotonic()
            if self.leader_end is not None:
                if not self._leftovers():
                    return
                if now - self.leader_end > _SURVIVOR_LIMIT_S:
                    log.error("processes survived SIGKILL for %.0f s; recording the exit", _SURVIVOR_LIMIT_S)
                    self.survivors = True
                    return
            timeout = max(0.0, self._next_deadline() - now)
            events = [self.cgroup_events] if self.cgroup_events is not None else []
            ready, _, changed = select.select([wake], [], events, timeout)
            if changed:
                rearm(changed[0])
            if ready:
                self._on_signals(os.read(wake, 512))
            self._tick(time.monotonic())

    def _next_deadline(self) -> float:
        spec = self.launch.spec
        times = [self.next_sample]
        if self.ending is None:
            times.append(self.walltime_at)
            if spec.warn_signal and not self.warned:
                times.append(self.walltime_at - spec.warn_before_s)
        if self.kill_at is not None:
            times.append(self.kill_at)
        if self.leader_end is not None:  # survivors of SIGKILL: recorded anyway at the limit
            times.append(self.leader_end + _SURVIVOR_LIMIT_S + 0.01)
        return min(times)

    def _on_signals(self, sigs: bytes) -> None:
        for num in set(sigs):
            if num == WAKE_SIGNAL:
                self._requests()
            elif num in _STOP_SIGNALS:
                name = signal.Signals(num).name
                log.info("got %s: killing the job", name)
                self._begin_kill(_Ending("killed", None, f"supervisor got {name}"), self.launch.spec.kill_delay_s)

    def _tick(self, now: float) -> None:
        spec = self.launch.spec
        if now >= self.next_sample:
            self.next_sample = now + self.spec.sample_interval_s
            self._sample()
            self._requests()  # a nudge may have been lost; the file is not
        if spec.warn_signal and not self.warned and self.ending is None and now >= self.walltime_at - spec.warn_before_s:
            self.warned = True
            self._warn(spec.warn_signal)
        if self.ending is None and now >= self.walltime_at:
            comment = f"walltime {spec.walltime_s:g} s exceeded"
            self._begin_kill(_Ending("walltime", EXIT_WALLTIME, comment), spec.kill_delay_s)
        if self.kill_at is not None and now >= self.kill_at:
            self._hard_kill()
        if self.leader_end is not None and self._leftovers():
            self._hard_kill()  # the top process is gone: what it left behind goes too

    # ------------------------------------------------------------ starting

    def _start(self) -> None:
        # A container has the engine's cgroup; a process gets its own, made just before its fork.
        enter = self._in_group if self.spec.cgroups is not None and not self.spec.image() else None
        spawned = spawn_job(self.jobdir, self.spec, self._wait_preparing, self._announce, enter)
        self.leader, self.scratch, self.venv = spawned.proc, spawned.scratch, spawned.venv
        self.container = self.spec.container()
        if spawned.env_note:
            log.info("%s", spawned.env_note)
        pid = spawned.proc.pid
        self.start_time = time.time()
        walltime_s = self.launch.spec.walltime_s
        if walltime_s > 0:
            self.walltime_at = time.monotonic() + walltime_s
        self.started = True
        started = StartedRecord(pid, pid, spawned.created or proctree.create_time(pid), self.start_time)
        record = write_record(f"{self.dir}/{STARTED}", started)
        self.argv = spawned.argv
        self._notify(b"S", record)

    @contextlib.contextmanager
    def _in_group(self) -> Iterator[None]:
        """The job's fork happens in the rank's groups, made here with its limits
        (after its environment was prepared: an empty group lives only for this
        moment); if that fails, the rank is enforced by the process tree instead."""
        layout, spec = self.spec.cgroups, self.launch.spec
        assert layout is not None
        stack = contextlib.ExitStack()
        try:
            self.cgroup = RankGroup.create(layout, self.jobdir.name, spec.mem_mb, spec.ncpus)
            self.cgroup_events = self.cgroup.watch()
            stack.enter_context(self.cgroup.enter())
        except OSError as exc:
            log.error("cannot use a cgroup in %s for the rank: %s; enforcing by process tree", layout.v2, exc)
            if self.cgroup is not None:
                self.cgroup.remove()
            self.cgroup = None
            if self.cgroup_events is not None:
                os.close(self.cgroup_events)
                self.cgroup_events = None
        with stack:
            yield

    def _adopt(self) -> None:
        """Follow the container a dead supervisor started; the walltime runs from the
        job's real start, and the rank ends as it would have."""
        before = read_record(self.jobdir / STARTED, StartedRecord)
        assert before is not None
        spawned = adopt_container(self.jobdir, self.spec)
        self.leader, self.scratch = spawned.proc, spawned.scratch
        launch = self.launch
        self.container = self.spec.container()
        self.start_time = before.start_time
        if launch.spec.walltime_s > 0:
            self.walltime_at = time.monotonic() + before.start_time + launch.spec.walltime_s - time.time()
        self.started = True
        pid = spawned.proc.pid
        started = StartedRecord(pid, pid, proctree.create_time(pid), before.start_time)
        record = write_record(f"{self.dir}/{STARTED}", started)
        log.info("%s: %s", launch.spec.job_id, spawned.env_note)
        self._notify(b"S", record)

    def _wait_preparing(self, fd: int | None, timeout_s: float) -> bool:
        """envpack's waiter while the environment is prepared: until ``fd`` (a tool's
        pidfd) is readable, a signal arrives or ``timeout_s``; True once the job is
        to end (a Kill, SIGTERM...) — it then ends before it ever started."""
        ready, _, _ = select.select([self.wake] + ([fd] if fd is not None else []), [], [], timeout_s)
        if self.wake in ready:
            self._on_signals(os.read(self.wake, 512))
        return self.ending is not None

    def _announce(self, what: str) -> None:
        """Tell the agent (hence the job's comment) what the start waits for: one
        ``P<text>\\n`` record on the started pipe, atomic below PIPE_BUF."""
        log.info("preparing: %s", what)
        if self.notify_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.notify_fd, b"P" + what.encode(errors="replace")[:500].replace(b"\n", b" ") + b"\n")

    def _notify(self, kind: bytes, record: bytes) -> None:
        """``S`` and the started record once the job started, ``E`` and the exit record
        once it is on disk (:func:`nodeagent.jobdir.notify_line`); the pipe is
        closed after ``E``, so its end (EOF) tells the agent the rank is over even
        when this process lives on to supervise another (see nodeagent.forkserver)."""
        if self.notify_fd is None:
            return
        with contextlib.suppress(OSError):  # the agent may be gone: that is fine
            os.write(self.notify_fd, notify_line(kind, record))
        if kind == b"E":
            self.close_notify()

    def close_notify(self) -> None:
        if self.notify_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.notify_fd)
            self.notify_fd = None

    # ------------------------------------------------------------ watching and killing

    def _requests(self) -> None:
        for req in read_control(self.dir):
            if isinstance(req, Kill):
                log.info("kill requested (delay %g s, status %s)", req.kill_delay_s, req.status)
                self._begin_kill(_Ending("killed", req.status, "killed on request"), req.kill_delay_s)
            else:
                self._warn(req.signal)

    def _warn(self, name: str) -> None:
        try:
            sig = parse_signal(name)
        except ValueError as exc:
            log.error("%s", exc)
            return
        if self.leader is not None and self.leader_end is None:
            log.info("sending %s to the job", sig.name)
            proctree.killpg(self.leader.pid, sig)

    def _sample(self) -> None:
        if self.container:  # the runner reads the container's cgroup; its own tree is just itself
            return
        if self.cgroup is not None:
            self._check_oom()
            if self.cgroup.memory:  # the kernel keeps the limit: nothing to sample
                return
            procs = _processes(self.cgroup.pids())
        else:
            procs = proctree.descendants(self.me)
        rss = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                rss += proc.memory_info().rss
        if not self.subreaper and self.cgroup is None:  # orphans would leave our tree: remember them
            self.seen = {p.pid: p for p in self.seen.values() if _running(p)}
            for proc in procs:
                self.seen.setdefault(proc.pid, proc)
        rss_mb = rss >> 20
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb)
        limit = self.launch.spec.mem_mb
        if limit > 0 and rss_mb > limit and (self.ending is None or self.ending.how != "memory"):
            comment = f"memory {rss_mb} MB over the {limit} MB requested"
            log.info("%s: killing", comment)
            self.ending = _Ending("memory", EXIT_MEM, comment)
            self._hard_kill()

    def _check_oom(self) -> None:
        """The kernel's OOM killer acted in the rank's group (at its memory limit):
        the rank ends as one over its memory, and what is left of it goes."""
        assert self.cgroup is not None
        kills = self.cgroup.oom_kills()
        if kills and (self.ending is None or self.ending.how != "memory"):
            limit = self.launch.spec.mem_mb
            knob = "memory.max" if self.cgroup.memory == "v2" else "memory.limit_in_bytes"
            comment = (f"memory {limit} MB limit reached: the kernel's OOM killer ended {kills} "
                       f"process{'es' if kills > 1 else ''} of the job (cgroup {knob})")
            log.info("%s: killing", comment)
            self.ending = _Ending("memory", EXIT_MEM, comment)
            self._hard_kill()

    def _strays(self) -> list[psutil.Process]:
        """Descendants now, plus earlier ones that re-parented away (no subreaper)."""
        now = proctree.descendants(self.me)
        pids = {p.pid for p in now}
        return now + [p for p in self.seen.values() if p.pid not in pids and _running(p)]

    def _leftovers(self) -> bool:
        if self.cgroup is not None:
            return self.cgroup.populated()
        if self.subreaper:  # every descendant is a child or below one: the last reap saw whether any is left
            return not self.childless
        return bool(self._strays())

    def _begin_kill(self, ending: _Ending, delay_s: float) -> None:
        now = time.monotonic()
        if self.ending is not None:  # already ending: keep the reason, maybe hurry up
            if self.ending.status is None and ending.how == self.ending.how == "killed":
                self.ending.status = ending.status
            if self.kill_at is not None:
                self.kill_at = min(self.kill_at, now + delay_s)
            return
        self.ending = ending
        if not self.started:
            return
        assert self.leader is not None
        proctree.killpg(self.leader.pid, signal.SIGTERM)
        if self.cgroup is not None:
            self.cgroup.signal(signal.SIGTERM)
        else:
            proctree.send_all(self._strays(), signal.SIGTERM)
        self.kill_at = now + max(0.0, delay_s)

    def _hard_kill(self) -> None:
        if self.leader is not None:
            proctree.killpg(self.leader.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill()  # everything in the group, however it forked
        else:
            proctree.send_all(self._strays(), signal.SIGKILL)
        if self.container and self.kill_at is not None:  # the runner is gone: the container goes too
            from nodeagent.runtime import engine

            engine.kill(self.spec.docker_host, self.container)
        self.kill_at = None

    def _reap(self) -> None:
        """Reap every exited child (the subreaper inherits orphans); note the top process."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.childless = True
                break
            if pid == 0:  # children left, still running
                self.childless = False
                break
            self.reaped_maxrss_kb = max(self.reaped_maxrss_kb, usage.ru_maxrss)
            if self.leader is not None and pid == self.leader.pid:
                self.leader_status = status
                self.leader_end = time.monotonic()
                self.leader.returncode = os.waitstatus_to_exitcode(status)

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        # As a child subreaper every process the job forked stays our descendant,
        # and the kill paths already cover them; only without one may a process
        # have escaped, and then the cookie scan — O(processes), reading each
        # one's environment — is worth its cost.
        # A rank in a cgroup has all its processes there.
        if self.subreaper or self.cgroup is not None:
            stray = []
        else:
            stray = proctree.by_cookie(self.spec.cookie, exclude=os.getpid())
        if stray:  # last resort: escaped both the group and the tracking
            log.info("killing %d stray processes found by cookie", len(stray))
            proctree.send_all(stray, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while any(_running(p) for p in stray) and time.monotonic() < deadline:
                time.sleep(0.01)  # SIGKILL takes effect within a scheduler tick; bounded
            self._reap()
        peak_mb, cpu_s = 0, 0.0
        if self.container:
            ran, peak_mb, cpu_s = self._container_end()
            if ran is not None:
                self.failed = ran
        # A process serves another rank only after a clean end: survivors would be the next rank's children.
        reusable = self.recorded is not None and not self.survivors
        if self.cgroup is not None:
            self._check_oom()  # the top process itself may have been the one killed
            self.peak_rss_mb = max(self.peak_rss_mb, self.cgroup.peak_mb())
            if not self.cgroup.remove(keep=reusable):  # a reused process keeps its v1 groups
                log.error("cgroup %s still holds processes: left in place", self.cgroup.v2)
        status, how, comment = self._outcome()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        # This rank's share of what this process's children used: the process may
        # have supervised ranks before (nodeagent.forkserver reuses it).
        before = self.children_before
        cpu_children = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
        maxrss_kb = usage.ru_maxrss if before.ru_maxrss == 0 else self.reaped_maxrss_kb
        if self.scratch is not None:
            keep_metrics(self.scratch, self.jobdir)  # the agent may not have read it all yet
            remove_scratch(self.scratch)
        end = time.time()
        exited = Exited(
            job_id=self.launch.job_id, attempt=self.launch.attempt, rank=self.launch.rank,
            status=status, how=how, start_time=self.start_time, end_time=end,
            peak_rss_mb=peak_mb if self.container else max(self.peak_rss_mb, maxrss_kb // 1024),
            cpu_s=cpu_s if self.container else round(cpu_children, 3), comment=comment,
        )
        record = write_record(f"{self.dir}/{EXIT}", exited)
        self._log_exit(status, how, comment)
        self._quiet_signals()
        if reusable and self.recorded is not None:
            self.freed = True
            self.recorded()
        self._notify(b"E", record)

    def _log_exit(self, status: int, how: str, comment: str) -> None:
        """The rank's one line in the log, at its end: what ran (pid, command) and how it ended."""
        ran = "" if self.leader is None else f"; pid {self.leader.pid} ran {shlex.join(self.argv)[:200]}"
        _info_line(f"exit recorded: status {status} ({how}) {comment}{ran}")

    def _container_end(self) -> tuple[str | None, int, float]:
        """Read the runner's result, remove the container if the runner could not;
        (why it never ran or None, its peak memory in MB, its CPU seconds). An
        OOM kill becomes the memory ending, as the RSS limit is for a process."""
        from nodeagent.runtime.containerize import RESULT
        from nodeagent.runtime.engine import ContainerResult, remove

        result = read_record(self.jobdir / RESULT, ContainerResult)
        if result is None or result.exit_code is None:
            if remove(self.spec.docker_host, self.container):
                log.info("removed container %s", self.container)
        if result is None:
            return None, 0, 0.0
        if result.oom_killed and (self.ending is None or self.ending.how != "memory"):
            limit = self.launch.spec.mem_mb
            self.ending = _Ending("memory", EXIT_MEM, f"container OOM-killed at its {limit} MB memory limit")
        failed = f"container: {result.error}" if result.error and not result.started else None
        return failed, result.peak_mem_mb, result.cpu_s

    def _outcome(self) -> tuple[int, str, str]:
        if self.failed is not None:
            return EXIT_LAUNCH_FAILED, "launch_failed", self.failed
        raw = self.leader_status
        if raw is None:
            natural = (256 + signal.SIGKILL, "killed", "processes survived SIGKILL")
            if not self.started:
                natural = (256 + signal.SIGTERM, "killed", "killed before the job started")
        elif os.WIFSIGNALED(raw):
            sig = os.WTERMSIG(raw)
            natural = (256 + sig, "signaled", f"killed by signal {_signame(sig)}")
        else:
            natural = (os.waitstatus_to_exitcode(raw), "exited", "")
        ending = self.ending
        if ending is None:
            return natural
        if ending.status is not None:
            return ending.status, ending.how, ending.comment
        detail = f" ({natural[2]})" if natural[2] else f" (exit code {natural[0]})"
        return natural[0], ending.how, ending.comment + detail


class _Signals:
    """The signals a rank handles, installed once per process (a reused supervisor
    serves rank after rank: see nodeagent.forkserver). While a rank is on
    (:meth:`arm`) each one only wakes the loop through the wake-up pipe; between
    ranks a stop signal ends the process, as its default action would, and the
    others are ignored as their defaults are (SIGCHLD, SIGWINCH)."""

    def __init__(self) -> None:
        self.pipe: tuple[int, int] | None = None
        self.armed = False

    def arm(self) -> int:
        """Rank on: the read end of the wake-up pipe, emptied."""
        if self.pipe is None:
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            for sig in _HANDLED:
                signal.signal(sig, self._handler)
            signal.set_wakeup_fd(self.pipe[1], warn_on_full_buffer=False)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.pipe[0], 512):
                pass
        self.armed = True
        return self.pipe[0]

    def disarm(self) -> None:
        """Rank over: a stop signal already in the pipe (not yet handled by the
        loop) ends the process now, and any later one at once."""
        if not self.armed:
            return
        self.armed = False
        assert self.pipe is not None
        try:
            pending = os.read(self.pipe[0], 512)
        except BlockingIOError:
            pending = b""
        for num in _STOP_SIGNALS:
            if num in pending:
                _die(num)

    def _handler(self, num: int, _frame: object) -> None:
        if not self.armed and num in _STOP_SIGNALS:
            _die(num)


def _die(num: int) -> None:
    """End this process by signal ``num``, as its default action does (its spare cgroups go first)."""
    drop_spares()
    signal.signal(num, signal.SIG_DFL)
    os.kill(os.getpid(), num)


_signals = _Signals()


@functools.cache
def _own_record(pid: int) -> ProcessRecord:
    """This process's pid and creation time, read once per process (a reused
    supervisor writes them for every rank; the forkserver told the agent the
    same pair when it forked this process). Keyed by pid: a fork reads its own."""
    return ProcessRecord(pid, proctree.create_time(pid))


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _processes(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.supervisor")
    parser.add_argument("jobdir", type=Path)
    parser.add_argument("--notify-fd", type=int, default=None, help="pipe to the agent: 'S' once started")
    args = parser.parse_args(argv)
    return run(args.jobdir, args.notify_fd)


def configure_logging() -> None:
    """Lines to stderr (the rank's supervisor.log); a no-op once done, so the
    forkserver does it for all the supervisors it forks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s")


def _info_line(message: str) -> None:
    """``log.info(message)`` as :func:`configure_logging` lays it out, written to stderr
    at once: every rank logs one line, and logging's record, formatter and text
    stream cost ~40 us of it here where the write costs ~10 (logging flushes each
    line it writes, so nothing of its own is pending)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    line = f"{stamp},{int((now - int(now)) * 1000):03d} supervisor[{os.getpid()}] INFO {message}\n"
    with contextlib.suppress(OSError):  # as logging: a log that cannot be written is no reason to fail
        os.write(2, line.encode(errors="replace"))


def run(jobdir: Path, notify_fd: int | None) -> int:
    """Supervise the rank in ``jobdir`` until it has ended; the exit code of this process."""
    return run_rank(jobdir, notify_fd)[0]


def run_rank(jobdir: Path, notify_fd: int | None, free: Callable[[], None] | None = None) -> tuple[int, bool]:
    """Supervise the rank in ``jobdir`` until it has ended: (the exit code, whether
    this process may supervise another rank next — then ``free`` was called as
    soon as the exit was on disk). Only a plain process rank leaves the process
    as it found it; one that ran in a container or a rebuilt environment, or
    without the subreaper, ends its process."""
    configure_logging()
    os.chdir("/")  # hold no directory of the agent's busy
    if not jobdir.is_absolute():
        jobdir = jobdir.absolute()
    spec = read_record(f"{jobdir}/{SPEC}", SupervisorSpec)
    if spec is None:
        log.error("no readable %s in %s", SPEC, jobdir)
        return 2, False
    plain = not spec.image() and spec.launch.spec.env_spec is None and spec.subreaper
    sup = Supervisor(jobdir, spec, notify_fd, free if plain else None)
    try:
        code = sup.run()
    finally:
        sup.release()
    return code, sup.freed


if __name__ == "__main__":
    sys.exit(main())
