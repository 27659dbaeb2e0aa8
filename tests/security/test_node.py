"""Security issue #17, node side: nothing done for a job runs with more rights than its owner's.

The real daemon as root, its agents switching to each job's owner, two
ordinary users (see ``conftest.py``). Each test is the attack as reported
(an env spec naming the user's own "interpreter", a checkout whose directory
is a committed symlink, a workdir under a directory only root may enter, an
output path in such a directory, a venv another user built) and checks that
it gains the user nothing: no root-owned file, root's files untouched, nothing
printed that the user could not read, the same answer as for a missing path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pyenvs import git, make_repo
from tests.security.conftest import RootDaemon, User, root_owned_files

#: The users' interpreter (/usr/bin/python3) as an env spec names it; its version is read once.
USER_PYTHON = "/usr/bin/python3"


def _python_version() -> str:
    out = subprocess.run([USER_PYTHON, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "3.11.2"


@pytest.fixture
def root_dir(homes: Path) -> Iterator[Path]:
    """A directory only root may enter (0700), next to the users' homes."""
    d = Path(tempfile.mkdtemp(prefix="rootonly-", dir=homes))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def space() -> Iterator[Callable[[User], Path]]:
    """``space(user)``: a fresh directory of ``user``'s in their home, for this test
    alone (the homes are shared by the whole session)."""
    made: list[Path] = []

    def make(user: User) -> Path:
        d = Path(tempfile.mkdtemp(prefix="node-", dir=user.home))
        d.chmod(0o755)
        os.chown(d, user.uid, user.gid)
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def give(path: Path, user: User) -> None:
    """``path`` and everything under it to ``user`` (links themselves, not their targets)."""
    for top, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(top, name), user.uid, user.gid)
    os.lchown(path, user.uid, user.gid)


def finished(daemon: RootDaemon, jid: str) -> dict[str, Any]:
    return daemon.wait_state(jid, "finished", timeout=120)


# ---------------------------------------------------------------- 1: the environment build


def test_the_interpreter_an_env_spec_names_runs_as_its_owner(root_daemon: RootDaemon, alice: User,
                                                             space: Callable[[User], Path]) -> None:
    home = space(alice)
    fakepy = home / "fakepy"
    fakepy.write_text(f"#!/bin/sh\nid -u > {home}/proof.$$\necho 3.11\n")
    fakepy.chmod(0o755)
    give(fakepy, alice)
    spec = {"python": {"version": "3.11.2", "executable": str(fakepy)}, "source": "requirements",
            "requirements": ["x==1"]}
    job = finished(root_daemon, root_daemon.submit_as(alice, argv=["true"], env_spec=spec, name="fake",
                                                      workdir=str(home)))
    assert job["exit_status"] == -1 and job["comment"].startswith("environment "), job  # no venv of fakepy
    proofs = sorted(home.glob("proof.*"))
    assert proofs, "the probe ran (as alice) or was refused: either way no proof written as root"
    assert {p.stat().st_uid for p in proofs} == {alice.uid}
    assert {p.read_text().strip() for p in proofs} == {str(alice.uid)}
    assert root_owned_files(home) == []
    cache = root_daemon.state / "envs" / f"u{alice.uid}"
    assert cache.stat().st_uid == alice.uid and root_owned_files(cache) == []


def test_a_venv_alice_built_is_never_run_by_bob(root_daemon: RootDaemon, alice: User, bob: User,
                                               space: Callable[[User], Path]) -> None:
    """The same env spec, the same venv key: two venvs, each in its owner's 0700 cache."""
    spec = {"python": {"version": _python_version(), "executable": USER_PYTHON}, "source": "requirements",
            "requirements": []}
    argv = ["python", "-c", "import sys; print(sys.prefix)"]
    prefixes = {}
    for user in (alice, bob):
        home = space(user)
        out = home / "prefix.txt"
        job = finished(root_daemon, root_daemon.submit_as(user, argv=argv, env_spec=spec, stdout_path=str(out),
                                                          workdir=str(home)))
        assert job["exit_status"] == 0, (job, out.read_text())
        prefixes[user.name] = Path(out.read_text().strip())
    envs = root_daemon.state / "envs"
    for user in (alice, bob):
        mine = envs / f"u{user.uid}"
        assert prefixes[user.name].is_relative_to(mine), prefixes
        assert mine.stat().st_uid == user.uid and mine.stat().st_mode & 0o777 == 0o700
        assert root_owned_files(mine) == []
    assert prefixes[alice.name].relative_to(envs / f"u{alice.uid}") == \
        prefixes[bob.name].relative_to(envs / f"u{bob.uid}")  # one key, two owners


# ---------------------------------------------------------------- 2: the checkout


@pytest.mark.parametrize("cwd, files, why", [
    ("evil/sub", [], "code: the job's directory 'evil/sub' leads outside the checkout (a symbolic link to "),
    ("", [{"path": "evil/planted", "data": "eA=="}],
     "code: included file 'evil/planted' leads outside the checkout (a symbolic link to "),
])
def test_a_checkout_never_follows_a_committed_symlink_out(root_daemon: RootDaemon, alice: User, root_dir: Path,
                                                          space: Callable[[User], Path], cwd: str,
                                                          files: list[dict[str, str]], why: str) -> None:
    target = root_dir / "target"
    target.mkdir(mode=0o755)
    root_dir.chmod(0o755)  # reachable: the attack is the chown, not the traversal
    home = space(alice)
    repo = home / "repo"
    make_repo(repo, {"train.py": "print('ran')\n"})
    os.symlink(target, repo / "evil")
    git(repo, "add", "evil")
    git(repo, "commit", "-q", "-m", "a link out")
    commit = git(repo, "rev-parse", "HEAD").strip()
    give(repo, alice)
    git_spec: dict[str, Any] = {"root": str(repo), "commit": commit}
    if cwd:
        git_spec["cwd"] = cwd
    spec = {"python": {"version": _python_version(), "executable": USER_PYTHON}, "source": "requirements",
            "requirements": [], "git": git_spec, "files": files}
    job = finished(root_daemon, root_daemon.submit_as(alice, argv=["python", "train.py"], env_spec=spec,
                                                      workdir=str(home)))
    assert job["exit_status"] == -1 and why in job["comment"], job
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    assert list(target.iterdir()) == []
    assert root_owned_files(home) == []


# ---------------------------------------------------------------- 3: the workdir


@pytest.mark.parametrize("parent, mode, why", [
    (0o700, 0o755, "workdir {w}: permission denied for user sdalice"),  # the reported case
    (0o755, 0o700, "workdir {w}: permission denied for user sdalice"),
    (0o755, None, "workdir {w} does not exist or is not a directory"),
])
def test_a_workdir_its_owner_cannot_enter_is_never_entered(root_daemon: RootDaemon, alice: User, root_dir: Path,
                                                           space: Callable[[User], Path], parent: int,
                                                           mode: int | None, why: str) -> None:
    root_dir.chmod(parent)
    workdir = root_dir / "pub"
    if mode is not None:
        workdir.mkdir(mode=mode)
        (workdir / "secret").write_text("root's secret\n")
        (workdir / "secret").chmod(0o644)
    out = space(alice) / "cat.txt"
    job = finished(root_daemon, root_daemon.submit_as(alice, argv=["cat", "secret"], workdir=str(workdir),
                                                      stdout_path=str(out), stderr_path=str(out)))
    assert (job["exit_status"], job["comment"]) == (-1, why.format(w=workdir)), job
    assert not out.exists() or "secret" not in out.read_text()


# ---------------------------------------------------------------- 10: -o DIR


def test_output_to_a_directory_its_owner_cannot_see_is_answered_as_for_a_missing_one(
        root_daemon: RootDaemon, alice: User, root_dir: Path, space: Callable[[User], Path]) -> None:
    home = space(alice)
    (root_dir / "logs").mkdir(mode=0o755)  # exists, but only root can tell
    comments = {}
    for name in ("logs", "nologs"):
        path = root_dir / name
        job = finished(root_daemon, root_daemon.submit_as(alice, argv=["echo", "hi"], stdout_path=str(path),
                                                          name="outdir", workdir=str(home)))
        assert job["stdout_path"] == str(path), job  # kept as given: the daemon did not look
        assert job["exit_status"] == -1, job
        comments[name] = job["comment"].replace(str(path), "PATH")
    assert comments["logs"] == comments["nologs"] == "cannot open output file PATH: Permission denied"
    assert list((root_dir / "logs").iterdir()) == []


def test_output_to_a_directory_of_the_owner_goes_inside_it(root_daemon: RootDaemon, alice: User,
                                                           space: Callable[[User], Path]) -> None:
    home = space(alice)
    logs = home / "logs"
    logs.mkdir()
    give(logs, alice)
    job = finished(root_daemon, root_daemon.submit_as(alice, argv=["echo", "hi"], stdout_path=str(logs),
                                                      name="outdir", join="oe", workdir=str(home)))
    assert job["exit_status"] == 0, job
    (written,) = list(logs.iterdir())
    assert written.name.startswith("outdir.o") and written.read_text() == "hi\n"
    assert written.stat().st_uid == alice.uid
