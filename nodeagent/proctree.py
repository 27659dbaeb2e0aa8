"""Process-tree helpers over psutil: identity, usage, and finding strays.

A pid alone is not an identity: after a process dies its pid is reused. Every
"is it still there?" here compares the creation time recorded with the pid, so
a supervisor that died and whose pid went to some unrelated process reads as
dead, and nothing unrelated is ever signalled.

Finding every process of a job has three layers, strongest first: the
supervisor is a child subreaper (orphans re-parent to it, so its descendants
*are* the job); failing that it remembers every descendant it has seen; and as
the last resort (the supervisor itself was killed) processes are found by the
``SCHEDD_JOB_COOKIE`` in their initial environment, which a job cannot lose by
forking or calling setsid.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import signal
import time

import psutil

__all__ = [
    "libc",
    "COOKIE_ENV",
    "TreeSampler",
    "by_cookie",
    "create_time",
    "created_between",
    "descendants",
    "is_alive",
    "killpg",
    "process",
    "send_all",
    "set_child_subreaper",
]

COOKIE_ENV = "SCHEDD_JOB_COOKIE"
_PR_SET_CHILD_SUBREAPER = 36
_MB = 1 << 20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def create_time(pid: int) -> float:
    """``psutil.Process(pid).create_time()``, the same value read with one file
    (psutil reads /proc/stat for the boot time too, and twice per Process: a
    tenth of a rank's supervision). psutil.NoSuchProcess when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(pid) from None
    ticks = int(data[data.rfind(b")") + 2:].split()[19])
    return ticks / _CLOCK_TICKS + _boot_time()


#: A clock tick in ns, the unit of a process's start in /proc/PID/stat (0: not a whole number of ns).
_TICK_NS = 1_000_000_000 // _CLOCK_TICKS if 1_000_000_000 % _CLOCK_TICKS == 0 else 0


def created_between(before_ns: int, after_ns: int) -> float | None:
    """The :func:`create_time` of a process forked between these two readings of
    ``CLOCK_BOOTTIME`` (``time.clock_gettime_ns``) when both fall in the same clock
    tick, without reading /proc (~50 us of a rank here): the kernel stamps a fork
    with that clock and /proc shows the stamp in whole ticks. None when they
    straddle a tick boundary: then read it."""
    if not _TICK_NS or before_ns // _TICK_NS != after_ns // _TICK_NS:
        return None
    return before_ns // _TICK_NS / _CLOCK_TICKS + _boot_time()


def _boot_time() -> float:
    """/proc/stat's ``btime`` (what psutil adds): the whole seconds of the wall
    clock less the time since boot — read from /proc/stat when the two clocks,
    read one after the other, are too close to a whole second to round the same."""
    since = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    whole = math.floor(since)
    if 0.001 < since - whole < 0.999:
        return float(whole)
    return float(psutil.boot_time())


def process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process with this pid *and* creation time, else None (zombies count as dead)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(pid: int, create_time: float) -> bool:
    return process(pid, create_time) is not None


def descendants(root: psutil.Process) -> list[psutil.Process]:
    """All live descendants of ``root`` (not itself); [] once it is gone.

    O(descendants) through Linux's ``/proc/PID/task/TID/children``; psutil's own
    walk reads every process on the machine (O(processes)), which a node with
    hundreds of short jobs, each sampled by its supervisor, cannot afford.
    """
    try:
        first = _child_pids(root.pid)
    except FileNotFoundError:
        return []
    except OSError:  # no children files (CONFIG_PROC_CHILDREN off): the slow walk
        try:
            return [p for p in root.children(recursive=True) if _not_zombie(p)]
        except psutil.NoSuchProcess:
            return []
    out: list[psutil.Process] = []
    seen: set[int] = set()
    stack = first
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            proc = psutil.Process(pid)
            stack.extend(_child_pids(pid))
        except (psutil.NoSuchProcess, OSError):
            continue
        if _not_zombie(proc):
            out.append(proc)
    return out


def _child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from each of its threads' children file."""
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(c) for c in f.read().split())
    return out


def by_cookie(cookie: str, exclude: int | None = None) -> list[psutil.Process]:
    """Live processes whose initial environment carries this job cookie. O(processes)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == exclude:
            continue
        try:
            if proc.environ().get(COOKIE_ENV) == cookie and _not_zombie(proc):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def send_all(procs: list[psutil.Process], sig: signal.Signals) -> int:
    """Signal each process that is still the one we saw (psutil checks identity); count hits."""
    hits = 0
    for proc in procs:
        try:
            proc.send_signal(sig)
            hits += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            pass
    return hits


def killpg(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False when the group is empty (ESRCH) or not ours."""
    if pgid <= 1:
        return False  # never the whole session of init, never "every process"
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux >= 3.4); False if not possible."""
    try:
        return bool(libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once (the forkserver's warm-up: not once per supervisor)."""
    return ctypes.CDLL(None, use_errno=True)


def _not_zombie(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class TreeSampler:
    """CPU % and RSS of one process tree, across calls (one sampler per tree).

    psutil's cpu_percent is a delta since the previous call *on the same
    Process object*, so those objects are kept between samples (keyed by pid,
    validated by psutil's own identity check); a process seen for the first
    time contributes 0 % to its first sample.
    """

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}

    def sample(self, root: psutil.Process) -> tuple[float, int]:
        """(cpu %, rss MB) summed over the descendants of ``root``. O(processes)."""
        cpu = 0.0
        rss = 0
        keep: dict[int, psutil.Process] = {}
        for fresh in descendants(root):
            proc = self._seen.get(fresh.pid)
            if proc is None or not proc.is_running():
                proc = fresh
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            keep[proc.pid] = proc
        self._seen = keep
        return cpu, rss // _MB
