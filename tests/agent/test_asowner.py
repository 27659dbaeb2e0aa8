"""nodeagent.asowner: a step of a job's start done by a child that has become the job's owner.

Root only (the child switches to ``nobody``); every wait is for a message from
the child or its exit, never a sleep.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nodeagent import asowner
from nodeagent.env.cache import Announce, Cancelled, EnvCache, EnvError, Owner, Waiter, never, run_tool
from nodeagent.env.pack import prepare
from schedd.protocol import EnvPython, EnvSpec, LaunchSpec


def _nobody() -> Owner | None:
    try:
        e = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return Owner(e.pw_name, e.pw_uid, e.pw_gid, tuple(os.getgrouplist(e.pw_name, e.pw_gid)), e.pw_dir)


NOBODY = _nobody()
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None, reason="needs root and a 'nobody' user")


@pytest.fixture
def owner() -> Owner:
    assert NOBODY is not None
    return NOBODY


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory anyone may write (tmp_path is root's)."""
    d = Path(tempfile.mkdtemp(prefix="schedd-asowner-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def call(owner: Owner, step: asowner.Step, waiter: Waiter = never) -> tuple[dict[str, Any], list[int], list[str]]:
    said: list[str] = []
    result, fds = asowner.call(owner, step, waiter, said.append)
    return result, fds, said


def test_the_step_runs_with_every_id_of_the_owner_and_nothing_of_ours(owner: Owner, tmp_path: Path) -> None:
    ours = os.open(tmp_path / "agent-private", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        def step(wait: Waiter, say: Announce) -> tuple[dict[str, Any], list[int]]:
            say("looking")
            return {"uid": os.getresuid(), "gid": os.getresgid(), "groups": sorted(os.getgroups()),
                    "home": os.environ["HOME"], "fds": sorted(set(_open_files()))}, []

        result, fds, said = call(owner, step)
    finally:
        os.close(ours)
    assert result["uid"] == [owner.uid] * 3 and result["gid"] == [owner.gid] * 3
    assert result["groups"] == sorted(set(owner.groups)) and result["home"] == owner.home
    assert not any("agent-private" in target or "pipe" in target for target in result["fds"]), result["fds"]
    assert (fds, said) == ([], ["looking"])


def _open_files() -> Iterator[str]:
    for name in os.listdir("/proc/self/fd"):
        try:
            yield os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue


def test_a_lock_taken_by_the_step_stays_held_by_the_caller(owner: Owner, public: Path) -> None:
    lock = public / "venv.lock"

    def step(wait: Waiter, say: Announce) -> tuple[dict[str, Any], list[int]]:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return {}, [fd]

    _, (lease,), _ = call(owner, step)  # the child has exited: only our copy holds the lock now
    probe = os.open(lock, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(lease)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


@pytest.mark.parametrize("fail, raised, message", [
    (lambda: (_ for _ in ()).throw(EnvError("bad spec", "L" * 40_000)), EnvError, "bad spec"),
    (lambda: os._exit(3), EnvError, "preparing as nobody failed: the process doing it died"),
    (lambda: 1 / 0, EnvError, "preparing as nobody failed: ZeroDivisionError: division by zero"),
])
def test_a_failure_of_the_step_is_an_env_error(owner: Owner, fail: Any, raised: type[Exception], message: str) -> None:
    def step(wait: Waiter, say: Announce) -> tuple[dict[str, Any], list[int]]:
        fail()
        return {}, []

    with pytest.raises(raised) as exc:
        call(owner, step)
    assert str(exc.value) == message
    if message == "bad spec":
        assert isinstance(exc.value, EnvError) and exc.value.log == "L" * 40_000  # in pieces, whole again


def test_a_kill_while_the_step_runs_a_tool_cancels_it(owner: Owner, public: Path) -> None:
    said: list[str] = []

    def step(wait: Waiter, say: Announce) -> tuple[dict[str, Any], list[int]]:
        say("running")
        with open(public / "tool.log", "wb") as log:
            run_tool(["sleep", "300"], log, wait)
        return {}, []

    def waiter(fd: int | None, timeout_s: float) -> bool:
        return bool(said)  # the job is killed once the step has said it runs its tool

    with pytest.raises(Cancelled, match="killed while running sleep"):
        asowner.call(owner, step, waiter, said.append)


def test_an_owner_cache_is_theirs_and_a_foreign_one_is_refused(owner: Owner, tmp_path: Path) -> None:
    cache = EnvCache(tmp_path / "envs")
    mine = cache.for_owner(owner)
    st = mine.root.stat()
    assert mine.root == tmp_path / "envs" / f"u{owner.uid}"
    assert (st.st_uid, st.st_mode & 0o777) == (owner.uid, 0o700) and mine.environ["HOME"] == owner.home
    assert mine.environ["UV_CACHE_DIR"] == str(mine.root / ".uv-cache")  # nobody's home is not theirs to write
    os.chown(mine.root, 0, 0)  # not theirs (any more): never used for them
    with pytest.raises(EnvError, match="is not a directory of nobody's"):
        cache.for_owner(owner)
    os.rmdir(mine.root)
    os.symlink(tmp_path, mine.root)
    with pytest.raises(EnvError, match="is not a directory of nobody's"):
        cache.for_owner(owner)


def test_a_venv_is_built_by_its_owner_in_their_cache_even_without_a_home(owner: Owner, public: Path) -> None:
    """nobody's home does not exist: uv's cache is theirs, in their env cache."""
    uv = Path(sys.executable).parent / "uv"
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not uv.exists() or python is None:
        pytest.skip("needs uv in this venv and a system python3")
    version = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True).stdout.strip()
    spec = EnvSpec(python=EnvPython(version, executable=python), source="requirements")
    launch = LaunchSpec(job_id="1.srv", name="t", user=owner.name, queue="q", workdir=str(public),
                        stdout_path="o", stderr_path="e", walltime_s=60, ncpus=1, mem_mb=0, gpus=[],
                        argv=["python", "-c", "pass"], env_spec=msgspec.to_builtins(spec))
    cache = EnvCache(public / "envs", installer="uv", environ=dict(os.environ, PATH=f"{uv.parent}:/usr/bin:/bin"))
    said: list[str] = []
    prepared = prepare(launch, public / "src", {}, cache, argv=launch.argv, owner=owner, announce=said.append)
    assert prepared.venv is not None and prepared.built and said[0].startswith("building environment venv")
    mine = public / "envs" / f"u{owner.uid}"
    assert prepared.venv.path == mine / prepared.key / "venv" and prepared.argv == [str(prepared.venv.python), "-c", "pass"]
    assert {p.stat().st_uid for p in [mine, *mine.rglob("*")] if not p.is_symlink()} == {owner.uid}
    assert (mine / ".uv-cache").is_dir()
    prepared.venv.release()
    again = prepare(launch, public / "src", {}, cache, argv=launch.argv, owner=owner)
    assert again.venv is not None and not again.built and again.venv.path == prepared.venv.path
    again.venv.release()
