"""Builders and synchronisation helpers for the node agent tests.

Nothing here sleeps to guess: a test waits for a process to exit, a line on a
FIFO the job writes, or a message on a socket — each with a generous timeout
that only bounds a failure.
"""

from __future__ import annotations

import getpass
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nodeagent import proctree
from nodeagent.jobdir import EXIT, PID, SPEC, STARTED, WAKE_SIGNAL, ProcessRecord, StartedRecord, SupervisorSpec
from nodeagent.jobdir import read_exit, read_record, write_control, write_record
from schedd.protocol import Exited, Kill, Launch, LaunchSpec, Signal

PY = sys.executable
TIMEOUT_S = 30.0  # bounds a failure; a passing test never waits for it


def launch(tmp_path: Path, *, job_id: str = "7.srv", attempt: int = 0, rank: int = 0,
           script: str | None = None, argv: list[str] | None = None, **spec: Any) -> Launch:
    """A Launch running in ``tmp_path`` with small defaults; override any LaunchSpec field."""
    fields: dict[str, Any] = dict(
        job_id=job_id, name="test", user=getpass.getuser(), queue="batch", workdir=str(tmp_path),
        stdout_path=str(tmp_path / "out.txt"), stderr_path=str(tmp_path / "err.txt"),
        walltime_s=60.0, ncpus=2, mem_mb=0, gpus=[], kill_delay_s=0.5,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    fields.update(spec)
    if script is None and argv is None:
        script = "true"
    return Launch(job_id=job_id, attempt=attempt, rank=rank,
                  spec=LaunchSpec(script=script, argv=argv, **fields))


def py(code: str, *args: str) -> list[str]:
    """argv running a Python snippet (the job's own timing is its business, not the test's)."""
    return [PY, "-c", code, *args]


class Sup:
    """One supervisor started the way the agent starts it, driven directly."""

    def __init__(self, jobdir: Path, msg: Launch, **spec: Any) -> None:
        self.jobdir = jobdir
        jobdir.mkdir(parents=True, exist_ok=True)
        self.spec = SupervisorSpec(launch=msg, cookie=os.urandom(6).hex(), **spec)
        write_record(jobdir / SPEC, self.spec)
        env = dict(os.environ, **{proctree.COOKIE_ENV: self.spec.cookie})
        with open(jobdir / "supervisor.log", "ab") as log:
            self.proc = subprocess.Popen([PY, "-m", "nodeagent.supervisor", str(jobdir)], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def wait(self) -> Exited:
        self.proc.wait(TIMEOUT_S)
        exited = read_exit(self.jobdir)
        assert exited is not None, (self.jobdir / "supervisor.log").read_text()
        return exited

    def request(self, msg: Kill | Signal) -> None:
        write_control(self.jobdir, msg)
        self.proc.send_signal(WAKE_SIGNAL)

    def kill(self, delay_s: float = 0.5, status: int | None = None) -> None:
        m = self.spec.launch
        self.request(Kill(job_id=m.job_id, attempt=m.attempt, rank=m.rank, kill_delay_s=delay_s, status=status))

    def started(self) -> StartedRecord | None:
        return read_record(self.jobdir / STARTED, StartedRecord)


def run(tmp_path: Path, msg: Launch, **spec: Any) -> Exited:
    return Sup(tmp_path / "job", msg, **spec).wait()


class Fifo:
    """A FIFO the job writes lines to; the test end is O_RDWR so nothing ever blocks on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._buf = b""

    def readline(self, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError(f"no line on {self.path} within {timeout} s")
            self._buf += os.read(self.fd, 4096)
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        os.close(self.fd)


def identity(pid: int) -> tuple[int, float]:
    return pid, psutil.Process(pid).create_time()


def gone(ident: tuple[int, float]) -> bool:
    """Dead (or a zombie nobody reaped yet): never "alive" for a reused pid."""
    return proctree.process(*ident) is None


def dies(ident: tuple[int, float], within_s: float = TIMEOUT_S) -> bool:
    """The process ends (exits or is a zombie) within ``within_s``, awaited on its
    pidfd: a SIGKILL just sent takes effect when the process is next scheduled,
    which on a loaded machine is not at once."""
    try:
        fd = os.pidfd_open(ident[0])
    except ProcessLookupError:
        return True
    try:
        if gone(ident):  # checked after opening: the fd is not a reused pid's
            return True
        ready, _, _ = select.select([fd], [], [], within_s)
        return bool(ready)
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing test left running under tmp_path is killed afterwards."""
    yield
    for pidfile in tmp_path.rglob(PID):
        rec = read_record(pidfile, ProcessRecord)
        started = read_record(pidfile.parent / STARTED, StartedRecord)
        if started is not None and not (pidfile.parent / EXIT).exists():
            proctree.killpg(started.pgid, signal.SIGKILL)
        if rec is not None and (proc := proctree.process(rec.pid, rec.create_time)) is not None:
            proc.kill()
