"""Start supervisors by forking a process that has already imported them.

A fresh ``python -m nodeagent.supervisor`` costs ~100 ms of CPU per job rank
(interpreter and ``site`` start-up, then psutil, msgspec, logging): for the
short jobs ML teams run by the thousand that is most of a job's cost, and it
caps a 2-core node at ~15 jobs/s. So the agent starts this server once; per
launch it sends the rank's directory, its environment and two descriptors
(the started-notify pipe and the supervisor's log) over a socket pair, and
the server forks: the child becomes the supervisor (new session, stdio to its
log) and the server answers with the child's pid and start time.

Nothing ties a supervisor to the server after the fork: when the agent goes
(even ``kill -9``), the server reads EOF and exits, and the supervisors run
on — re-parented — to be re-adopted by the next agent. The server reaps its
children on SIGCHLD; it blocks SIGCHLD while it forks and reads the child's
start time, so that time is read before the child can be reaped (a pid is
only ever trusted with its start time: see ``proctree.is_alive``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

import psutil

from nodeagent import cgroups, proctree, supervisor

__all__ = ["Forkserver", "serve"]

_MAX_REQUEST = 1 << 22  # environment + path; generous


def serve(sock: socket.socket) -> None:
    """Answer launch requests until the agent closes its end."""

    def reap(*_: object) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is not ours
    _warm()
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 2)
        if not msg:
            return
        try:
            req = json.loads(msg)
            reply = _fork(sock, req, fds)
        except Exception as exc:  # a bad request must not end the server
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


def _warm() -> None:
    """Do once, before any fork, what each supervisor would otherwise do for itself:
    its log format, the C library for prctl, this process's cgroups (where a rank's
    fork returns to). Then freeze what exists, so that a supervisor's garbage
    collections never walk — and copy, page by page — the inherited heap
    (a full collection in a forked child costs ~8 ms here, ~0.4 ms frozen)."""
    supervisor.configure_logging()
    proctree.libc()
    with contextlib.suppress(OSError):  # no cgroups here: the supervisors will not use them
        cgroups.home()
    gc.collect()
    gc.freeze()


def _fork(sock: socket.socket, req: dict[str, object], fds: list[int]) -> dict[str, object]:
    notify, log_fd = fds
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        pid = os.fork()
        if pid == 0:
            _child(sock, req, notify, log_fd)
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _child(sock: socket.socket, req: dict[str, object], notify: int, log_fd: int) -> None:
    """In the forked child: become the supervisor of one rank, then exit."""
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sock.close()
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(devnull)
        os.set_inheritable(notify, False)
        env = req["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        code = supervisor.run(Path(str(req["dir"])), notify)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Forkserver:
    """The agent's end: start the server once, then ``spawn`` per rank."""

    def __init__(self, python: str, preload: tuple[str, ...] = ()) -> None:
        """``preload``: more modules the server imports at start, so that every
        supervisor has them (the docker SDK on a docker node: ~100 ms per rank)."""
        self.python = python
        self.preload = preload
        self.sock: socket.socket | None = None
        self.proc: int | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        argv = [self.python, "-m", "nodeagent.forkserver", str(theirs.fileno()), *self.preload]
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            self.proc = os.posix_spawn(self.python, argv, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
            ])
        finally:
            os.close(devnull)
            theirs.close()
        ours.settimeout(30.0)
        self.sock = ours

    def spawn(self, path: str, env: dict[str, str], notify_fd: int, log_fd: int) -> tuple[int, float]:
        """Fork a supervisor for ``path``; (pid, create time). OSError when the server is gone."""
        if self.sock is None:
            self.start()
        assert self.sock is not None
        try:
            socket.send_fds(self.sock, [json.dumps({"dir": path, "env": env}).encode()], [notify_fd, log_fd])
            reply = json.loads(self.sock.recv(65536) or b'{"error": "forkserver closed"}')
        except (OSError, ValueError) as exc:
            self.close()
            raise OSError(f"forkserver: {exc}") from exc
        if "error" in reply:
            raise OSError(f"forkserver: {reply['error']}")
        return int(reply["pid"]), float(reply["create_time"])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                os.waitpid(self.proc, 0)
            except ChildProcessError:
                pass
            self.proc = None


def _preload(modules: list[str]) -> None:
    """Import what the agent asked for; one that fails is imported (and fails) later, per rank."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"forkserver: cannot preload {name}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    _preload(sys.argv[2:])
    serve(socket.socket(fileno=int(sys.argv[1])))
