"""Where the rank directories live: ``STATE/jobs``, or a runtime directory it links to.

A rank directory (:mod:`nodeagent.jobdir`) lives exactly as long as the rank's
processes: records of a running rank, its scratch, its exit until schedd has
it. Nothing in it means anything after a reboot — the processes are gone, and
schedd's store holds what must last. So it belongs on a tmpfs, as
``/run`` holds daemons' runtime state (systemd's ``RuntimeDirectory=``): on the
disks of the machines this was measured on, creating a file costs ~0.3 ms of
CPU and a directory ~0.2 ms, against ~0.01 ms on tmpfs, and a rank makes about
a dozen (bench/RESULTS.md, #12) — more than everything else a short rank costs.

With ``--run-dir RUN`` the agent keeps its rank directories in ``RUN/jobs`` and
makes ``STATE/jobs`` a symbolic link to it, so every path stays the one the
state directory names (the table, tools, ``stop_supervisors``). An existing
``STATE/jobs`` that is a real directory holding ranks is kept: they are live,
and moving them under running supervisors would lose them; the next start
after they are done makes the link. The run directory is locked like the state
directory (one agent each) and removed at a clean stop that leaves no rank.

A run directory sits in a place others can write to (``/dev/shm`` is
world-writable), and a root agent writes scripts and records into it: so the
directory, its parent and ``RUN/jobs`` must be real directories (no symbolic
link), owned by this agent's user or root, and writable by no one else unless
sticky (:func:`prepare`) — else a user could hand the agent a directory, or a
link, of their choosing to write into.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["JOBS", "LOCK", "link_jobs", "prepare", "release"]

log = logging.getLogger("nodeagent.rundir")

JOBS = "jobs"
#: The agent's lock file, in its state directory and in its run directory.
LOCK = "agent.lock"


def prepare(run_dir: Path) -> None:
    """Make the run directory (0700) and check it and its parent can be trusted
    (see the module docstring); OSError saying why not."""
    run_dir = run_dir.absolute()
    run_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        run_dir.mkdir(mode=0o700)
    for path in (run_dir.parent, run_dir):
        _check_trusted(path)


def _check_trusted(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory (a symbolic link?): refusing to keep ranks there")
    if st.st_uid not in (os.geteuid(), 0):
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this agent's user or root")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise OSError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})")


def link_jobs(state_dir: Path, run_dir: Path) -> Path:
    """Make ``STATE/jobs`` lead to ``RUN/jobs`` (see the module docstring); the
    directory the rank directories are really in. OSError when it cannot."""
    prepare(run_dir)
    target = run_dir.absolute() / JOBS
    with contextlib.suppress(FileExistsError):
        target.mkdir()
    _check_trusted(target)
    link = state_dir / JOBS
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return target
        link.unlink()  # it led to another run directory: ranks there belong to no agent now
    elif link.is_dir():
        if any(link.iterdir()):
            log.warning("keeping rank directories in %s: it holds ranks (the run directory %s is used "
                        "once they are done)", link, run_dir)
            return link
        link.rmdir()
    link.symlink_to(target, target_is_directory=True)
    return target


def release(state_dir: Path, run_dir: Path) -> None:
    """At a clean stop: remove the run directory when no rank directory is left in it
    (a tmpfs holds it, so what is left behind costs memory)."""
    target = run_dir.absolute() / JOBS
    try:
        if any(target.iterdir()):
            return
    except OSError:
        return
    link = state_dir / JOBS
    if link.is_symlink():
        link.unlink()
    for leftover in (target, run_dir / LOCK, run_dir):  # never more: RUN may be a shared /run
        with contextlib.suppress(OSError):
            leftover.rmdir() if leftover.is_dir() else leftover.unlink()
