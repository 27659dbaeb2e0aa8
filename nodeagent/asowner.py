"""Do a step of a job's start as the job's owner: in a forked child that has become them.

Why: the supervisor is root so that it can run jobs as their owners, and
preparing a job's environment runs what the user controls — the interpreter
their env spec names, git with their config, uv or pip and the build backends
of their packages — and writes where their repository says. Done as root, any
of these hands root to the user (security issue #17). So the supervisor forks
a child that drops to the owner's ids for good (supplementary groups, then
real, effective and saved gid and uid: no way back) and does the step there;
the child can do nothing the owner could not do on their own. Cost: a fork and
a round trip, ~2.4 ms (p50, 2-core VM), paid only by jobs with an environment
spec run as someone else; the cache hit itself is ~1 ms.

The child reports over a ``SOCK_SEQPACKET`` socket pair, one JSON object per
message::

    {"announce": text}     what the start waits for (the job's Preparing comment)
    {"log": chunk}         pieces of a failure's log (for the job's stderr)
    {"ok": result}         the step's result, with its descriptors attached (SCM_RIGHTS:
                           the venv's lease, a flock that must stay held without a gap)
    {"error": kind, "message": text}    kind: "env" (EnvError), "cancelled", "internal"

The supervisor keeps answering signals meanwhile (its waiter): when the job is
to end it shuts its side for writing, the child's waiter sees the EOF and says
so, the tool it runs is killed and it reports Cancelled; if the supervisor dies
the child reads the same EOF and stops the same way.

The child keeps none of the supervisor's descriptors (each is pointed at
/dev/null before the ids change: the agent's notify pipe, the supervisor's log
and wake-up pipe), and having changed ids without an exec it is not dumpable:
the owner may signal it but can neither trace it nor read its memory or fds.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from nodeagent.env.cache import Announce, Cancelled, EnvError, Owner, Waiter

__all__ = ["Step", "call"]

#: ``step(waiter, announce) -> (result, fds)``: run in the child, as the owner;
#: ``result`` is JSON-encodable, ``fds`` are handed to the caller (then closed here).
Step = Callable[[Waiter, Announce], tuple[dict[str, Any], list[int]]]

_MAX_MSG = 256 * 1024
_LOG_CHUNK = 16 * 1024  # characters per log message: even escaped it stays below the socket's buffer
_MAX_FDS = 4
#: What the supervisor has installed handlers for (the child must die of them again).
_RESET = (signal.SIGCHLD, signal.SIGWINCH, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def call(owner: Owner, step: Step, waiter: Waiter, announce: Announce) -> tuple[dict[str, Any], list[int]]:
    """Run ``step`` as ``owner`` in a child; its result and descriptors. Raises
    EnvError (the step's, or that the child died) or Cancelled."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        _child(owner, step, theirs)
    theirs.close()
    try:
        return _follow(ours, owner, waiter, announce)
    finally:
        ours.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # it has sent its last word or died: no wait to speak of


def _follow(sock: socket.socket, owner: Owner, waiter: Waiter, announce: Announce) -> tuple[dict[str, Any], list[int]]:
    """The parent's side: relay announcements, collect the log, return the result."""
    log: list[str] = []
    stopping = False
    while True:
        if not stopping and waiter(sock.fileno(), 1.0):
            stopping = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # EOF, not data: unread data would reset the socket at the child's exit
        if not select.select([sock], [], [], None if stopping else 0)[0]:
            continue
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except ConnectionResetError:  # it died with something of ours unread: as good as EOF
            msg, fds = b"", []
        data: dict[str, Any] = json.loads(msg) if msg else {}
        if "ok" in data:
            return dict(data["ok"]), fds
        for fd in fds:
            os.close(fd)
        if "announce" in data:
            announce(str(data["announce"]))
        elif "log" in data:
            log.append(str(data["log"]))
        elif stopping or data.get("error") == "cancelled" or waiter(None, 0):
            raise Cancelled(str(data.get("message") or "killed while its environment was being prepared"))
        elif data.get("error") == "env":
            raise EnvError(str(data["message"]), "".join(log))
        else:
            why = data.get("message") or "the process doing it died"
            raise EnvError(f"preparing as {owner.name} failed: {why}", "".join(log))


def _child(owner: Owner, step: Step, sock: socket.socket) -> NoReturn:
    """In the forked child: become ``owner``, run ``step``, report, exit."""
    try:
        _detach(sock.fileno())
        _become(owner)

        def stop(fd: int | None, timeout_s: float) -> bool:
            ready, _, _ = select.select([sock] + ([fd] if fd is not None else []), [], [], timeout_s)
            return sock in ready  # EOF: the job is to end, or the supervisor is gone

        result, fds = step(stop, lambda text: _send(sock, {"announce": text}))
        socket.send_fds(sock, [json.dumps({"ok": result}).encode()], fds)
    except Cancelled as exc:
        _send(sock, {"error": "cancelled", "message": str(exc)})
    except EnvError as exc:
        for i in range(0, len(exc.log), _LOG_CHUNK):
            _send(sock, {"log": exc.log[i:i + _LOG_CHUNK]})
        _send(sock, {"error": "env", "message": str(exc)})
    except BaseException as exc:  # our bug, or the owner's ids refused: the job fails saying so
        _send(sock, {"error": "internal", "message": f"{type(exc).__name__}: {exc}"})
    finally:
        os._exit(0)


def _send(sock: socket.socket, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
        sock.send(json.dumps(data, ensure_ascii=False).encode(errors="replace"))


def _detach(keep: int) -> None:
    """Let go of the supervisor: its signal handling, its process group, its fds.

    Each open fd but ``keep`` is replaced by /dev/null rather than closed, so
    that a Python object still holding the number closes /dev/null, never a
    descriptor opened since under the same number."""
    signal.set_wakeup_fd(-1)
    for sig in _RESET:
        signal.signal(sig, signal.SIG_DFL)
    os.setpgid(0, 0)  # a signal to the supervisor's group is not ours: the supervisor tells us
    devnull = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in (keep, devnull):
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd, inheritable=fd <= 2)
    os.close(devnull)


def _become(owner: Owner) -> None:
    """Drop to the owner's ids for good; raises when any id is left over."""
    os.setgroups(list(owner.groups))
    os.setresgid(owner.gid, owner.gid, owner.gid)
    os.setresuid(owner.uid, owner.uid, owner.uid)
    if os.getresuid() != (owner.uid,) * 3 or os.getresgid() != (owner.gid,) * 3:
        raise PermissionError(f"could not become {owner.name}")
    os.environ.update(HOME=owner.home, USER=owner.name, LOGNAME=owner.name)
