"""Rebuilding a captured environment: the venv cache (build, hit, one builder,
precise failures, LRU eviction), the code checkout, and both under a real supervisor.

Offline: packages are tiny wheels in a local directory, found through pip's
own environment settings (PIP_NO_INDEX, PIP_FIND_LINKS) as on an air-gapped node.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nodeagent.env.pack import EnvCache, EnvError, checkout, venv_key
from schedd.protocol import EnvFile, EnvGit, EnvPackage, EnvPython, EnvSpec
from tests.agent.conftest import TIMEOUT_S, Sup, launch
from tests.pyenvs import git, make_project, make_repo, make_wheel, offline_env

PY_VERSION = "%d.%d.%d" % sys.version_info[:3]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    make_wheel(d, "tinypkg", "1.0")
    make_wheel(d, "tinypkg", "2.0")
    return d


def spec_of(*packages: EnvPackage, **fields: Any) -> EnvSpec:
    return EnvSpec(python=EnvPython(PY_VERSION, base=getattr(sys, "_base_executable", "")),
                   packages=list(packages), **fields)


def cache_in(tmp: Path, wheels: Path, **kw: Any) -> EnvCache:
    return EnvCache(tmp / "envs", installer=kw.pop("installer", "pip"), environ=offline_env(wheels), **kw)


def version_in(python: Path, module: str = "tinypkg") -> str:
    out = subprocess.run([str(python), "-c", f"import {module}; print({module}.__version__)"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_spec_is_built_once_then_every_use_is_a_hit(tmp_path: Path, wheels: Path) -> None:
    cache = cache_in(tmp_path, wheels)
    spec = spec_of(EnvPackage("tinypkg", "1.0"))  # 2.0 is there too: the pin decides
    venv = cache.ensure(spec)
    assert venv.built and version_in(venv.python) == "1.0"
    ready = tmp_path / "envs" / venv.key / "ready"
    inode, used = ready.stat().st_ino, ready.stat().st_mtime_ns
    venv.release()
    again = cache.ensure(spec)
    assert (again.built, again.key, again.path) == (False, venv.key, venv.path)
    assert ready.stat().st_ino == inode and ready.stat().st_mtime_ns >= used  # touched, not rebuilt
    assert again.seconds < 1.0  # a hit is a flock, two stats and a utime (~1 ms)
    again.release()


def test_concurrent_builds_of_one_spec_build_it_once(tmp_path: Path, wheels: Path) -> None:
    spec = msgspec.json.encode(spec_of(EnvPackage("tinypkg", "2.0"))).decode()
    code = ("import sys, msgspec; from pathlib import Path; from nodeagent.env.pack import EnvCache;"
            "from schedd.protocol import EnvSpec;"
            f"v = EnvCache(Path({str(tmp_path / 'envs')!r}), installer='pip').ensure("
            f"msgspec.json.decode({spec!r}, type=EnvSpec)); print(v.built, v.key)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, env=offline_env(wheels)) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    built = sorted(out.split()[0] for out, _ in outs)
    assert built == ["False", "True"] and len({out.split()[1] for out, _ in outs}) == 1


def test_failures_are_precise_and_leave_nothing_half_built(tmp_path: Path, wheels: Path) -> None:
    cache = cache_in(tmp_path, wheels)
    with pytest.raises(EnvError) as missing:
        cache.ensure(spec_of(EnvPackage("tinypkg", "9.9")))
    assert "pip install failed" in str(missing.value) and "tinypkg==9.9" in str(missing.value)
    assert "from versions: 1.0, 2.0" in missing.value.log
    assert cache.entries() == [] and [p.name for p in (tmp_path / "envs").iterdir() if p.is_dir()] == []
    with pytest.raises(EnvError, match=r"Python 3\.99 is not installed on this node"):
        cache.ensure(EnvSpec(python=EnvPython("3.99.0", executable="/nowhere/python3.99")))
    with pytest.raises(EnvError, match="editable install of mylib: /nowhere/mylib does not exist on this node"):
        cache.ensure(spec_of(EnvPackage("mylib", "0.1", editable="/nowhere/mylib")))


def test_an_editable_install_is_installed_from_its_path(tmp_path: Path, wheels: Path) -> None:
    make_project(tmp_path / "mylib", "mylib", "0.3")
    venv = cache_in(tmp_path, wheels).ensure(spec_of(EnvPackage("mylib", "0.3", editable=str(tmp_path / "mylib"))))
    assert version_in(venv.python, "mylib") == "0.3"
    (tmp_path / "mylib" / "mylib" / "__init__.py").write_text("__version__ = 'live'\n")
    assert version_in(venv.python, "mylib") == "live"  # editable: the path, as on the submit host


def test_least_recently_used_venvs_nobody_holds_are_evicted(tmp_path: Path, wheels: Path) -> None:
    cache = cache_in(tmp_path, wheels)
    a, b = spec_of(), spec_of(EnvPackage("tinypkg", "1.0"))
    c, d = spec_of(EnvPackage("tinypkg", "2.0")), spec_of(source="requirements", requirements=["tinypkg==1.0"])
    va, vb = cache.ensure(a), cache.ensure(b)
    vb.release()
    size = max(s for _, s, _ in cache.entries())
    cache.max_bytes = 2 * size + size // 2  # room for two venvs
    vc = cache.ensure(c)  # a is the oldest but held by a job: b goes
    assert sorted(k for _, _, k in cache.entries()) == sorted([va.key, vc.key])
    va.release()
    vc.release()
    cache.ensure(c).release()  # a use: c is now more recent than a
    vd = cache.ensure(d)
    assert sorted(k for _, _, k in cache.entries()) == sorted([vc.key, vd.key])
    assert not (tmp_path / "envs" / va.key).exists() and venv_key(a) == va.key


def test_uv_builds_the_same_venv_when_it_is_installed(tmp_path: Path, wheels: Path) -> None:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed in this venv")
    cache = EnvCache(tmp_path / "envs", installer="uv",
                     environ=offline_env(wheels, PATH=f"{uv.parent}{os.pathsep}{os.environ['PATH']}"))
    venv = cache.ensure(spec_of(EnvPackage("tinypkg", "1.0")))
    assert venv.built and version_in(venv.python) == "1.0"
    with pytest.raises(EnvError, match="uv pip install failed:.*tinypkg==9.9"):
        cache.ensure(spec_of(EnvPackage("tinypkg", "9.9")))


# ---------------------------------------------------------------- the code


def test_a_checkout_is_the_commit_plus_the_diff_plus_the_included_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = make_repo(repo, {"exp/train.py": "v1\n"})
    (repo / "exp" / "train.py").write_text("v2\n")
    diff = git(repo, "diff", "HEAD", "--binary")
    (repo / "exp" / "train.py").write_text("v3: edited after submission\n")
    spec = spec_of(git=EnvGit(root=str(repo), commit=commit, diff=diff, cwd="exp"),
                   files=[EnvFile("exp/conf/local.yaml", base64.b64encode(b"x: 1\n").decode(), 0o600)])
    cwd = checkout(spec, tmp_path / "job" / "src")
    assert cwd == tmp_path / "job" / "src" / "exp"
    assert (cwd / "train.py").read_text() == "v2\n"  # what was submitted, not what the tree holds now
    assert (cwd / "conf" / "local.yaml").read_text() == "x: 1\n"
    assert (cwd / "conf" / "local.yaml").stat().st_mode & 0o777 == 0o600
    bad = spec_of(git=EnvGit(root=str(repo), commit=commit, diff=diff.replace("+v2", "+v2\n+more").replace("-v1", "-v0")))
    with pytest.raises(EnvError, match=f"the uncommitted diff does not apply to commit {commit[:12]}") as e:
        checkout(bad, tmp_path / "job2" / "src")
    assert "patch failed" in e.value.log
    gone = spec_of(git=EnvGit(root=str(tmp_path / "moved"), commit=commit))
    with pytest.raises(EnvError, match="does not exist on this node and the repository has no origin remote"):
        checkout(gone, tmp_path / "job3" / "src")


@pytest.mark.parametrize("cwd, include, why", [
    ("/etc", "", "code: the job's directory '/etc' must be a relative path inside the repository, without '..'"),
    ("exp/../..", "", "code: the job's directory 'exp/../..' must be a relative path inside the repository"),
    ("out/sub", "", "code: the job's directory 'out/sub' leads outside the checkout (a symbolic link to {target}/sub)"),
    ("", "out/planted", "code: included file 'out/planted' leads outside the checkout (a symbolic link to "),
    ("", "../planted", "code: included file '../planted' must be a relative path inside the repository"),
    ("", "/tmp/planted", "code: included file '/tmp/planted' must be a relative path inside the repository"),
])
def test_a_checkout_refuses_paths_leading_out_of_it(tmp_path: Path, cwd: str, include: str, why: str) -> None:
    """A committed link ``out -> TARGET``: neither the job's directory nor an
    included file may go through it, and nothing is created there."""
    target = tmp_path / "target"
    target.mkdir()
    repo = tmp_path / "repo"
    make_repo(repo, {"train.py": "v1\n"})
    os.symlink(target, repo / "out")
    git(repo, "add", "out")
    git(repo, "commit", "-q", "-m", "a link out")
    commit = git(repo, "rev-parse", "HEAD").strip()
    files = [EnvFile(include, base64.b64encode(b"x").decode())] if include else []
    spec = spec_of(git=EnvGit(root=str(repo), commit=commit, cwd=cwd), files=files)
    with pytest.raises(EnvError) as e:
        checkout(spec, tmp_path / "job" / "src")
    assert str(e.value).startswith(why.format(target=target)), str(e.value)
    assert list(target.iterdir()) == []


def test_an_included_file_replaces_a_tracked_link_rather_than_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    repo = tmp_path / "repo"
    make_repo(repo, {"train.py": "v1\n"})
    os.symlink(outside, repo / "local.yaml")
    git(repo, "add", "local.yaml")
    git(repo, "commit", "-q", "-m", "a link")
    spec = spec_of(git=EnvGit(root=str(repo), commit=git(repo, "rev-parse", "HEAD").strip()),
                   files=[EnvFile("local.yaml", base64.b64encode(b"mine\n").decode())])
    src = tmp_path / "job" / "src"
    checkout(spec, src)
    assert (src / "local.yaml").read_text() == "mine\n" and not (src / "local.yaml").is_symlink()
    assert outside.read_text() == "keep\n"


# ---------------------------------------------------------------- under a supervisor


TRAIN = """\
import os, sys, tinypkg
from settings import MESSAGE
print("tinypkg", tinypkg.__version__)
print("message", MESSAGE)
print("prefix", sys.prefix)
print("cwd", os.getcwd())
"""


def test_a_job_runs_in_its_checkout_with_its_venv(tmp_path: Path, wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in offline_env(wheels).items():
        monkeypatch.setenv(key, value)  # the supervisor's pip reads the agent's environment
    repo = tmp_path / "repo"
    commit = make_repo(repo, {"exp/train.py": TRAIN, "exp/settings.py": "MESSAGE = 'committed'\n"})
    (repo / "exp" / "settings.py").write_text("MESSAGE = 'uncommitted'\n")
    diff = git(repo, "diff", "HEAD", "--binary")
    spec = spec_of(EnvPackage("tinypkg", "2.0"), git=EnvGit(root=str(repo), commit=commit, diff=diff, cwd="exp"))
    msg = launch(tmp_path, argv=["python3", "train.py"], env_spec=msgspec.to_builtins(spec), env_hash="ab" * 32)
    sup = Sup(tmp_path / "job", msg, env_cache=str(tmp_path / "envs"), env_installer="pip")
    exited = sup.wait()
    out = (tmp_path / "out.txt").read_text()
    assert exited.status == 0, (exited, out, (tmp_path / "err.txt").read_text())
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["tinypkg"] == "2.0" and lines["message"] == "uncommitted"
    assert lines["prefix"].startswith(str(tmp_path / "envs")) and lines["cwd"].endswith("/src/exp")
    assert "venv" in (tmp_path / "job" / "supervisor.log").read_text()


def test_a_broken_environment_fails_the_job_before_it_runs(tmp_path: Path, wheels: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in offline_env(wheels).items():
        monkeypatch.setenv(key, value)
    spec = spec_of(EnvPackage("tinypkg", "9.9"))
    msg = launch(tmp_path, argv=["python3", "-c", "open('ran', 'w')"], env_spec=msgspec.to_builtins(spec),
                 env_hash="cd" * 32)
    exited = Sup(tmp_path / "job", msg, env_cache=str(tmp_path / "envs"), env_installer="pip").wait()
    assert (exited.status, exited.how) == (-1, "launch_failed")
    assert exited.comment.startswith("environment cdcdcdcdcdcd: pip install failed: ERROR:")
    assert "tinypkg==9.9" in exited.comment and not (tmp_path / "ran").exists()
    err = (tmp_path / "err.txt").read_text()
    assert "could not be rebuilt" in err and "from versions: 1.0, 2.0" in err


def test_a_kill_during_the_build_ends_the_job_before_it_starts(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uv").write_text("#!/bin/sh\nexec sleep 300\n")  # a build that never ends
    (fake / "uv").chmod(0o755)
    spec = spec_of(EnvPackage("tinypkg", "1.0"))
    msg = launch(tmp_path, argv=["python3", "-c", "pass"], env_spec=msgspec.to_builtins(spec))
    env_path = f"{fake}{os.pathsep}{os.environ['PATH']}"
    os.environ["PATH"], old = env_path, os.environ["PATH"]
    try:
        sup = Sup(tmp_path / "job", msg, env_cache=str(tmp_path / "envs"), env_installer="uv")
    finally:
        os.environ["PATH"] = old
    log = tmp_path / "envs"
    deadline = time.monotonic() + TIMEOUT_S
    while not any(log.glob("*/build.log")) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for a condition: the build has begun
    sup.kill(delay_s=0.5)
    exited = sup.wait()
    assert (exited.how, sup.started()) == ("killed", None), exited
    assert exited.comment.startswith("killed on request")
