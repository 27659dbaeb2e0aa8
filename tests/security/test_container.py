"""Security issue #17, the container half: a job's container never regains root,
and never mounts a directory its owner could not enter.

The real daemon runs as root with agents switching users (``root_daemon``);
``sdalice`` submits ``-l container=IMAGE`` jobs to a real engine. The image
holds ``/bin/su0``, setuid root, which calls ``setuid(0)`` and runs its
arguments (``tests.dockerimages.setuid_image``). Skipped with the docker tests'
rule when no engine answers (a failure on CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests import dockerimages
from tests.docker.conftest import docker_client  # noqa: F401 - the engine fixture: skip off CI, fail on it
from tests.docker.test_runtime import node_containers
from tests.security.conftest import RootDaemon, User


@pytest.fixture
def image(docker_client: docker.DockerClient) -> str:  # noqa: F811 - the imported fixture's use
    return dockerimages.setuid_image(docker_client)


@pytest.fixture
def daemon(root_daemon: RootDaemon, docker_client: docker.DockerClient) -> Iterator[RootDaemon]:  # noqa: F811
    """The root daemon; any container its jobs leave is removed after the test."""
    yield root_daemon
    for c in node_containers(docker_client, root_daemon):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def status_fields(text: str) -> dict[str, str]:
    """``/proc/self/status`` lines as a dict (``CapEff`` -> ``0000000000000000``)."""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def run_container_job(daemon: RootDaemon, user: User, image: str, *argv: str) -> tuple[dict[str, object], str, str]:
    """Submit ``argv`` in ``image`` with ``qsub`` as ``user``, await its end: (job, stdout, stderr)."""
    out, err = user.home / f"{argv[1]}.out", user.home / f"{argv[1]}.err"
    done = daemon.command(user, "qsub", "-l", f"container={image}", "-o", str(out), "-e", str(err), "--", *argv)
    assert done.returncode == 0, done.stderr
    job = daemon.wait_state(done.stdout.strip(), "finished")
    return job, out.read_text(), err.read_text()


def test_a_setuid_root_binary_in_the_image_leaves_the_job_its_owners_ids(
        daemon: RootDaemon, alice: User, image: str) -> None:
    job, out, err = run_container_job(daemon, alice, image, "/bin/su0", "id")
    assert job["exit_status"] == 0, (job, err)
    assert out.split()[:2] == [f"uid={alice.uid}", f"gid={alice.gid}"] and "euid" not in out, out  # no euid=0
    assert "setuid(0): Operation not permitted" in err, err


def test_the_job_has_no_capabilities_and_no_new_privileges_even_after_setuid(
        daemon: RootDaemon, alice: User, image: str) -> None:
    job, out, err = run_container_job(daemon, alice, image, "/bin/su0", "cat", "/proc/self/status")
    assert job["exit_status"] == 0, (job, err)
    status = status_fields(out)
    assert status["Uid"].split() == [str(alice.uid)] * 4, status["Uid"]  # real, effective, saved, fs
    for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"] == "1"


def _parent_made_root_only(top: Path, alice: User) -> Path:
    """The workdir stays; its parent becomes root's, mode 0700."""
    (top / "root-only-0700").chmod(0o700)
    return top / "root-only-0700" / "pub"


def _workdir_swapped_for_a_symlink(top: Path, alice: User) -> Path:
    """Alice replaces her own workdir with a symlink into root's 0700 directory."""
    (top / "root-only-0700").chmod(0o700)
    mine = alice.home / "work"
    shutil.rmtree(mine)
    mine.symlink_to(top / "root-only-0700" / "pub")
    os.lchown(mine, alice.uid, alice.gid)  # hers, as if she had made it (the homes outlive this test)
    return mine


@pytest.mark.parametrize("lock_out", [_parent_made_root_only, _workdir_swapped_for_a_symlink])
def test_a_workdir_its_owner_cannot_enter_is_not_mounted(
        daemon: RootDaemon, alice: User, image: str, lock_out: Callable[[Path, User], Path]) -> None:
    """Submitted held while the workdir is reachable (whatever the daemon checks at
    submission), made unreachable, released: the launch must refuse it."""
    top = daemon.tmp / "locked"
    pub = top / "root-only-0700" / "pub"
    pub.mkdir(parents=True, mode=0o777)
    pub.chmod(0o777)
    (pub / "secret").write_text("root's secret\n")
    (alice.home / "work").mkdir(exist_ok=True)
    shutil.chown(alice.home / "work", alice.uid, alice.gid)
    workdir = pub if lock_out is _parent_made_root_only else alice.home / "work"
    out = alice.home / "locked.out"
    jid = daemon.submit_as(alice, argv=["cat", "secret"], container=image, workdir=str(workdir), hold=True,
                           stdout_path=str(out), stderr_path=str(alice.home / "locked.err"), name="locked")
    refused = lock_out(top, alice)
    assert daemon.command(alice, "qrls", jid).returncode == 0
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == -1 and job["finish_reason"] == "failed", job
    # refused by spawn's check of the workdir as the owner, or else by the runner's
    # check of every mount (nodeagent.runtime.containerize.reachable): the same words
    reason = f"workdir {refused}: permission denied for user {alice.name}"
    assert job["comment"] in (reason, f"container: {reason}"), job["comment"]
    assert "secret" not in (out.read_text() if out.exists() else "")
