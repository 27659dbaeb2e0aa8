"""The agent's table of job ranks, backed by ``STATE/jobs/<job>.<attempt>.<rank>/``.

The directory is the truth, the table a cache of it: an agent that restarts
(or is ``kill -9``-ed) builds a new table on the same directory and re-adopts
every rank — running ones are watched again, finished ones are reported again
until schedd acknowledges them. A rank is:

* running: its supervisor (pid *and* creation time, so a reused pid does not
  count) is alive and there is no ``exit.json``;
* finished: ``exit.json`` is there and schedd has not acknowledged it;
* gone: acknowledged — its directory is removed.

A supervisor that died without writing ``exit.json`` (kill -9, OOM killer) is
reported as status 256+9, how="killed" with a comment saying so — or as
EXIT_LAUNCH_FAILED if the job had not started — after its job's processes
(process group, then anything carrying the job cookie) have been SIGKILLed;
the agent writes that ``exit.json`` itself so it survives the next restart too.

Watching is event-driven. A rank we launched talks on a pipe its supervisor
inherited: "S" and its started record once started, "E" and its exit record
once that is on disk (the supervisor process may live on to serve the next
rank: see :mod:`nodeagent.forkserver`), or the pipe's end when the supervisor
dies (see :mod:`nodeagent.jobdir`: the records are those of the files, which
are read only when the pipe did not carry them). A re-adopted rank has
no pipe: its end is its supervisor's exit, a ``pidfd`` becoming readable (a
supervisor whose agent died serves no further rank). Only two corner cases
poll, every 50 ms: kernels without pidfd, and re-adopted ranks whose job had
not started yet.

Kill and Signal requests are files in the rank's ``ctl/`` plus a nudge signal
(:data:`nodeagent.jobdir.WAKE_SIGNAL`): the supervisor acts on them, so the
process group id is never used by the agent while the supervisor owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import select
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import msgspec
import psutil

from nodeagent import proctree
from nodeagent.cgroups import Layout, RankGroup
from nodeagent.forkserver import Forkserver
from nodeagent.jobdir import (
    EXIT,
    LOG,
    PID,
    SPEC,
    STARTED,
    WAKE_SIGNAL,
    ProcessRecord,
    StartedRecord,
    SupervisorSpec,
    decode_record,
    parse_signal,
    rank_dirname,
    read_exit,
    read_record,
    scratch_dir,
    write_control,
    write_record,
)
from schedd.protocol import EXIT_LAUNCH_FAILED, Exited, JobSample, Kill, Launch, Preparing, RunningJob, Signal, Started

__all__ = ["JobTable", "RankKey", "Runtime"]

log = logging.getLogger("nodeagent.jobs")

_POLL_S = 0.05
#: What a docker node's supervisors use to start a container, imported once.
_DOCKER_MODULES = ("docker", "nodeagent.runtime.runner")
_ACKED_MEMORY = 4096  # recently acknowledged ranks remembered, to refuse a replayed Launch
_R = TypeVar("_R", StartedRecord, Exited)


class RankKey(NamedTuple):
    job_id: str
    attempt: int
    rank: int

    def __str__(self) -> str:
        return f"{self.job_id}/{self.attempt}/{self.rank}"


@dataclass
class _Rank:
    key: RankKey
    dir: Path
    spec: SupervisorSpec
    proc: ProcessRecord | None = None
    notify: int | None = None  # read end of the supervisor's "started" pipe
    pidfd: int | None = None  # the supervisor's pidfd, readable once it exits
    heard: bytes = b""  # the start of a line on the notify pipe whose end is still to come
    started: StartedRecord | None = None
    exited: Exited | None = None
    told_exit: Exited | None = None  # the exit record as its "E" line carried it
    launched_at: float = field(default_factory=time.time)
    sampler: proctree.TreeSampler = field(default_factory=proctree.TreeSampler)
    peak_rss_mb: int = 0
    container_id: str = ""  # the engine's id of the rank's container, once its runner has written it
    cpu_mark: tuple[float, float] | None = None  # (monotonic, CPU s) of a container's last sample
    poller: asyncio.Task[None] | None = None  # only in the corner cases that poll
    watched: bool = False  # until its end was handled


@dataclass(frozen=True)
class Runtime:
    """How this node runs jobs: ``kind`` "process" (a job naming ``-l container=``
    still gets a container when an engine answers) or "docker" (every job in a
    container of ``image`` unless it names one). ``gpus``: the GPUs are real,
    handed to containers as nvidia device requests."""

    kind: str = "process"
    image: str = ""
    host: str = ""
    gpus: bool = False


class JobTable:
    """Ranks on this node; ``events`` yields Started/Exited as they happen.

    Use inside a running event loop: ``await table.open()`` re-adopts what is
    on disk, ``await table.close()`` stops watching (the jobs keep running).
    """

    def __init__(
        self, state_dir: Path, *, node: str = "", scratch_root: str = "", switch_user: bool = True,
        python: str = sys.executable, env_cache: str | None = None, env_cache_mb: int = 20 * 1024,
        env_installer: str = "auto", runtime: Runtime = Runtime(), cgroups: Layout | None = None,
    ) -> None:
        self.root = state_dir / "jobs"
        #: where captured environments are rebuilt (nodeagent.env.pack); default STATE/envs
        self.env_cache = str(state_dir / "envs") if env_cache is None else env_cache
        self.env_cache_mb = env_cache_mb
        self.env_installer = env_installer
        self.node = node
        self.scratch_root = scratch_root
        self.switch_user = switch_user
        self.runtime = runtime
        #: where ranks get cgroups of their own (nodeagent.cgroups); None: none
        self.cgroups = cgroups
        self.python = python
        #: The agent's environment, which supervisors start with (and the job cookie):
        #: read once (os.environ decodes every variable on each copy, ~0.1 ms a launch).
        self._environ = dict(os.environ)
        #: Forks supervisors from a pre-imported process (see nodeagent.forkserver),
        #: which has the environment above; ``posix_spawn`` of a fresh interpreter is the fallback.
        self.forkserver = Forkserver(python, _DOCKER_MODULES if runtime.kind == "docker" else (), self._environ)
        self.events: asyncio.Queue[Started | Exited | Preparing] = asyncio.Queue()
        self._ranks: dict[RankKey, _Rank] = {}
        self._fds = _Readable()
        #: recently acknowledged ranks, oldest first: a dict, whose lookup is O(1) (a full
        #: deque's ``in`` compared a launch's key with each of its 4,096: ~0.07 ms a launch)
        self._acked: dict[RankKey, None] = {}
        #: Variables the agent adds to a rank's environment (rank 0's MLflow
        #: tracking URI, from the session: nodeagent.reporting).
        self.extra_env: Callable[[Launch], dict[str, str]] = lambda msg: {}
        #: Called with a rank's key just before its directory is removed (on Ack):
        #: the metrics follower opens what it has not read yet.
        self.before_forget: Callable[[RankKey, Path, SupervisorSpec], None] = lambda key, path, spec: None

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Re-adopt every rank directory; O(ranks)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.iterdir()):
            spec = read_record(path / SPEC, SupervisorSpec) if path.is_dir() else None
            if spec is None:
                if path.is_dir() and not (path / SPEC).exists():  # no spec: nothing was ever spawned
                    log.warning("removing %s: an unfinished launch", path)
                    shutil.rmtree(path, ignore_errors=True)
                elif path.is_dir():
                    log.error("leaving %s alone: its %s is unreadable", path, SPEC)
                continue
            key = RankKey(spec.launch.job_id, spec.launch.attempt, spec.launch.rank)
            rank = _Rank(key, path, spec, proc=read_record(path / PID, ProcessRecord))
            rank.started = read_record(path / STARTED, StartedRecord)
            rank.exited = read_exit(path)
            self._ranks[key] = rank
            if rank.exited is None:
                if rank.proc is not None and proctree.is_alive(rank.proc.pid, rank.proc.create_time):
                    log.info("re-adopted %s (supervisor pid %d)", key, rank.proc.pid)
                    self._watch(rank)
                elif not await self._readopt_container(rank):
                    self._lost(rank)
        if self.runtime.kind == "docker" or self.runtime.host or os.environ.get("DOCKER_HOST") \
                or os.path.exists("/var/run/docker.sock"):
            await asyncio.to_thread(self.sweep_containers)

    async def _readopt_container(self, rank: _Rank) -> bool:
        """A container rank whose supervisor died (with the runner: the agent's pod
        restarted, say) while its container lives on: start a supervisor that
        follows the container again. False when there is nothing to follow."""
        if not rank.spec.image() or rank.started is None:
            return False
        from nodeagent.runtime import engine

        k = rank.key
        name = rank.spec.container()
        if not await asyncio.to_thread(engine.exists, rank.spec.docker_host, name):
            return False
        if proctree.is_alive(rank.started.pid, rank.started.create_time):
            proctree.killpg(rank.started.pgid, signal.SIGKILL)  # a runner left behind: one follower only
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        try:
            rank.proc = self._spawn(rank.dir, {proctree.COOKIE_ENV: rank.spec.cookie}, wfd)
        except (OSError, psutil.Error) as exc:
            os.close(rfd)
            log.error("cannot restart the supervisor of %s: %s", k, exc)
            return False
        finally:
            os.close(wfd)
        rank.notify = rfd
        log.info("re-attaching %s to its container %s (supervisor pid %d)", k, name, rank.proc.pid)
        self._watch(rank)
        return True

    def sweep_containers(self) -> list[str]:
        """Remove this node's containers (found by label) that belong to no running
        rank: left by a rank whose supervisor and runner died with the machine's
        agent pod, for instance. Blocking (engine calls): run in a thread."""
        from nodeagent.runtime import engine

        keep = {r.spec.container() for r in self._ranks.values() if r.exited is None}
        try:
            stale = engine.orphans(self.runtime.host, self.node, str(self.root), keep)
        except Exception as exc:  # noqa: BLE001 - no engine now: nothing to sweep, say so
            log.error("cannot list this node's containers: %s", exc)
            return []
        for name in stale:
            log.warning("removing container %s: it belongs to no running job rank", name)
            engine.remove(self.runtime.host, name)
        return stale

    async def close(self) -> None:
        """Stop watching; every job keeps running under its supervisor."""
        tasks = [r.poller for r in self._ranks.values() if r.poller is not None]
        for rank in self._ranks.values():
            self._unwatch(rank)  # closes its fds, watched or not
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fds.close()
        self.forkserver.close()

    # ------------------------------------------------------------ what schedd asks

    def launch(self, msg: Launch) -> bool:
        """Spawn a supervisor for this rank; False (and nothing done) if it exists or existed."""
        key = RankKey(msg.job_id, msg.attempt, msg.rank)
        if key in self._ranks or key in self._acked:
            log.info("launch %s ignored: already known", key)
            return False
        path = self.root / rank_dirname(*key)
        extra = self.extra_env(msg)
        if extra:
            msg = msgspec.structs.replace(msg, spec=msgspec.structs.replace(msg.spec, env={**msg.spec.env, **extra}))
        spec = SupervisorSpec(
            launch=msg, cookie=secrets.token_hex(8), node=self.node, scratch_root=self.scratch_root,
            switch_user=self.switch_user, env_cache=self.env_cache, env_cache_mb=self.env_cache_mb,
            env_installer=self.env_installer, runtime=self.runtime.kind, docker_image=self.runtime.image,
            docker_host=self.runtime.host, docker_gpus=self.runtime.gpus, cgroups=self.cgroups,
        )
        rank = _Rank(key, path, spec)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            log.warning("launch %s ignored: %s exists", key, path)
            return False
        except OSError as exc:  # the state dir is broken: the exit is kept in memory only
            self._ranks[key] = rank
            self._record(rank, self._exit(rank, EXIT_LAUNCH_FAILED, "launch_failed", f"cannot create {path}: {exc}"))
            return True
        self._ranks[key] = rank
        try:
            write_record(f"{path}/{SPEC}", spec)  # strings: a Path join costs more than the write's syscalls
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            self._record(rank, self._exit(rank, EXIT_LAUNCH_FAILED, "launch_failed", f"cannot write {SPEC}: {exc}"))
            return True
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        try:
            rank.proc = self._spawn(path, {proctree.COOKIE_ENV: spec.cookie}, wfd)
        except (OSError, psutil.Error) as exc:
            os.close(rfd)
            exited = self._exit(rank, EXIT_LAUNCH_FAILED, "launch_failed", f"cannot start the supervisor: {exc}")
            with contextlib.suppress(OSError):
                write_record(path / EXIT, exited)
            self._record(rank, exited)
            return True
        finally:
            os.close(wfd)
        rank.notify = rfd
        log.debug("launch %s: %s (supervisor pid %d)", key, msg.spec.name, rank.proc.pid)
        self._watch(rank, fresh=True)
        return True

    def _spawn(self, path: Path, extra: dict[str, str], notify_fd: int) -> ProcessRecord:
        """Start the supervisor in its own session, its environment the agent's with
        ``extra`` set, stdio to its log, the notify pipe inherited;
        its ``supervisor.pid`` is on disk when this returns (the supervisor writes it
        first thing, before it starts the job; this writes it too when it exec'd one).

        Forked by the forkserver (a few ms) when it answers, else a fresh
        interpreter by ``posix_spawn`` (~100 ms of CPU) — rather than
        ``subprocess``: a Popen object would want to own the child's life (and
        warn when dropped while it runs), while a supervisor is meant to outlive
        this agent.
        """
        log_fd = os.open(f"{path}/{LOG}", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            try:
                pid, created = self.forkserver.spawn(str(path), extra, notify_fd, log_fd)
                return ProcessRecord(pid, created)
            except OSError as exc:
                log.warning("%s; starting the supervisor as a new process", exc)
            argv = [self.python, "-m", "nodeagent.supervisor", str(path), "--notify-fd", str(notify_fd)]
            os.set_inheritable(notify_fd, True)  # only the loop thread spawns: no other child inherits it
            pid = os.posix_spawn(self.python, argv, {**self._environ, **extra}, setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ])
        finally:
            os.close(log_fd)
        record = ProcessRecord(pid, proctree.create_time(pid))
        write_record(path / PID, record)
        return record

    def kill(self, key: RankKey, kill_delay_s: float | None = None, status: int | None = None) -> bool:
        """Ask the supervisor to kill the rank (delay None: the launch's); False if not running here."""
        rank = self._ranks.get(key)
        delay = kill_delay_s if kill_delay_s is not None or rank is None else rank.spec.launch.spec.kill_delay_s
        msg = Kill(job_id=key.job_id, attempt=key.attempt, rank=key.rank, kill_delay_s=delay or 0.0, status=status)
        return self._request(key, msg)

    def signal(self, key: RankKey, name: str) -> bool:
        """Forward a signal to the rank's process group (via its supervisor)."""
        try:
            parse_signal(name)
        except ValueError as exc:
            log.warning("signal %s refused: %s", key, exc)
            return False
        return self._request(key, Signal(job_id=key.job_id, attempt=key.attempt, rank=key.rank, signal=name))

    def ack(self, key: RankKey) -> bool:
        """schedd recorded the exit: forget the rank (its directory goes)."""
        rank = self._ranks.get(key)
        if rank is None or rank.exited is None:
            log.info("ack %s ignored: %s", key, "unknown" if rank is None else "still running")
            return False
        self.before_forget(key, rank.dir, rank.spec)
        del self._ranks[key]
        self._acked[key] = None
        if len(self._acked) > _ACKED_MEMORY:
            del self._acked[next(iter(self._acked))]
        _remove_dir(rank.dir)
        return True

    # ------------------------------------------------------------ what the agent reports

    def running(self) -> list[RunningJob]:
        """Ranks not finished (started or about to), for Register."""
        return [
            RunningJob(job_id=k.job_id, attempt=k.attempt, rank=k.rank,
                       start_time=r.started.start_time if r.started else r.launched_at)
            for k, r in self._ranks.items() if r.exited is None
        ]

    def finished(self) -> list[Exited]:
        """Exits not yet acknowledged, for Register (this is how they are resent)."""
        return [r.exited for r in self._ranks.values() if r.exited is not None]

    def get(self, key: RankKey) -> tuple[ProcessRecord | None, StartedRecord | None, Exited | None] | None:
        """(supervisor, started, exited) records of a rank, or None if unknown."""
        rank = self._ranks.get(key)
        return None if rank is None else (rank.proc, rank.started, rank.exited)

    def rank_dirs(self) -> list[tuple[RankKey, Path, SupervisorSpec, bool]]:
        """(key, directory, spec, exited) of every rank here: the metrics follower's list."""
        return [(k, r.dir, r.spec, r.exited is not None) for k, r in self._ranks.items()]

    def samples(self) -> list[JobSample]:
        """CPU and memory of each running rank's process tree. Blocking (psutil): run in a thread."""
        out = []
        for key, rank in list(self._ranks.items()):
            if rank.exited is not None or rank.proc is None:
                continue
            if rank.spec.container():
                reading = self._container_sample(rank)
                if reading is None:
                    continue
                cpu, rss = reading
            else:
                sup = proctree.process(rank.proc.pid, rank.proc.create_time)
                if sup is None:
                    continue
                cpu, rss = rank.sampler.sample(sup)
            rank.peak_rss_mb = max(rank.peak_rss_mb, rss)
            out.append(JobSample(job_id=key.job_id, attempt=key.attempt, rank=key.rank,
                                 cpu_pct=round(cpu, 1), rss_mb=rss, peak_rss_mb=rank.peak_rss_mb))
        return out

    @staticmethod
    def _container_sample(rank: _Rank) -> tuple[float, int] | None:
        """(cpu %, memory MB) of a rank's container from its cgroup: its processes are
        the engine's children, not the supervisor's, so a process-tree walk misses them."""
        from nodeagent.runtime.containerize import RESULT
        from nodeagent.runtime.engine import ContainerResult, cgroup_usage

        if not rank.container_id:  # read once: the runner writes it when the container has started
            result = read_record(rank.dir / RESULT, ContainerResult)
            rank.container_id = result.container_id if result is not None else ""
        usage = cgroup_usage(rank.container_id) if rank.container_id else None
        if usage is None:
            return None
        now = time.monotonic()
        last, rank.cpu_mark = rank.cpu_mark, (now, usage.cpu_s)
        cpu = 100 * (usage.cpu_s - last[1]) / (now - last[0]) if last is not None and now > last[0] else 0.0
        return max(cpu, 0.0), usage.mem_bytes >> 20

    # ------------------------------------------------------------ watching

    def _request(self, key: RankKey, msg: Kill | Signal) -> bool:
        rank = self._ranks.get(key)
        if rank is None or rank.exited is not None or rank.proc is None:
            log.info("%s %s ignored: not running here", type(msg).__name__.lower(), key)
            return False
        write_control(rank.dir, msg)
        if proctree.is_alive(rank.proc.pid, rank.proc.create_time):
            try:
                os.kill(rank.proc.pid, WAKE_SIGNAL)
            except ProcessLookupError:
                pass
        return True

    def _watch(self, rank: _Rank, fresh: bool = False) -> None:
        """Follow the rank until it is over, with fd callbacks rather than a task of
        its own (tasks and futures per rank were a good part of the agent's CPU on
        short jobs): its notify pipe says "E" (the supervisor recorded the exit) or
        ends (it died), or its supervisor process exits (a re-adopted rank has no
        pipe; a supervisor whose agent died serves no rank after this one). Only the
        corner cases poll: no pidfd, and a re-adopted rank not started yet.

        ``fresh``: the supervisor's pid was handed over by its spawn in this very
        turn of the loop, so its pidfd names it (a pid is reused only after the
        kernel went round every other one), and needs no check of its identity."""
        assert rank.proc is not None
        loop = asyncio.get_running_loop()
        rank.watched = True
        if rank.notify is not None:
            self._fds.add(rank.notify, lambda: self._on_notify(rank))
        try:
            rank.pidfd = os.pidfd_open(rank.proc.pid)
        except ProcessLookupError:
            loop.call_soon(self._end, rank)
            return
        except (OSError, AttributeError):  # no pidfd on this kernel
            rank.poller = loop.create_task(self._poll(rank), name=f"poll {rank.key}")
            return
        if not fresh and not proctree.is_alive(rank.proc.pid, rank.proc.create_time):  # after opening: no reuse race
            loop.call_soon(self._end, rank)
            return
        self._fds.add(rank.pidfd, lambda: self._end(rank))
        if rank.notify is None and rank.started is None:
            rank.poller = loop.create_task(self._poll(rank), name=f"poll {rank.key}")

    async def _poll(self, rank: _Rank) -> None:
        """The corner cases: a re-adopted rank's start (no pipe to say it), and without
        pidfd its supervisor's exit; every 50 ms."""
        assert rank.proc is not None
        while rank.notify is None and rank.started is None:
            if (rank.dir / STARTED).exists():
                self._note_started(rank)
                break
            await asyncio.sleep(_POLL_S)
        if rank.pidfd is not None:
            rank.poller = None
            return
        while proctree.is_alive(rank.proc.pid, rank.proc.create_time):
            await asyncio.sleep(_POLL_S)
        rank.poller = None
        self._end(rank)

    def _on_notify(self, rank: _Rank) -> None:
        """The notify pipe is readable: records, or its end (the supervisor died)."""
        assert rank.notify is not None
        try:
            data = os.read(rank.notify, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            try:
                rank.heard = self._told(rank, rank.heard + data)
            except Exception:  # noqa: BLE001 - the rank's end is still to be told
                log.exception("reading the notify pipe of %s failed", rank.key)
                rank.heard = b""
            if rank.heard != b"E":
                return
        self._end(rank)

    def _unwatch(self, rank: _Rank) -> None:
        """Stop following the rank: its callbacks removed *before* its fds are closed
        (a closed fd number is soon reused by another rank's pipe or pidfd)."""
        rank.watched = False
        for fd in (rank.notify, rank.pidfd):
            if fd is not None:
                self._fds.remove(fd)
                os.close(fd)
        rank.notify = rank.pidfd = None
        if rank.poller is not None:
            rank.poller.cancel()
            rank.poller = None

    def _end(self, rank: _Rank) -> None:
        """The rank is over: its exit from disk, or the exit the agent writes for it."""
        if not rank.watched:  # both of its fds said so in the same turn
            return
        self._unwatch(rank)
        assert rank.proc is not None
        if rank.started is None:  # started, then ended before the pipe said so (or no pipe)
            self._note_started(rank)
        with contextlib.suppress(ChildProcessError):  # reap it if it was our child
            os.waitpid(rank.proc.pid, os.WNOHANG)
        exited = rank.told_exit or read_exit(rank.dir)
        if exited is None:
            self._lost(rank)
        else:
            self._record(rank, exited)

    def _told(self, rank: _Rank, buf: bytes) -> bytes:
        """Act on the whole lines in ``buf`` (see :mod:`nodeagent.jobdir`); what is left
        of a line to come (a read may cut one), or ``b"E"`` once the exit is recorded
        (the rank is over)."""
        while buf:
            line, sep, rest = buf.partition(b"\n")
            if not sep:
                return buf
            kind, body = line[:1], line[1:]
            if kind == b"E":
                rank.told_exit = self._told_record(rank, body, Exited)
                return b"E"
            if kind == b"P":
                k = rank.key
                self.events.put_nowait(Preparing(job_id=k.job_id, attempt=k.attempt, rank=k.rank,
                                                 comment=body.decode(errors="replace")))
            elif kind == b"S" and rank.started is None:
                self._note_started(rank, self._told_record(rank, body, StartedRecord))
            buf = rest  # or a line no supervisor sends
        return b""

    @staticmethod
    def _told_record(rank: _Rank, body: bytes, kind: type[_R]) -> _R | None:
        """The record a line carried; None when it carried none (the file is read
        then), or not this rank's exit."""
        record = decode_record(body, kind) if body else None
        if isinstance(record, Exited) and (record.job_id, record.attempt, record.rank) != rank.key:
            return None
        return record

    def _note_started(self, rank: _Rank, told: StartedRecord | None = None) -> None:
        """The job started: its record as the pipe carried it, else from the file."""
        rank.started = told or read_record(f"{rank.dir}/{STARTED}", StartedRecord)
        if rank.started is not None:
            k = rank.key
            self.events.put_nowait(Started(job_id=k.job_id, attempt=k.attempt, rank=k.rank, time=rank.started.start_time))

    def _record(self, rank: _Rank, exited: Exited) -> None:
        rank.exited = exited
        # one line a rank at INFO was ~10 % of the agent's CPU on short jobs: the unusual ends only
        log.log(logging.DEBUG if exited.status == 0 and not exited.comment else logging.INFO,
                "exit %s: status %d (%s)%s", rank.key, exited.status, exited.how,
                f": {exited.comment}" if exited.comment else "")
        self.events.put_nowait(exited)

    def _lost(self, rank: _Rank) -> None:
        """The supervisor died without exit.json: kill what it left, write the exit for it."""
        exited = read_exit(rank.dir)  # it may have finished between our two looks
        if exited is not None:
            self._record(rank, exited)
            return
        started = rank.started or read_record(rank.dir / STARTED, StartedRecord)
        if started is not None and proctree.is_alive(started.pid, started.create_time):
            proctree.killpg(started.pgid, signal.SIGKILL)
        if rank.spec.cgroups is not None:  # its group holds every process it left
            group = RankGroup(rank.spec.cgroups, rank.dir.name)
            group.kill()
            group.remove()  # once they are gone; a later agent's sweep otherwise
        strays = proctree.by_cookie(rank.spec.cookie, exclude=os.getpid())
        proctree.send_all(strays, signal.SIGKILL)
        if rank.spec.container():  # an engine call: off the event loop, the exit does not wait for it
            from nodeagent.runtime import engine

            asyncio.get_running_loop().run_in_executor(None, engine.remove, rank.spec.docker_host, rank.spec.container())
        shutil.rmtree(scratch_dir(rank.dir, rank.spec, switch_user=True), ignore_errors=True)
        shutil.rmtree(rank.dir / "scratch", ignore_errors=True)
        who = f"supervisor pid {rank.proc.pid}" if rank.proc else "the supervisor (no pid recorded)"
        if started is None:
            exited = self._exit(rank, EXIT_LAUNCH_FAILED, "launch_failed", f"{who} died before starting the job")
        else:
            exited = self._exit(rank, 256 + signal.SIGKILL, "killed",
                                f"{who} died without recording an exit (killed or crashed); "
                                f"the job's processes were killed with SIGKILL", start=started.start_time)
        write_record(rank.dir / EXIT, exited)
        self._record(rank, exited)

    def _exit(self, rank: _Rank, status: int, how: str, comment: str, start: float | None = None) -> Exited:
        now = time.time()
        k = rank.key
        return Exited(job_id=k.job_id, attempt=k.attempt, rank=k.rank, status=status, how=how,
                      start_time=start or now, end_time=now, peak_rss_mb=rank.peak_rss_mb, comment=comment)


def _remove_dir(path: Path) -> None:
    """Remove a finished rank's directory: its few files an unlink each, ``shutil.rmtree``
    (which follows no link) only for a directory in it — a cheaper walk than rmtree's
    own for the files of every rank."""
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


class _Readable:
    """Calls back when an fd is readable, for every rank's notify pipe and pidfd
    through one epoll that is itself one reader of the event loop: a rank's fd
    is registered and unregistered with a system call each, rather than the
    loop's per-fd handles and selector keys (~0.1 ms a rank). Level-triggered:
    a callback that leaves data unread is called again."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._calls: dict[int, Callable[[], None]] = {}

    def add(self, fd: int, call: Callable[[], None]) -> None:
        if self._epoll is None:
            self._epoll = select.epoll()
            asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._ready)
        self._epoll.register(fd, select.EPOLLIN)
        self._calls[fd] = call

    def remove(self, fd: int) -> None:
        """Forget ``fd``; before it is closed (a reused number is another rank's)."""
        if self._calls.pop(fd, None) is not None and self._epoll is not None:
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _events in self._epoll.poll(0):
            call = self._calls.get(fd)  # None: removed by a callback before it in this batch
            if call is None:
                continue
            try:
                call()
            except Exception:  # noqa: BLE001 - one rank's failure must not stop the others' reports
                log.exception("following a rank failed (fd %d)", fd)

    def close(self) -> None:
        if self._epoll is not None:
            asyncio.get_running_loop().remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        self._calls.clear()


def stop_supervisors(state_root: Path, sig: signal.Signals = signal.SIGTERM) -> int:
    """Signal every live supervisor recorded under ``state_root`` (any agent's
    state dir below it); a supervisor ends its job on SIGTERM. For tear-down
    (tests, benchmarks): forked supervisors carry the forkserver's command
    line, so they cannot be told apart by ``pgrep -f``. Returns how many."""
    import glob  # glob, unlike Path.rglob, shrugs off directories removed while it walks

    hits = 0
    for pid_file in glob.glob(str(state_root / "**" / PID), recursive=True):
        rec = read_record(Path(pid_file), ProcessRecord)
        proc = proctree.process(rec.pid, rec.create_time) if rec is not None else None
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
                hits += 1
    return hits
