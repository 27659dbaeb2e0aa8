"""Enforcement by cgroups (nodeagent.cgroups), driving real supervisors as root.

This machine is a hybrid cgroup host (v1 controllers, a controller-less v2 at
/sys/fs/cgroup/unified), as CI is: processes are found and killed through
cgroup v2, memory and CPU limits are v1's. Each test gets an agent group of its
own (named by its tmp state dir) and removes it afterwards.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent import cgroups
from nodeagent.cgroups import Layout, RankGroup
from schedd.protocol import EXIT_MEM, EXIT_WALLTIME
from tests.agent.conftest import Fifo, Sup, gone, identity, launch, py

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are the agent's as root")


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    found = cgroups.detect("cgtest", tmp_path / "state", "cgroup")
    assert found is not None
    yield found
    for path in found.paths(""):  # the agent's groups: whatever a failed test left in them goes
        for child in (p for p in (path.iterdir() if path.exists() else ()) if p.is_dir()):
            RankGroup(found, child.name).kill()
    for path in found.paths(""):
        for child in (p for p in (path.iterdir() if path.exists() else ()) if p.is_dir()):
            for _ in range(1000):  # killed processes leave their group within a scheduler tick or so
                if RankGroup(found, child.name).remove():
                    break
                os.sched_yield()
    cgroups.remove_agent_group(found)


def test_detects_this_hybrid_host(layout: Layout) -> None:
    assert layout.mode.startswith("cgroup2")
    assert Path(layout.v2, "cgroup.procs").exists()
    # Here memory and cpu come from v1 (the v2 hierarchy has no controllers).
    if "memory" not in layout.v2_controllers:
        assert "+memory-v1" in layout.mode and Path(layout.v1["memory"], "memory.limit_in_bytes").exists()


def test_forced_fallback_is_the_process_tree(tmp_path: Path) -> None:
    assert cgroups.detect("cgtest", tmp_path / "state", "proctree") is None
    assert cgroups.mode_of(None) == "proctree"
    with pytest.raises(ValueError, match="enforcement must be one of"):
        cgroups.detect("cgtest", tmp_path / "state", "sometimes")
    with pytest.raises(ValueError, match="cannot use cgroups"):
        cgroups.detect("cgtest", tmp_path / "state", "auto", root=str(tmp_path))  # not a cgroup directory


def test_memory_limit_is_kept_by_the_kernel(tmp_path: Path, layout: Layout) -> None:
    # The sampler does not look for an hour: only the kernel's limit can end this job.
    code = "import time\nblock = bytearray(200 << 20)\nblock[::4096] = b'x' * len(block[::4096])\ntime.sleep(600)\n"
    exited = Sup(tmp_path / "job", launch(tmp_path, argv=py(code), mem_mb=50), cgroups=layout,
                 sample_interval_s=3600).wait()
    assert (exited.status, exited.how) == (EXIT_MEM, "memory")
    assert "50 MB limit reached: the kernel's OOM killer" in exited.comment
    assert exited.peak_rss_mb >= 49
    assert not any(p.exists() for p in layout.paths("job")), "the rank's groups are removed at its end"


# The leader ignores SIGTERM; its grandchild double-forks, calls setsid and
# executes a sleeper with an empty environment (no job cookie): it leaves the
# process group, the tree (no subreaper) and the cookie scan behind.
ESCAPER = """
import os, signal, sys
fifo = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        sleeper = "import os, sys, time\\nopen(sys.argv[1], 'w').write(f'{os.getpid()}\\\\n')\\ntime.sleep(3600)\\n"
        os.execve(sys.executable, [sys.executable, "-c", sleeper, fifo], {})
    os._exit(0)
os.wait()
with open(fifo, "w") as f:
    f.write(f"{os.getpid()}\\n")
signal.pause()
"""


@pytest.mark.parametrize("end", ["qdel", "walltime"])
def test_an_escaped_sleeper_is_killed_through_the_group(tmp_path: Path, layout: Layout, end: str) -> None:
    fifo = Fifo(tmp_path / "fifo")
    walltime = 600.0 if end == "qdel" else 2.0
    sup = Sup(tmp_path / "job", launch(tmp_path, argv=py(ESCAPER, str(fifo.path)), walltime_s=walltime),
              cgroups=layout, subreaper=False, sample_interval_s=3600)
    procs = {identity(int(fifo.readline())), identity(int(fifo.readline()))}
    group = RankGroup(layout, "job")
    assert {pid for pid, _ in procs} <= set(group.pids())
    if end == "qdel":
        sup.kill(delay_s=0.3)
    exited = sup.wait()
    assert exited.how == ("killed" if end == "qdel" else "walltime")
    assert exited.status == (256 + signal.SIGKILL if end == "qdel" else EXIT_WALLTIME)
    assert all(gone(p) for p in procs), procs
    assert not group.v2.exists()


def test_cpu_and_memory_limits_are_written(tmp_path: Path, layout: Layout) -> None:
    fifo = Fifo(tmp_path / "fifo")
    code = "import os, signal, sys\nopen(sys.argv[1], 'w').write('up\\n')\nsignal.pause()\n"
    sup = Sup(tmp_path / "job", launch(tmp_path, argv=py(code, str(fifo.path)), ncpus=3, mem_mb=300),
              cgroups=layout)
    assert fifo.readline() == "up"
    group = RankGroup(layout, "job")
    assert group.cpu_limit() == "300000 100000"  # cpu.max, or v1's cfs quota and period: 3 CPUs' worth
    if group.memory == "v1":
        assert Path(layout.v1["memory"], "job", "memory.limit_in_bytes").read_text().strip() == str(300 << 20)
    else:
        assert Path(layout.v2, "job", "memory.max").read_text().strip() == str(300 << 20)
    started = sup.started()
    assert started is not None and started.pid in group.pids()
    sup.kill(delay_s=0.3)
    sup.wait()
    assert not any(p.exists() for p in layout.paths("job"))


def test_sweep_removes_only_empty_groups_of_no_running_rank(tmp_path: Path, layout: Layout) -> None:
    for name in ("stale", "running-but-empty", "busy"):
        RankGroup.create(layout, name, 0, 0)
    rfd, wfd = os.pipe()
    holder = os.fork()
    if holder == 0:  # a process in "busy": a job that outlived its agent
        try:
            with RankGroup(layout, "busy").enter():
                os.write(wfd, b"in")
                signal.pause()
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        assert os.read(rfd, 2) == b"in"
        removed = cgroups.sweep(layout, keep={"running-but-empty"})
        ours = {str(p) for p in layout.paths("")}
        assert {Path(p).name for p in removed if str(Path(p).parent) in ours} == {"stale"}
        assert all(p.exists() for p in layout.paths("running-but-empty"))
        assert Path(layout.v2, "busy").exists()
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        os.close(rfd)
    assert RankGroup(layout, "busy").remove() and RankGroup(layout, "running-but-empty").remove()


def test_a_rank_whose_group_cannot_be_made_falls_back(tmp_path: Path, layout: Layout) -> None:
    broken = Layout(layout.mode, str(tmp_path / "no-such-cgroup"), [], {})
    code = "import time\nblock = bytearray(200 << 20)\nblock[::4096] = b'x' * len(block[::4096])\ntime.sleep(600)\n"
    sup = Sup(tmp_path / "job", launch(tmp_path, argv=py(code), mem_mb=50), cgroups=broken, sample_interval_s=0.1)
    exited = sup.wait()
    assert (exited.status, exited.how) == (EXIT_MEM, "memory")
    assert "over the 50 MB requested" in exited.comment  # the RSS sampler's words
    assert "enforcing by process tree" in (tmp_path / "job" / "supervisor.log").read_text()


def test_sweep_takes_other_agents_leftovers_once_stale(tmp_path: Path, layout: Layout) -> None:
    other = cgroups.detect("cgtest-other", tmp_path / "other-state", "cgroup")
    assert other is not None
    try:
        RankGroup.create(other, "left", 0, 0)  # its agent died with its state directory
        assert not any(Path(p).name == "left" for p in cgroups.sweep(layout, set()))  # fresh: maybe about to run
        assert all(p.exists() for p in other.paths("left"))
        removed = cgroups.sweep(layout, set(), now=time.time() + cgroups.STALE_S + 60)
        assert {str(p) for p in other.paths("left")} <= set(removed)
        assert {str(p) for p in other.paths("")} <= set(removed)  # and its agent's groups, now empty
    finally:
        RankGroup(other, "left").remove()
        cgroups.remove_agent_group(other)


@pytest.fixture
def _root_logging() -> Iterator[None]:
    """The agent's main() configures the root logger to this test's captured stderr;
    put it back, else later tests log into a closed stream ("--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_root_logging")
def test_the_agent_refuses_cgroups_it_cannot_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodeagent.main import main

    argv = ["--server", "http://127.0.0.1:9", "--name", "cgtest", "--state-dir", str(tmp_path / "state"),
            "--enforcement", "cgroup", "--cgroup-root", str(tmp_path)]
    assert main(argv) == 2
    assert "cannot use cgroups for enforcement" in capsys.readouterr().err
    os.environ["SCHEDD_ENFORCEMENT"] = "sometimes"
    try:
        assert main(argv[:6]) == 2
    finally:
        del os.environ["SCHEDD_ENFORCEMENT"]
    assert "--enforcement must be one of auto, cgroup, proctree" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_a_dead_supervisors_job_is_killed_through_its_group(tmp_path: Path, layout: Layout) -> None:
    import asyncio

    from nodeagent.jobs import JobTable, RankKey
    from schedd.protocol import Exited, Started

    fifo = Fifo(tmp_path / "fifo")
    table = JobTable(tmp_path / "state", node="cgtest", cgroups=layout)
    await table.open()
    try:
        assert table.launch(launch(tmp_path, argv=py(ESCAPER, str(fifo.path))))
        assert isinstance(await asyncio.wait_for(table.events.get(), 30), Started)
        procs = {identity(int(fifo.readline())), identity(int(fifo.readline()))}
        sup, _, _ = table.get(RankKey("7.srv", 0, 0)) or (None, None, None)
        assert sup is not None
        os.kill(sup.pid, signal.SIGKILL)  # the sleeper is in no process group, tree or cookie scan of ours
        exited = await asyncio.wait_for(table.events.get(), 30)
        assert isinstance(exited, Exited) and "died" in exited.comment
        deadline = time.monotonic() + 30
        while not all(gone(p) for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # SIGKILLed by cgroup.kill: gone within a scheduler tick or so
        assert all(gone(p) for p in procs), procs
    finally:
        await table.close()



@pytest.mark.asyncio
async def test_a_reused_supervisor_renames_its_groups_and_counts_afresh(tmp_path: Path, layout: Layout) -> None:
    """A supervisor process serving rank after rank keeps its v1 groups for the next
    rank, renamed to that rank's name: the second rank's job is in groups named
    after it, the first rank's OOM kill and peak are not the second's, and the
    groups go with the process."""
    import asyncio

    from nodeagent.jobdir import rank_dirname
    from nodeagent.jobs import JobTable
    from tests.agent.conftest import dies
    from tests.agent.test_supervisor_reuse import _run

    # Each job writes its groups and the inode of its v1 memory group (kept by a rename).
    look = ("import os, sys\nst = os.stat(sys.argv[2])\nopen(sys.argv[1], 'w').write(f'{st.st_ino} {st.st_mtime}\\n'"
            " + open('/proc/self/cgroup').read())\n")
    hog = look + "block = bytearray(200 << 20)\nblock[::4096] = b'x' * len(block[::4096])\n"
    names = [rank_dirname(job_id, 0, 0) for job_id in ("1.srv", "2.srv")]
    seen = [tmp_path / f"cgroup-{n}.txt" for n in names]
    memory = [f"{layout.v1.get('memory', layout.v2)}/{n}" for n in names]
    table = JobTable(tmp_path / "state", node="cgtest", cgroups=layout)
    await table.open()
    try:
        first, a = await _run(table, launch(tmp_path, job_id="1.srv", argv=py(hog, str(seen[0]), memory[0]), mem_mb=50))
        if os.path.isdir(memory[0]):  # the spare, made old: a sweep must not take the next rank's group as stale
            os.utime(memory[0], (time.time() - 2 * cgroups.STALE_S,) * 2)
        second, b = await _run(table, launch(tmp_path, job_id="2.srv", argv=py(look, str(seen[1]), memory[1]),
                                             mem_mb=50))
        proc = proctree_identity(second)
    finally:
        await table.close()
    assert first == second  # one process, two ranks
    assert (a.status, a.how) == (EXIT_MEM, "memory")
    assert (b.status, b.how) == (0, "exited"), b.comment
    assert b.peak_rss_mb < 40, "the first rank's peak is not the second's"
    head, *lines = seen[1].read_text().splitlines()
    inode, mtime = head.split()
    assert all(line.endswith("/" + names[1]) for line in lines if ":memory:" in line or line.startswith("0::")), lines
    if "memory" in layout.v1:  # v1 groups are renamed, v2 ones (which cannot be) made anew
        assert inode == seen[0].read_text().split()[0], "the first rank's memory group, renamed"
        assert time.time() - float(mtime) < cgroups.STALE_S, "a renamed group is fresh for sweep()"
    assert await asyncio.to_thread(dies, proc)  # its server is gone: it ends, and its groups with it
    assert not [p for top in layout.paths("") for p in top.iterdir() if p.is_dir()]


def proctree_identity(pid: int) -> tuple[int, float]:
    from nodeagent import proctree

    return pid, proctree.create_time(pid)


def _v2_point() -> str:
    mount = cgroups._mounts()[0]
    assert mount is not None
    return mount[0]


_MS = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
_MS_REMOUNT = 32


def _remount_without_favordynmods(point: str) -> None:
    """mount(2) itself: mount(8) merges the options a mount has, so it cannot drop one."""
    import ctypes

    options = [o for o in cgroups._v2_options(point) or [] if o != "favordynmods"]
    flags = _MS_REMOUNT
    for o in options:
        flags |= _MS.get(o, 0)
    data = ",".join(o for o in options if o not in _MS and o != "rw")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(None, point.encode(), None, flags, data.encode()) == 0, os.strerror(ctypes.get_errno())


def test_root_agent_remounts_cgroup2_with_favordynmods_keeping_its_options(layout: Layout) -> None:
    """Moving a rank into its groups must not wait an RCU grace period per move
    (~10 ms each under load: issue #12's start latency). The agent's detect()
    leaves the hierarchy mounted with favordynmods and every option it had."""
    point = _v2_point()
    _remount_without_favordynmods(point)
    before = cgroups._v2_options(point) or []
    assert "favordynmods" not in before
    made = cgroups.detect("favortest", Path(layout.v2), "cgroup")
    assert made is not None
    cgroups.remove_agent_group(made)
    after = cgroups._v2_options(point) or []
    assert set(after) == {*before, "favordynmods"}, (before, after)
    assert cgroups.favor_dynmods(point)  # already there: nothing to do, still True
