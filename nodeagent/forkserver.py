"""Start supervisors by forking a process that has already imported them.

A fresh ``python -m nodeagent.supervisor`` costs ~100 ms of CPU per job rank
(interpreter and ``site`` start-up, then psutil, msgspec, logging): for the
short jobs ML teams run by the thousand that is most of a job's cost, and it
caps a 2-core node at ~15 jobs/s. So the agent starts this server once; per
launch it sends the rank's directory, the variables it adds to the
environment (the job cookie) and two descriptors (the started-notify pipe and
the supervisor's log) over a socket pair, and the server forks: the child
becomes the supervisor (new session, stdio to its log) and the server answers
with the child's pid and start time. The rest of a supervisor's environment
is the agent's, the server's own since it started: the whole environment
JSON-encoded, decoded twice and compared variable by variable cost ~35 us a
rank with this machine's 38 variables, and a pod has two for every
Kubernetes service.

A supervisor process outlives its rank when the rank left it clean (a plain
process, no container or rebuilt environment): it tells the server it is idle
and the server hands it the next launch instead of forking again. Forking a
copy of this interpreter, its first writes to every shared page and its exit
are most of what a short rank cost (bench.ranks, bench/RESULTS.md #12); a reused
process has its pages already. Each process still serves one rank at a time,
so a supervisor's crash still ends only its own rank; the rank's end reaches
the agent as an "E" on its notify pipe (or the pipe's end, if the supervisor
died), not as the process exiting.

Nothing ties a supervisor to the server after the fork: when the agent goes
(even ``kill -9``), the server reads EOF and exits, and the supervisors run
on — re-parented — to be re-adopted by the next agent; each exits after its
rank, since its link to the server is gone. The server reaps its
children on SIGCHLD; it blocks SIGCHLD while it forks and reads the child's
start time, so that time is read before the child can be reaped (a pid is
only ever trusted with its start time: see ``proctree.is_alive``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import psutil

from nodeagent import cgroups, proctree, supervisor

__all__ = ["Forkserver", "serve"]

_MAX_REQUEST = 1 << 22  # environment + path; generous
#: Idle supervisor processes kept for the next ranks; more are let go. Each is a
#: forked copy of this server (a few MB of its own once it has run a rank).
MAX_IDLE = 16
#: Ranks one supervisor process serves before it exits (bounds whatever a rank
#: might leave behind in it).
MAX_RANKS = 1000
_IDLE = b"idle"


@dataclass
class _Worker:
    """A supervisor process and this server's end of its socket pair."""

    pid: int
    create_time: float
    link: socket.socket


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
    _BASE_ENV.update(os.environ)
    _warm()
    pool = _Pool(sock)
    while True:
        ready = [key.fileobj for key, _ in pool.selector.select()]
        for link in ready:
            if link is not sock:
                assert isinstance(link, socket.socket)
                pool.heard(link)
        if sock not in ready:
            continue
        msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 2)
        if not msg:
            return
        try:  # an idle supervisor reads the request itself: decoded here only to fork one
            worker = pool.hand(msg, fds) or _fork(sock, json.loads(msg), fds, pool)
            reply: dict[str, object] = {"pid": worker.pid, "create_time": worker.create_time}
        except Exception as exc:  # a bad request must not end the server
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())


class _Pool:
    """The supervisor processes this server forked: busy ones, and idle ones that
    said so after a rank and wait for the next (see :func:`_child`). A process
    that goes idle past :data:`MAX_IDLE`, or whose link ends (it exited), is let go."""

    def __init__(self, requests: socket.socket) -> None:
        self.workers: dict[socket.socket, _Worker] = {}
        self.idle: list[_Worker] = []
        #: the agent's requests and every worker's link, registered once (epoll: a
        #: turn costs what is ready, not what is open, and no fd number is too high)
        self.selector = selectors.DefaultSelector()
        self.selector.register(requests, selectors.EVENT_READ)

    def links(self) -> list[socket.socket]:
        return list(self.workers)

    def heard(self, link: socket.socket) -> None:
        """A supervisor said it is idle, or its link ended."""
        worker = self.workers[link]
        try:
            data = link.recv(16)
        except OSError:
            data = b""
        if data == _IDLE and len(self.idle) < MAX_IDLE:
            self.idle.append(worker)
            return
        self._drop(worker)  # gone, or not wanted: a closed link ends an idle supervisor

    def hand(self, msg: bytes, fds: list[int]) -> _Worker | None:
        """Give the request to an idle supervisor; None when there is none left."""
        while self.idle:
            worker = self.idle.pop()
            try:
                socket.send_fds(worker.link, [msg], fds)
                return worker
            except OSError:
                self._drop(worker)
        return None

    def add(self, worker: _Worker) -> None:
        self.workers[worker.link] = worker
        self.selector.register(worker.link, selectors.EVENT_READ)

    def _drop(self, worker: _Worker) -> None:
        if worker in self.idle:
            self.idle.remove(worker)
        if self.workers.pop(worker.link, None) is not None:
            self.selector.unregister(worker.link)
        worker.link.close()


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


def _fork(sock: socket.socket, req: dict[str, object], fds: list[int], pool: _Pool) -> _Worker:
    notify, log_fd = fds
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        pid = os.fork()
        if pid == 0:
            pool.selector.close()  # the child's copy of the server's epoll (the server's stays)
            _child([sock, ours, *pool.links()], theirs, req, notify, log_fd)
        theirs.close()
        worker = _Worker(pid, proctree.create_time(pid), ours)
    except BaseException:  # no worker: its link goes too (serve goes on with the next request)
        ours.close()
        theirs.close()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    pool.add(worker)
    return worker


def _child(inherited: list[socket.socket], link: socket.socket, req: dict[str, object], notify: int, log_fd: int) -> None:
    """In the forked child: supervise ranks, one at a time, then exit.

    After a rank that left the process clean (:func:`nodeagent.supervisor.run_rank`),
    it tells the server it is idle and waits for the next request on ``link``;
    it exits when the server lets it go or is gone (the agent died: a new agent
    has a new server, and re-adopted ranks are followed by their supervisor's
    exit), after :data:`MAX_RANKS`, or after a rank that did not leave it clean.
    A rank's end is told to the agent on its notify pipe ("E")."""
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for other in inherited:  # the agent's socket, and every other supervisor's link
            other.close()
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for served in range(1, MAX_RANKS + 1):
            if not _one_rank(req, notify, log_fd, link if served < MAX_RANKS else None):
                break
            try:
                msg, fds, _flags, _addr = socket.recv_fds(link, _MAX_REQUEST, 2)
            except OSError:
                break
            if not msg:  # let go, or the server is gone
                break
            req = json.loads(msg)
            notify, log_fd = fds
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        cgroups.drop_spares()  # the rank groups it kept for a next rank
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _one_rank(req: dict[str, object], notify: int, log_fd: int, link: socket.socket | None) -> bool:
    """Supervise the rank ``req`` names (stdio to its log); whether this process
    told the server (on ``link``; None: it may not) it is free for another — as
    soon as the exit was on disk, before the agent hears of it, so that the
    launch the agent's report leads to finds it idle."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.set_inheritable(notify, False)
    extra = req["env"]
    assert isinstance(extra, dict)
    _set_environ({str(k): str(v) for k, v in extra.items()})

    def free() -> None:
        assert link is not None
        with contextlib.suppress(OSError):  # the server is gone: the recv after says so
            link.send(_IDLE)

    try:
        _code, told = supervisor.run_rank(Path(str(req["dir"])), notify, free if link is not None else None)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return told


#: The server's environment as it started (the agent's): every supervisor's, with
#: its request's variables set (:func:`_set_environ`).
_BASE_ENV: dict[str, str] = {}
#: The variables this process set for its last rank on top of :data:`_BASE_ENV`.
_extra_env: dict[str, str] = {}


def _set_environ(extra: dict[str, str]) -> None:
    """Make this process's environment the server's with ``extra`` set, changing
    only what differs from the last rank's: a reused supervisor has the agent's
    environment already, all but the job cookie (each change is a putenv). Only
    a plain rank leaves its process for another, and nothing in one changes
    ``os.environ``, so what the last request set is all that may differ."""
    global _extra_env
    for key in _extra_env.keys() - extra.keys():
        if key in _BASE_ENV:
            os.environ[key] = _BASE_ENV[key]
        else:
            os.environ.pop(key, None)
    for key, value in extra.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    _extra_env = extra


class Forkserver:
    """The agent's end: start the server once, then ``spawn`` per rank."""

    def __init__(self, python: str, preload: tuple[str, ...] = (), environ: dict[str, str] | None = None) -> None:
        """``preload``: more modules the server imports at start, so that every
        supervisor has them (the docker SDK on a docker node: ~100 ms per rank).
        ``environ``: the server's environment, which every supervisor starts with
        (default: this process's now)."""
        self.python = python
        self.preload = preload
        self.environ = dict(os.environ) if environ is None else environ
        self.sock: socket.socket | None = None
        self.proc: int | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        argv = [self.python, "-m", "nodeagent.forkserver", str(theirs.fileno()), *self.preload]
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            self.proc = os.posix_spawn(self.python, argv, self.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
            ])
        finally:
            os.close(devnull)
            theirs.close()
        ours.settimeout(30.0)
        self.sock = ours

    def spawn(self, path: str, extra: dict[str, str], notify_fd: int, log_fd: int) -> tuple[int, float]:
        """Fork a supervisor for ``path``, its environment :attr:`environ` with ``extra``
        set; (pid, create time). OSError when the server is gone."""
        if self.sock is None:
            self.start()
        assert self.sock is not None
        try:
            socket.send_fds(self.sock, [json.dumps({"dir": path, "env": extra}).encode()], [notify_fd, log_fd])
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
