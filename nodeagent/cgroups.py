"""Enforcement by cgroups: one group per job rank, limits the kernel keeps.

Where the agent may use cgroups, a rank's processes live in a group of their
own, so that finding them is reading ``cgroup.procs`` (nothing escapes by
double-forking, ``setsid`` or clearing its environment), killing them is one
write to ``cgroup.kill``, and the memory request is a limit the kernel holds
(no sampling interval's worth of overshoot: the kernel's OOM killer acts at
the limit, and the supervisor ends the rank with EXIT_MEM). Elsewhere the
supervisor falls back to RSS sampling and the process-tree walk
(:mod:`nodeagent.proctree`): enforcement ``proctree``.

Modes, as ``qnodes -a`` prints them (``enforcement = ...``):

``cgroup2``
    a writable cgroup v2 hierarchy: the agent's groups under
    ``<mount>/schedd/`` (root on a cgroup v2 host) or under ``--cgroup-root``
    (a delegated subtree). Processes are found and killed through it; the
    ``memory`` and ``cpu`` controllers, where the hierarchy offers them, take
    ``memory.max`` (+ ``memory.swap.max = 0``) and ``cpu.max``.
``cgroup2+memory-v1``, ``cgroup2+memory-v1+cpu-v1``, ``cgroup2+cpu-v1``
    a hybrid host (systemd's "hybrid" layout: controllers mounted as cgroup v1,
    a controller-less cgroup v2 at ``/sys/fs/cgroup/unified``): processes are
    found and killed through cgroup v2, and each controller the v2 hierarchy
    lacks is taken from its v1 hierarchy, in a group nested under the agent's
    own v1 group (so whatever limits the agent also limits its jobs):
    ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes``), OOM kills
    counted by ``memory.oom_control``'s ``oom_kill``; ``cpu.cfs_quota_us``.
    A controller in neither: memory is RSS-sampled as without cgroups.
``proctree``
    no usable cgroup v2 (not root and nothing delegated, or ``--enforcement
    proctree``): the supervisor's RSS sampling and process-tree walk.

The CPU request is a quota (``ncpus`` CPUs' worth of time per period), not
a cpuset: schedd assigns a node's CPUs by count, not by index, so there are
no particular cores to pin a rank to.

Layout: ``<base>/<node>-<hash of the state dir>/<rank dir name>`` in each
hierarchy; the agent's group is named by its state directory too because
several agents of the same name may share a machine (tests). The supervisor
creates its rank's groups and moves *itself* into them around the fork of
the job's top process (:meth:`RankGroup.enter`), so the job is in its group
before it executes anything; it removes the groups once they are empty —
but for its v1 groups when its process serves another rank next (see
:mod:`nodeagent.forkserver`): those it keeps, empty, and renames to that
rank's name (:func:`drop_spares` removes them when the process ends). A v2
group cannot be renamed; it is made and removed per rank. A reused memory
group's OOM count is taken as a base, its peak reset, and it is not reused
once what earlier ranks left charged to it passes ``_SPARE_SLACK``.
Those moves are cheap only on a hierarchy mounted with ``favordynmods``
(:func:`favor_dynmods`, which root's agent sets), else each waits out an RCU
grace period: ~10 ms more before the job's first instruction. An
agent at start removes the empty groups no running rank owns (left by a
crash); a group with processes in it is never touched, so a job survives its
agent's ``kill -9``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

__all__ = ["MODES", "Layout", "RankGroup", "detect", "drop_spares", "home", "mode_of", "rearm", "remove_agent_group",
           "sweep"]

log = logging.getLogger("nodeagent.cgroups")

#: What ``--enforcement`` accepts: auto (cgroups where usable), cgroup (or fail), proctree.
MODES = ("auto", "cgroup", "proctree")
PROCTREE = "proctree"
_V1_CONTROLLERS = ("memory", "cpu")  # those a v1 hierarchy may stand in for
_CPU_PERIOD_US = 100_000
_MB = 1 << 20
#: Another agent's empty rank group older than this is a leftover (see :func:`sweep`).
STALE_S = 300.0


class Layout(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where one agent's rank groups go; kept in every rank's ``spec.json`` so
    a supervisor (and an agent re-adopting it) knows its groups."""

    #: ``cgroup2`` and ``+memory-v1`` / ``+cpu-v1`` for controllers taken from v1
    mode: str
    #: the agent's group in the cgroup v2 hierarchy (absolute path)
    v2: str
    #: v2 controllers enabled for the agent's rank groups ("memory", "cpu")
    v2_controllers: list[str] = []
    #: v1 controller -> the agent's group in that v1 hierarchy
    v1: dict[str, str] = {}

    def paths(self, name: str) -> list[Path]:
        """The rank group ``name`` in every hierarchy, the v2 one first."""
        return [Path(self.v2) / name, *(Path(p) / name for p in self.v1.values())]


def mode_of(layout: Layout | None) -> str:
    return layout.mode if layout is not None else PROCTREE


# ---------------------------------------------------------------- finding the hierarchies


class _Mount(NamedTuple):
    """One line of /proc/self/mountinfo, the fields read here."""

    fstype: str
    point: str
    root: str
    options: list[str]  # per-mount options, then the superblock's, each once


def _mountinfo() -> Iterator[_Mount]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 6 or len(rfields) < 3:
                continue
            yield _Mount(rfields[0], fields[4], fields[3],
                         list(dict.fromkeys((*fields[5].split(","), *rfields[2].split(",")))))


def _mounts() -> tuple[tuple[str, str] | None, dict[str, tuple[str, str]]]:
    """(the cgroup2 mount as (mount point, root), {v1 controller: (mount point, root)})."""
    v2: tuple[str, str] | None = None
    v1: dict[str, tuple[str, str]] = {}
    for m in _mountinfo():
        if m.fstype == "cgroup2":
            if v2 is None or m.point == "/sys/fs/cgroup":  # the unified mount first, else any
                v2 = (m.point, m.root)
        elif m.fstype == "cgroup":
            for opt in m.options:
                if opt in _V1_CONTROLLERS and opt not in v1:
                    v1[opt] = (m.point, m.root)
    return v2, v1


def _own_groups() -> tuple[str, dict[str, str]]:
    """This process's cgroup v2 path and its v1 paths by controller, from /proc/self/cgroup."""
    v2 = "/"
    v1: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2 = parts[2]
            else:
                for ctrl in parts[1].split(","):
                    v1[ctrl] = parts[2]
    return v2, v1


@functools.cache
def home() -> tuple[Path | None, dict[str, Path]]:
    """This process's own groups, as directories: where :meth:`RankGroup.enter` moves
    it back to. Read once per process — and the forkserver reads it before it
    forks, so its supervisors (which start in its groups) inherit the answer
    instead of parsing /proc/self/mountinfo per rank."""
    own_v2, own_v1 = _own_groups()
    mount_v2, mounts_v1 = _mounts()
    v1 = {ctrl: _under(m, own_v1.get(ctrl, "/")) for ctrl, m in mounts_v1.items()}
    return (_under(mount_v2, own_v2) if mount_v2 is not None else None), v1


def _under(mount: tuple[str, str], path: str) -> Path:
    """Where the cgroup ``path`` (as /proc/self/cgroup names it) is under ``mount``."""
    point, root = mount
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return Path(point) / path.lstrip("/")


def _agent_name(node: str, state_dir: Path) -> str:
    digest = hashlib.sha1(str(state_dir.absolute()).encode()).hexdigest()[:8]
    return f"{node}-{digest}"


def _read(path: str | Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str | Path, text: str) -> None:
    """Write a control file; one that is not there is an error, never created."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enable(parent: Path, wanted: tuple[str, ...] | list[str]) -> None:
    """Enable in ``parent``'s subtree the wanted controllers it has; refusals are
    fine (a populated non-root v2 group may not: the no-internal-processes rule)."""
    try:
        have = set(_read(parent / "cgroup.controllers").split())
        on = set(_read(parent / "cgroup.subtree_control").split())
    except OSError:
        return
    for ctrl in wanted:
        if ctrl in have and ctrl not in on:
            try:
                _write(parent / "cgroup.subtree_control", f"+{ctrl}")
            except OSError as exc:
                log.info("cannot enable the %s controller in %s: %s", ctrl, parent, exc.strerror)


def _mkdir_in_place(path: str) -> bool:
    """Make the rank's group where its agent's group is; False when that parent is
    gone (a sweep removed it): then :func:`_ensure` rebuilds the path level by level.
    The common case is one mkdir: the agent made its group, controllers enabled, at start."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        return False
    return True


def _ensure(base: Path, rel: list[str], controllers: list[str] | None) -> Path:
    """mkdir ``base/rel...`` level by level; on a v2 hierarchy (``controllers`` not
    None) enabling them in each parent first. Retried when a concurrent sweep
    removed a level just created (an agent cleans other agents' empty groups)."""
    for attempt in range(5):
        path = base
        try:
            for part in rel:
                if controllers:
                    _enable(path, controllers)
                path = path / part
                with contextlib.suppress(FileExistsError):
                    path.mkdir()
            return path
        except FileNotFoundError:
            if attempt == 4:
                raise
    return path  # pragma: no cover - the loop returns or raises


def favor_dynmods(point: str) -> bool:
    """Remount the cgroup v2 hierarchy with ``favordynmods`` (Linux >= 6.0) unless
    it has it; True if it has it now.

    Moving a process between cgroups takes a global lock whose writer waits
    out an RCU grace period — 6 to 15 ms here, on every rank's start, since
    ranks start far apart in kernel time. ``favordynmods`` is the kernel's
    switch for hosts that move tasks often (its price: forks and exits take a
    slightly slower lock path); the moves then cost ~0.4 ms. The options the
    mount has are kept (a remount sets the whole list). Root's own hierarchy
    only: a delegated subtree is not ours to remount."""
    options = _v2_options(point)
    if options is None:
        return False
    if "favordynmods" in options:
        return True
    wanted = ",".join(["remount", *options, "favordynmods"])
    try:
        done = subprocess.run(["mount", "-o", wanted, point], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("cannot remount %s with favordynmods: %s", point, exc)
        return False
    if done.returncode != 0:
        log.info("cannot remount %s with favordynmods (rank starts wait ~10 ms per cgroup move): %s", point,
                 done.stderr.strip())
        return False
    log.info("remounted %s with favordynmods: moving a rank into its cgroups no longer waits a grace period", point)
    return True


def _v2_options(point: str) -> list[str] | None:
    """The options of the cgroup2 mount at ``point``: per-mount ones, then the superblock's."""
    return next((m.options for m in _mountinfo() if m.fstype == "cgroup2" and m.point == point), None)


def detect(node: str, state_dir: Path, want: str = "auto", root: str = "") -> Layout | None:
    """What this node can use, with the agent's groups created; None = proctree.

    ``want``: auto (cgroups where usable, else proctree), cgroup (ValueError
    when there are none usable), proctree. ``root``: a delegated cgroup v2
    directory to put the agent's groups in (default: ``<mount>/schedd``).
    """
    if want not in MODES:
        raise ValueError(f"enforcement must be one of {', '.join(MODES)}, got {want!r}")
    if want == PROCTREE:
        return None
    try:
        layout = _detect(node, state_dir, root)
    except OSError as exc:
        layout, why = None, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    else:
        why = "no cgroup2 hierarchy is mounted" if layout is None else ""
    if layout is None:
        if want == "cgroup" or root:
            raise ValueError(f"cannot use cgroups for enforcement: {why}")
        log.info("enforcement by process tree: no usable cgroup (%s)", why)
    return layout


def _detect(node: str, state_dir: Path, root: str) -> Layout | None:
    mount_v2, mounts_v1 = _mounts()
    own_v2, own_v1 = _own_groups()
    name = _agent_name(node, state_dir)
    if root:
        base = Path(root)
        if not base.is_dir() or not (base / "cgroup.procs").exists():
            raise OSError(errno.ENOTDIR, "not a cgroup v2 directory", root)
    elif mount_v2 is None:
        return None
    else:  # root takes the hierarchy's top; anyone else the (delegated) group it runs in
        base = _under(mount_v2, "/" if os.geteuid() == 0 else own_v2) / "schedd"
    wanted = ["memory", "cpu"]
    group = _ensure(base.parent, [base.name, name], wanted) if not root else _ensure(base, [name], wanted)
    _enable(group, wanted)
    enabled = [c for c in _read(group / "cgroup.subtree_control").split() if c in wanted]
    if not (group / "cgroup.kill").exists():
        log.info("%s has no cgroup.kill (Linux < 5.14): killing signals each process of a group", group)
    v1: dict[str, str] = {}
    for ctrl in _V1_CONTROLLERS:
        if ctrl in enabled or ctrl not in mounts_v1:
            continue
        try:
            own = _under(mounts_v1[ctrl], own_v1.get(ctrl, "/"))
            v1[ctrl] = str(_ensure(own, ["schedd", name], None))
        except OSError as exc:
            log.info("cannot use the v1 %s controller: %s", ctrl, exc)
    if not root and mount_v2 is not None and os.geteuid() == 0:
        favor_dynmods(mount_v2[0])
    mode = "cgroup2" + "".join(f"+{c}-v1" for c in _V1_CONTROLLERS if c in v1)
    log.info("enforcement by cgroups (%s): rank groups under %s%s", mode, group,
             "".join(f", {c} under {p}" for c, p in v1.items()))
    return Layout(mode, str(group), enabled, v1)


def sweep(layout: Layout, keep: set[str], now: float | None = None) -> list[str]:
    """Remove the empty rank groups of this agent that ``keep`` (the running
    ranks' names) does not hold, the empty rank groups of other agents (those
    of agents that died with their state directory: tests, a replaced pod)
    made more than :data:`STALE_S` ago, and other agents' groups left empty.
    A group with processes is never touched (a job outlives its agent); a
    live agent's rank group is empty only between its creation and the fork
    of the job into it, which ``STALE_S`` covers. The removed paths."""
    removed: list[str] = []
    now = time.time() if now is None else now
    for top in (Path(layout.v2), *(Path(p) for p in layout.v1.values())):
        for child in _children(top):
            if child.name not in keep and _rmdir(child):
                removed.append(str(child))
        for other in _children(top.parent):
            if other == top:
                continue
            for child in _children(other):
                if _age(child, now) > STALE_S and _rmdir(child):
                    removed.append(str(child))
            if _rmdir(other):  # fails while it holds rank groups
                removed.append(str(other))
    if removed:
        log.info("removed %d stale cgroups", len(removed))
    return removed


def remove_agent_group(layout: Layout) -> None:
    """The agent stops: its groups go if no rank group is left in them."""
    for top in (Path(layout.v2), *(Path(p) for p in layout.v1.values())):
        _rmdir(top)


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _children(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _rmdir(path: str | Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:  # EBUSY: processes or child groups in it; ENOENT: gone already
        return False


# ---------------------------------------------------------------- one rank's groups


def rearm(fd: int) -> None:
    """Read a watched ``cgroup.events`` so that its next change is reported again."""
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        os.read(fd, 4096)



#: A v1 memory group keeps what its last rank left charged to it (page cache, a
#: file in a tmpfs); a group holding more than this is not reused for the next rank.
_SPARE_SLACK = 2 << 20


class _Spare(NamedTuple):
    """An empty v1 rank group this process kept from its last rank for its next one."""

    path: str
    limits: tuple[str, ...]  # as written to it
    usage: int = 0  # a memory group's charge, and its OOM kills, when it was kept (empty, neither grows)
    ooms: int = 0


#: This process's spare v1 groups by controller: renamed to the next rank's name
#: instead of an rmdir and a mkdir (~10x dearer in this process, and a memory
#: group's teardown after the rmdir costs the kernel's workers more). A v2 group
#: cannot be renamed; it is made and removed per rank. Each rank's groups carry
#: its name while it runs, so the agent and :func:`sweep` find them as ever.
_spares: dict[str, _Spare] = {}


def drop_spares() -> None:
    """Remove this process's spare groups (it ends; a stale one is swept otherwise)."""
    while _spares:
        _rmdir(_spares.popitem()[1].path)


@functools.cache
def _home_procs() -> tuple[str | None, dict[str, str]]:
    """The ``cgroup.procs`` of this process's own groups (:func:`home`), as strings."""
    home_v2, home_v1 = home()
    return (f"{home_v2}/cgroup.procs" if home_v2 is not None else None,
            {ctrl: f"{path}/cgroup.procs" for ctrl, path in home_v1.items()})


class RankGroup:
    """One rank's groups: created with its limits by the supervisor, entered
    around the job's fork, read for OOM kills and peak memory, killed, removed.
    Paths are strings: a supervisor goes through this for every rank."""

    def __init__(self, layout: Layout, name: str) -> None:
        self.layout = layout
        self.name = name
        self.v2_dir = f"{layout.v2}/{name}"
        self.v1_dirs = {ctrl: f"{p}/{name}" for ctrl, p in layout.v1.items()}
        self.memory = "v2" if "memory" in layout.v2_controllers else "v1" if "memory" in self.v1_dirs else ""
        self.cpu = "v2" if "cpu" in layout.v2_controllers else "v1" if "cpu" in self.v1_dirs else ""
        #: a reused v1 memory group's counts when this rank began (they cannot be reset)
        self.oom_base = 0
        self.usage_base = 0
        self.oom_raw: int | None = None  # the count last read (kept with a spare)
        #: the limits written in each v1 group (see :meth:`_limits`); a spare keeps them
        self.v1_limits: dict[str, tuple[str, ...]] = {}

    @property
    def v2(self) -> Path:
        return Path(self.v2_dir)

    @classmethod
    def create(cls, layout: Layout, name: str, mem_mb: int, ncpus: int) -> RankGroup:
        """Make the rank's groups and write its limits; OSError if that fails."""
        group = cls(layout, name)
        if not _mkdir_in_place(group.v2_dir):
            top = Path(layout.v2)
            _ensure(top.parent, [top.name, name], layout.v2_controllers)
            if not os.path.exists(f"{group.v2_dir}/cgroup.procs"):
                group.remove()
                raise OSError(errno.ENOTDIR, "not a cgroup v2 directory", group.v2_dir)
        group.v1_limits = {ctrl: group._limits(ctrl, mem_mb, ncpus) for ctrl in group.v1_dirs}
        try:
            fresh = [ctrl for ctrl, path in group.v1_dirs.items() if not group._reuse(ctrl, path, group.v1_limits[ctrl])]
            group._limit(mem_mb, ncpus, fresh)
        except OSError:
            group.remove()
            raise
        return group

    def _limits(self, ctrl: str, mem_mb: int, ncpus: int) -> tuple[str, ...]:
        """What :meth:`_limit` writes in the v1 group of ``ctrl``: a spare is reused
        only by a rank whose limits are the same (nothing to rewrite)."""
        if ctrl == "memory" and self.memory == "v1":
            return (str(mem_mb * _MB),) if mem_mb > 0 else ()
        if ctrl == "cpu" and self.cpu == "v1":
            return (str(ncpus * _CPU_PERIOD_US),) if ncpus > 0 else ()
        return ()

    def _reuse(self, ctrl: str, path: str, limits: tuple[str, ...]) -> bool:
        """Make the v1 group ``path`` by renaming this process's spare, when it has
        one with these limits (else the spare goes and a fresh one is made: False).
        A reused memory group's peak starts again; its OOM count is taken as a base."""
        spare = _spares.pop(ctrl, None)
        if spare is not None and spare.limits == limits and os.path.dirname(spare.path) == os.path.dirname(path):
            try:
                os.rename(spare.path, path)
            except OSError:  # swept meanwhile (ENOENT), or a leftover of that name (EEXIST...)
                _rmdir(spare.path)
            else:
                with contextlib.suppress(OSError):  # a rename keeps the old mtime: sweep() would take it as stale
                    os.utime(path)
                if ctrl == "memory" and self.memory == "v1":
                    _write(f"{path}/memory.max_usage_in_bytes", "0")
                    self.oom_base, self.usage_base = spare.ooms, spare.usage
                return True
        elif spare is not None:
            _rmdir(spare.path)
        if not _mkdir_in_place(path):
            parent = os.path.dirname(path)
            _ensure(Path(os.path.dirname(parent)), [os.path.basename(parent), self.name], None)
        return False

    def _limit(self, mem_mb: int, ncpus: int, fresh: list[str]) -> None:
        """Write the limits: in the v2 group, and in the v1 groups in ``fresh`` (a
        reused one has them already)."""
        v2 = self.v2_dir
        if mem_mb > 0 and self.memory == "v2":
            _write(f"{v2}/memory.max", str(mem_mb * _MB))
            if os.path.exists(f"{v2}/memory.swap.max"):
                _write(f"{v2}/memory.swap.max", "0")
            with contextlib.suppress(OSError):  # Linux >= 4.19
                _write(f"{v2}/memory.oom.group", "1")  # the OOM killer takes the whole rank
        elif mem_mb > 0 and self.memory == "v1" and "memory" in fresh:
            mem = self.v1_dirs["memory"]
            _write(f"{mem}/memory.limit_in_bytes", str(mem_mb * _MB))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to limit
                _write(f"{mem}/memory.memsw.limit_in_bytes", str(mem_mb * _MB))
        if ncpus > 0 and self.cpu == "v2":
            _write(f"{v2}/cpu.max", f"{ncpus * _CPU_PERIOD_US} {_CPU_PERIOD_US}")
        elif ncpus > 0 and self.cpu == "v1" and "cpu" in fresh:
            cpu = self.v1_dirs["cpu"]
            if _read(f"{cpu}/cpu.cfs_period_us").strip() != str(_CPU_PERIOD_US):  # a new group has the kernel's default, ours
                _write(f"{cpu}/cpu.cfs_period_us", str(_CPU_PERIOD_US))
            _write(f"{cpu}/cpu.cfs_quota_us", str(ncpus * _CPU_PERIOD_US))

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Run the block with this process in the rank's groups, then move it back:
        a child forked inside (the job's top process) stays in them, and so
        does everything it ever forks."""
        home_v2, home_v1 = _home_procs()
        back: list[str] = []
        try:
            _write(f"{self.v2_dir}/cgroup.procs", "0")  # "0": the writer itself
            if home_v2 is not None:
                back.append(home_v2)
            for ctrl, path in self.v1_dirs.items():
                _write(f"{path}/cgroup.procs", "0")
                if ctrl in home_v1:
                    back.append(home_v1[ctrl])
            yield
        finally:
            for procs in back:
                _write(procs, "0")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in _read(f"{self.v2_dir}/cgroup.procs").split()]
        except OSError:
            return []

    def watch(self) -> int | None:
        """A descriptor of the group's ``cgroup.events`` that ``select`` reports as
        exceptional (POLLPRI) once the file changes — its ``populated`` going to 0
        when the last process exits, children of ours or not; None if unreadable.
        Call :func:`rearm` after each report."""
        try:
            fd = os.open(f"{self.v2_dir}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        rearm(fd)
        return fd

    def populated(self) -> bool:
        """Any process (zombies excluded) left in the rank's group."""
        try:
            for line in _read(f"{self.v2_dir}/cgroup.events").splitlines():
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() != "0"
        except OSError:
            return False
        return bool(self.pids())

    def signal(self, sig: signal.Signals) -> int:
        """Send ``sig`` to every process in the group; how many were hit."""
        hits = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                hits += 1
        return hits

    def kill(self) -> None:
        """SIGKILL everything in the group: one write to ``cgroup.kill`` (Linux >=
        5.14; the kernel also takes processes forking meanwhile), else each pid."""
        try:
            _write(f"{self.v2_dir}/cgroup.kill", "1")
        except FileNotFoundError:
            self.signal(signal.SIGKILL)
        except OSError as exc:
            log.warning("cgroup.kill of %s: %s", self.v2_dir, exc.strerror)
            self.signal(signal.SIGKILL)

    def oom_kills(self) -> int:
        """Processes of the rank the kernel's OOM killer ended at its memory limit
        (the raw count kept in :attr:`oom_raw`, None when it could not be read)."""
        self.oom_raw = None
        try:
            if self.memory == "v2":
                text = _read(f"{self.v2_dir}/memory.events")
            elif self.memory == "v1":
                text = _read(f"{self.v1_dirs['memory']}/memory.oom_control")
            else:
                return 0
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                self.oom_raw = int(value)
                return self.oom_raw - self.oom_base
        return 0

    def peak_mb(self) -> int:
        """The group's highest memory use (RSS and page cache, as the limit counts it); 0 unknown."""
        try:
            if self.memory == "v2":
                return int(_read(f"{self.v2_dir}/memory.peak")) // _MB
            if self.memory == "v1":
                peak = int(_read(f"{self.v1_dirs['memory']}/memory.max_usage_in_bytes"))
                return max(0, peak - self.usage_base) // _MB
        except (OSError, ValueError):
            pass
        return 0

    def cpu_limit(self) -> str:
        """The CPU limit as written (``cpu.max``, or v1's ``quota period``); "" none."""
        try:
            if self.cpu == "v2":
                return _read(f"{self.v2_dir}/cpu.max").strip()
            if self.cpu == "v1":
                cpu = self.v1_dirs["cpu"]
                return f"{_read(f'{cpu}/cpu.cfs_quota_us').strip()} {_read(f'{cpu}/cpu.cfs_period_us').strip()}"
        except OSError:
            pass
        return ""

    def remove(self, keep: bool = False) -> bool:
        """rmdir the rank's groups; False if one still holds processes. ``keep``:
        this process supervises another rank next — its v1 groups stay, empty,
        as spares for that rank (:func:`drop_spares`), unless a memory group
        still holds more than :data:`_SPARE_SLACK` of what this rank left. A kept
        memory group's OOM count, the next rank's base, is the one :meth:`oom_kills`
        read last: the caller reads it once the group is empty (the supervisor does
        at the rank's end), else it is read here."""
        ok = _rmdir(self.v2_dir) or not os.path.exists(self.v2_dir)
        for ctrl, path in self.v1_dirs.items():
            if ok and keep and self._spare(ctrl, path):
                continue
            if not _rmdir(path) and os.path.exists(path):
                ok = False
        return ok

    def _spare(self, ctrl: str, path: str) -> bool:
        """Keep the empty v1 group ``path`` as this process's spare; False when it may not be."""
        limits = self.v1_limits.get(ctrl)
        if limits is None:
            return False
        usage = ooms = 0
        if ctrl == "memory" and self.memory == "v1":
            try:
                usage = int(_read(f"{path}/memory.usage_in_bytes"))
            except (OSError, ValueError):
                return False
            if usage > _SPARE_SLACK:
                return False
            if self.oom_raw is None:  # not read since the group emptied (see remove): the next rank's base
                self.oom_kills()
            if self.oom_raw is None:  # unknown: a next rank would count them as its own
                return False
            ooms = self.oom_raw
        old = _spares.pop(ctrl, None)
        if old is not None:
            _rmdir(old.path)
        _spares[ctrl] = _Spare(path, limits, usage, ooms)
        return True
