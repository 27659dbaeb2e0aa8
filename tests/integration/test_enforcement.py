"""How a node enforces jobs, end to end: real daemon, real agents, real kernels limits.

As root on this machine (a hybrid cgroup host, like CI) the agents pick
cgroups by themselves (``--enforcement auto``); ``SCHEDD_ENFORCEMENT=proctree``
in their environment forces the fallback of RSS sampling and the process
tree. Either way a job over its memory ends with Exit_status -27 and a comment
saying why, and ``qnodes -a`` says which way the node works.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.pbs_display import ok
from tests.integration.conftest import Daemon, _kill_leftovers, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are the agent's as root")

HOG = "import time; x = bytearray(300 << 20); x[::4096] = b'x' * len(x[::4096]); time.sleep(600)"

# Double fork, setsid, then a sleeper with an empty environment (no job cookie):
# it leaves the job's process group and its cookie behind; it reports its pid.
ESCAPER = """
import os, sys
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        sleeper = "import os, sys, time\\nopen(sys.argv[1], 'w').write(str(os.getpid()))\\ntime.sleep(3600)\\n"
        os.execve(sys.executable, [sys.executable, "-c", sleeper, sys.argv[1]], {})
    os._exit(0)
os.wait()
import time
time.sleep(3600)
"""


def _start(tmp: Path, mode: str | None) -> Daemon:
    old = os.environ.pop("SCHEDD_ENFORCEMENT", None)
    if mode is not None:
        os.environ["SCHEDD_ENFORCEMENT"] = mode  # the local pool's agents inherit the daemon's environment
    try:
        return Daemon(tmp, nodes=1, gpus=0).start()
    finally:
        os.environ.pop("SCHEDD_ENFORCEMENT", None)
        if old is not None:
            os.environ["SCHEDD_ENFORCEMENT"] = old


@pytest.fixture(scope="module", params=["auto", "proctree"])
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    mode = None if request.param == "auto" else request.param
    d = _start(tmp_path_factory.mktemp(f"enforce-{request.param}"), mode)
    d.forced = mode  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.stop()
        _kill_leftovers(d.state)


def _cgroups(d: Daemon) -> bool:
    return str(d.up_nodes()[0]["enforcement"]).startswith("cgroup2")


def test_qnodes_says_how_the_node_enforces(daemon: Daemon) -> None:
    mode = daemon.up_nodes()[0]["enforcement"]
    if getattr(daemon, "forced") == "proctree":
        assert mode == "proctree"
    else:  # root on a cgroup host: a group per rank, the controllers this host has
        assert mode.startswith("cgroup2"), mode
    assert f"     enforcement = {mode}\n" in ok(daemon.url, "qnodes", "-a")


def test_memory_over_the_request_ends_minus_27_with_a_comment(daemon: Daemon) -> None:
    jid = daemon.submit(argv=["python3", "-c", HOG], chunks=[{"ncpus": 1, "mem_mb": 64}], name="hog")
    job = daemon.wait_state(jid, "finished")
    assert (job["exit_status"], job["finish_reason"]) == (-27, "out_of_memory")
    if _cgroups(daemon):
        assert "64 MB limit reached: the kernel's OOM killer" in job["comment"], job["comment"]
    else:
        assert "over the 64 MB requested" in job["comment"], job["comment"]
    assert "Exit_status = -27" in ok(daemon.url, "qstat", "-fx", jid)


def test_qdel_kills_a_double_forked_setsid_sleeper(daemon: Daemon, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    jid = daemon.submit(argv=["python3", "-c", ESCAPER, str(pidfile)], name="escaper")
    daemon.wait_state(jid, "running")
    pid = int(wait_for("the sleeper's pid", lambda: pidfile.exists() and pidfile.read_text()))
    if _cgroups(daemon):  # in the rank's group, though it left the session and the tree
        assert "/schedd/" in Path(f"/proc/{pid}/cgroup").read_text()
    daemon.client.call("DELETE", f"/api/v1/jobs/{jid}")
    daemon.wait_state(jid, "finished")
    assert not _alive(pid)  # the exit is recorded once nothing of the job is left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(autouse=True)
def _no_sleeper(tmp_path: Path) -> Iterator[None]:
    yield
    pidfile = tmp_path / "sleeper.pid"
    if pidfile.exists() and pidfile.read_text():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
