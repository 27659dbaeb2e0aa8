"""The runner of a containerised rank, forked by its supervisor (:func:`fork_runner`;
by hand: ``python -m nodeagent.runtime.runner SPEC.json``).

The supervisor starts it as the job's top process, its stdout and stderr being
the job's PBS output files; it does what ``docker run`` does for a terminal:

    check the mounts as the job's owner (nodeagent.runtime.containerize.reachable)
    -> create (labels, limits, GPUs, mounts, host network, docker-init as pid 1,
       no-new-privileges, no capabilities)
    -> start -> copy the container's stdout/stderr into ours (a thread)
    -> forward every signal we get to the container -> wait -> remove
    -> exit as the container did

So the supervisor's machinery applies unchanged: walltime and qdel send
SIGTERM to this process group (forwarded: the job sees SIGTERM), ``qsig``
reaches the job, the exit code is the job's. Two cases need the supervisor's
help, by container name (:mod:`nodeagent.runtime.engine`): its SIGKILL escalation
kills this runner, so it kills the container too; and it removes the container
when the runner could not. A container that dies of signal N (exit code 128+N
with N a signal we forwarded, or SIGKILL) makes the runner die of N as well, so
the exit status is PBS's 256+N as for a process. The container's memory limit
is the cgroup's, not the supervisor's RSS sampling; an OOM kill is reported in
the :class:`~nodeagent.runtime.engine.ContainerResult` so the job ends as
EXIT_MEM. Peak memory is the cgroup's high-water mark and CPU time the
cgroup's (v1 or v2), read every 0.2 s while the container runs (what it
uses in its last 0.2 s is missed: the engine removes the cgroup with it).

The container can never gain privileges (:data:`HARDENING`): it runs as the
job's user with ``no-new-privileges`` (a setuid-root file in the image runs
as the user, ``setuid(0)`` fails) and an empty capability bounding set, not
privileged. Root in a container on the host network with Docker's default
capabilities could bind the node's privileged ports, open raw sockets on its
interfaces and override file permissions in the bind mounts; a job needs
none of that (a non-root process has no effective capabilities anyway, so
dropping them all only removes the way back). Mounts are of the paths the
owner reached (``type=bind``: a source that is gone is an error, never a
directory the engine creates as root).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from nodeagent.runtime.containerize import reachable
from nodeagent.runtime.engine import ContainerResult, ContainerSpec, cgroup_usage, client
from nodeagent.jobdir import read_record, write_atomic

if TYPE_CHECKING:
    import docker

__all__ = ["Adopt", "Forked", "HARDENING", "fork_runner", "main", "run"]

log = logging.getLogger("nodeagent.runtime.runner")

#: Signals passed on to the container (SIGKILL and SIGSTOP cannot be caught).
_FORWARD = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGALRM, signal.SIGCONT, signal.SIGTSTP, signal.SIGXCPU)
_SAMPLE_S = 0.2  # how often the cgroup's memory high-water mark and CPU time are read
#: Host-config settings that keep a job's container unprivileged (why: the module's docstring).
#: No capability is added back: nothing schedd runs needs one.
HARDENING: dict[str, Any] = {"security_opt": ["no-new-privileges"], "cap_drop": ["ALL"], "privileged": False}


def _create(api: Any, spec: ContainerSpec, sources: dict[str, str] | None = None) -> str:
    """Create the rank's container; ``sources``: the host path to mount at each of
    ``spec.mounts`` (the real paths :func:`reachable` found; default: itself)."""
    import docker.types

    image_env = api.inspect_image(spec.image).get("Config", {}).get("Env") or []
    path = next((e[5:] for e in image_env if e.startswith("PATH=")), "/usr/local/bin:/usr/bin:/bin")
    env = dict(spec.env)
    env["PATH"] = f"{spec.path_prefix}:{path}" if spec.path_prefix else path
    requests = [docker.types.DeviceRequest(device_ids=spec.gpu_ids, capabilities=[["gpu"]])] if spec.gpu_ids else []
    host_config = api.create_host_config(
        mounts=[docker.types.Mount(p, (sources or {}).get(p, p), type="bind") for p in spec.mounts],
        network_mode="host", init=True, device_requests=requests or None, **HARDENING,
        nano_cpus=spec.nano_cpus or None, shm_size=f"{spec.shm_mb}m",
        mem_limit=f"{spec.mem_mb}m" if spec.mem_mb else None,
        memswap_limit=f"{spec.mem_mb}m" if spec.mem_mb else None,  # no swap beyond the request
        group_add=spec.group_add or None,
    )
    created = api.create_container(
        spec.image, command=spec.command, name=spec.name, environment=env, user=spec.user,
        working_dir=spec.workdir, labels=spec.labels, host_config=host_config, stdin_open=False, tty=False,
    )
    return str(created["Id"])


def _copy_output(stream: Iterator[tuple[bytes | None, bytes | None]]) -> None:
    """Container stdout/stderr -> our fds 1/2, until the container's streams close."""
    for out, err in stream:
        for fd, data in ((1, out), (2, err)):
            while data:
                data = data[os.write(fd, data):]


class _Runner:
    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.api: docker.APIClient | None = None
        self.result = ContainerResult()
        self.forwarded: set[int] = set()
        self.done_r, self.done_w = os.pipe2(os.O_CLOEXEC)

    def run(self, adopt: Adopt | None = None) -> int:
        """Create and follow the container; with ``adopt``, follow the one a
        previous runner started, the output it missed copied first."""
        wake = self._signals()
        try:
            self.api = client(self.spec.host).api
            stream = self._start() if adopt is None else self._adopt(adopt)
            self._write()  # the agent reads the container id to sample its cgroup
        except Exception as exc:  # noqa: BLE001 - the engine's message is the job's comment
            self.result.error = _explain(exc)
            self._write()
            print(f"schedd: cannot {'start' if adopt is None else 're-attach to'} the container: "
                  f"{self.result.error}", file=sys.stderr)
            if self.api is not None:
                with contextlib.suppress(Exception):
                    self.api.remove_container(self.spec.name, force=True)
            return 125  # as docker run: the engine failed
        api = self.api
        cid = self.result.container_id
        copier = threading.Thread(target=_copy_output, args=(stream,), daemon=True)
        copier.start()
        threading.Thread(target=self._wait, args=(cid,), daemon=True).start()
        self._follow(wake, cid)
        copier.join(timeout=10.0)  # the streams close when the container ends
        with contextlib.suppress(Exception):
            state = api.inspect_container(cid)["State"]
            self.result.oom_killed = bool(state.get("OOMKilled"))
            api.remove_container(cid, force=True)
        self._write()
        return self._exit_code()

    def _start(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        assert self.api is not None
        sources = reachable(self.spec)  # as the owner, before the engine (root) mounts anything
        cid = self.result.container_id = _create(self.api, self.spec, sources)
        # attached before the start (the request is made here): a job that is
        # over at once cannot end before we listen, and nothing is lost
        stream = self.api.attach(cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        self.api.start(cid)
        self.result.started = True
        return stream

    def _adopt(self, adopt: Adopt) -> Iterator[tuple[bytes | None, bytes | None]]:
        """Follow a container whose runner is gone (its agent's pod restarted, say):
        attach for what comes, then copy what the engine logged up to now past
        the bytes the output files already hold (stdout and stderr asked for
        apart, or together when they are one file). A line logged in the
        instant between the two calls may be copied twice; none is lost while
        the engine keeps the container's log."""
        assert self.api is not None
        info = self.api.inspect_container(self.spec.name)
        cid = self.result.container_id = str(info["Id"])
        self.result.started = True
        running = bool(info["State"].get("Running"))
        stream = self.api.attach(cid, stdout=True, stderr=True, stream=True, logs=False, demux=True) if running else iter(())
        until = time.time()
        parts = [(1, True, True, adopt.stdout_bytes)] if adopt.joined else \
            [(1, True, False, adopt.stdout_bytes), (2, False, True, adopt.stderr_bytes)]
        for fd, out, err, skip in parts:
            for chunk in self.api.logs(cid, stdout=out, stderr=err, stream=True, until=until):
                cut = min(skip, len(chunk))
                skip -= cut
                data = chunk[cut:]
                while data:
                    data = data[os.write(fd, data):]
        return stream

    def _signals(self) -> int:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in _FORWARD:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        return rfd

    def _wait(self, cid: str) -> None:
        assert self.api is not None
        try:
            self.result.exit_code = int(self.api.wait(cid, timeout=None)["StatusCode"])
        except Exception as exc:  # noqa: BLE001 - lost the engine: the container's fate is unknown
            self.result.error = f"lost the docker engine while waiting: {_explain(exc)}"
        os.write(self.done_w, b"x")

    def _follow(self, wake: int, cid: str) -> None:
        """Forward signals until the container has ended; sample its memory meanwhile."""
        while True:
            ready, _, _ = select.select([wake, self.done_r], [], [], _SAMPLE_S)
            usage = cgroup_usage(cid)
            if usage is not None:
                self.result.peak_mem_mb = max(self.result.peak_mem_mb, usage.peak_bytes >> 20)
                self.result.cpu_s = round(usage.cpu_s, 3)
            if self.done_r in ready:
                return
            if wake in ready:
                for num in set(os.read(wake, 512)):
                    self.forwarded.add(num)
                    with contextlib.suppress(Exception):
                        assert self.api is not None
                        self.api.kill(cid, signal=num)

    def _write(self) -> None:
        write_atomic(Path(self.spec.result_path), msgspec.json.encode(self.result))

    def _exit_code(self) -> int:
        code = self.result.exit_code
        if code is None:
            return 125
        sig = code - 128
        if sig in self.forwarded or (sig == signal.SIGKILL and code == 137):
            signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            os.kill(os.getpid(), sig)  # die as the job did: the supervisor records 256+N
        return code


def _explain(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()[:500]


@dataclass(frozen=True)
class Adopt:
    """What the output files hold already when a runner follows a container again."""

    stdout_bytes: int
    stderr_bytes: int
    joined: bool  # stdout and stderr are one file (qsub -j oe)


@dataclass
class Forked:
    """A runner forked by the supervisor: what it needs of a Popen (pid, returncode)."""

    pid: int
    returncode: int | None = None


def fork_runner(spec_path: Path, stdout: int, stderr: int, adopt: Adopt | None = None) -> Forked:
    """Fork the runner from this (supervisor) process, which on a docker node has
    the SDK imported already (see nodeagent.forkserver): ~100 ms less per rank
    than a fresh ``python -m nodeagent.runtime.runner``. The child gets a session of
    its own, the job's output files as stdout/stderr, and nothing else of ours."""
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 125
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (*_FORWARD, signal.SIGCHLD, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        logging.getLogger().handlers.clear()  # the supervisor's log is not ours
        code = run(spec_path, adopt)
    except BaseException as exc:  # noqa: BLE001 - never return into the supervisor's code
        with contextlib.suppress(Exception):
            print(f"schedd: container runner failed: {exc!r}", file=sys.stderr)
    finally:
        os._exit(code)


def run(spec_path: Path, adopt: Adopt | None = None) -> int:
    spec = read_record(spec_path, ContainerSpec)
    if spec is None:
        print(f"schedd: no readable container spec at {spec_path}", file=sys.stderr)
        return 125
    return _Runner(spec).run(adopt)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nodeagent.runtime.runner SPEC.json", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
