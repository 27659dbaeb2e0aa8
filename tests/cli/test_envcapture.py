"""qsub --env: what is captured of a real venv and a real git work tree, and what is refused."""

from __future__ import annotations

import base64
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from nodeagent.env.pack import venv_key
from schedd.cli.common import UsageError
from schedd.cli.envcapture import CaptureError, capture
from schedd.cli.qsub import CaptureFailed, environment, parse
from schedd.envspec import MAX_INCLUDE_BYTES, canonical, spec_hash
from schedd.errors import InputError
from schedd.protocol import EnvSpec
from schedd.daemon.records import check_env
from tests.pyenvs import git, install, make_project, make_repo, make_venv, make_wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    make_wheel(d, "tinypkg", "1.0")
    make_wheel(d, "tinypkg", "2.0")
    return d


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Path:
    """A venv with tinypkg 1.0 and an editable project (outside any repository); its python."""
    tmp = tmp_path_factory.mktemp("venv")
    python = make_venv(tmp / "venv")
    make_project(tmp / "mylib", "mylib", "0.3", src_layout=True)
    install(python, wheels, "tinypkg==1.0", "-e", str(tmp / "mylib"))
    return python


def environ(python: Path) -> dict[str, str]:
    return dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}")


def warnings() -> tuple[list[str], Callable[[str], None]]:
    said: list[str] = []
    return said, said.append


def test_a_venv_is_captured_as_its_interpreter_sees_it(venv: Path, tmp_path: Path) -> None:
    said, warn = warnings()
    started = time.perf_counter()
    spec = capture("auto", ["python", "train.py"], str(tmp_path), [], environ(venv), warn)
    elapsed = time.perf_counter() - started
    assert spec["python"]["version"] == "%d.%d.%d" % sys.version_info[:3]
    assert spec["python"]["executable"] == str(venv)
    assert spec["source"] == "installed" and "git" not in spec and said == []
    by_name = {p["name"]: p for p in spec["packages"]}
    assert by_name["tinypkg"] == {"name": "tinypkg", "version": "1.0"}
    assert by_name["mylib"] == {"name": "mylib", "version": "0.3", "editable": str(venv.parents[2] / "mylib")}
    assert "pip" not in by_name and "pytest" not in by_name  # the job's venv, not ours
    msgspec.convert(spec, EnvSpec)  # the shape the daemon validates
    assert elapsed < 5.0  # ~30 ms; bounded loosely for a loaded machine


def test_the_default_is_auto_for_python_entry_points_only(venv: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def env_of(argv: list[str]) -> dict[str, object] | None:
        args, part = parse(argv, {})
        return environment(args, part, str(tmp_path), environ(venv))

    assert env_of(["--", "python", "train.py"]) is not None
    assert env_of(["--", str(venv), "-m", "tinypkg"]) is not None
    assert env_of(["--", "python", "-c", "print(1)"]) is None
    assert env_of(["--", "/bin/echo", "hi"]) is None
    assert env_of(["--env", "none", "--", "python", "train.py"]) is None
    (tmp_path / "job.sh").write_text("python train.py\n")
    monkeypatch.chdir(tmp_path)
    assert env_of(["job.sh"]) is None
    assert env_of(["--env", "auto", "job.sh"]) is not None  # python3 on PATH: the venv's
    assert env_of(["--env=auto", "--", "/bin/echo"])["python"]["executable"] == str(venv.parent / "python3")  # type: ignore[index]
    with pytest.raises(UsageError, match="illegal|expected auto, none"):
        env_of(["--env", "conda.yml", "--", "python", "t.py"])
    with pytest.raises(UsageError, match="add --env auto"):
        env_of(["--env-include", "x", "--", "/bin/echo"])


def test_a_requirements_file_replaces_the_installed_list(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("tinypkg==2.0  # pinned\n")
    (tmp_path / "requirements.txt").write_text("# ours\n-r base.txt\n\nmylib @ file:///x\n")
    args, part = parse(["--env", "requirements.txt", "--", "python", "t.py"], {})
    spec = environment(args, part, str(tmp_path), environ(venv))
    assert spec is not None and spec["source"] == "requirements" and "packages" not in spec
    assert spec["requirements"] == ["tinypkg==2.0", "mylib @ file:///x"]
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["tinypkg>=1"]\n')
    spec = capture("pyproject.toml", ["python", "t.py"], str(tmp_path), [], environ(venv), print)
    assert (spec["source"], spec["requirements"]) == ("pyproject", ["tinypkg>=1"])
    args, part = parse(["--env", "missing.txt", "--", "python", "t.py"], {})
    with pytest.raises(CaptureFailed, match="missing.txt: No such file"):
        environment(args, part, str(tmp_path), environ(venv))


def test_the_hash_is_of_the_canonical_json_and_the_venv_key_ignores_the_code(venv: Path, tmp_path: Path) -> None:
    spec = capture("auto", ["python", "t.py"], str(tmp_path), [], environ(venv), print)
    shuffled = dict(reversed(list(spec.items())))
    assert canonical(shuffled) == canonical(spec) and b" " not in canonical({"a": [1, 2]})
    assert spec_hash(shuffled) == spec_hash(spec) == check_env(spec) == check_env(spec, spec_hash(spec))
    with pytest.raises(InputError, match="is not the hash"):
        check_env(spec, "0" * 64)
    with_code = dict(spec, git={"root": "/r", "commit": "a" * 40, "diff": "x"})
    assert spec_hash(with_code) != spec_hash(spec)
    assert venv_key(msgspec.convert(with_code, EnvSpec)) == venv_key(msgspec.convert(spec, EnvSpec))
    with pytest.raises(InputError, match="must be a relative path"):
        check_env(dict(with_code, files=[{"path": "../../etc/passwd", "data": ""}]))


def test_git_commit_branch_diff_and_only_included_untracked_files(venv: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = make_repo(repo, {"exp/train.py": "print('v1')\n", "README": "r\n"})
    git(repo, "remote", "add", "origin", "https://ann:s3cret@git.example.com/ann/repo.git")
    (repo / "exp" / "train.py").write_text("print('v2')\n")  # uncommitted change of a tracked file
    (repo / "exp" / "local.yaml").write_text("lr: 0.1\n")  # untracked
    (repo / "exp" / "notes.txt").write_text("secret notes\n")  # untracked, never sent
    said, warn = warnings()
    spec = capture("auto", ["python", "train.py"], str(repo / "exp"), [], environ(venv), warn)
    g = spec["git"]
    assert (g["root"], g["commit"], g["branch"], g["cwd"], g["entry_point"]) == \
        (str(repo.resolve()), commit, "main", "exp", "exp/train.py")
    assert g["remote"] == "https://git.example.com/ann/repo.git"  # no credentials
    assert "-print('v1')\n+print('v2')" in g["diff"] and "local.yaml" not in g["diff"]
    assert "files" not in spec and "secret" not in canonical(spec).decode() and said == []
    spec = capture("auto", ["python", str(repo / "exp" / "train.py")], str(repo / "exp"), ["local.yaml"],
                   environ(venv), warn)
    assert spec["git"]["entry_index"] == 1  # an absolute entry point is rewritten to the checkout's
    assert [(f["path"], base64.b64decode(f["data"])) for f in spec["files"]] == [("exp/local.yaml", b"lr: 0.1\n")]


def test_an_untracked_entry_point_is_sent_with_a_warning(venv: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"lib.py": "X = 1\n"})
    (repo / "new.py").write_text("import lib\n")
    said, warn = warnings()
    spec = capture("auto", ["python", "new.py"], str(repo), [], environ(venv), warn)
    assert [f["path"] for f in spec["files"]] == ["new.py"]
    assert said == ["new.py is not tracked by git: it is sent with the job"]


def test_an_editable_install_inside_the_repository_comes_from_the_checkout(wheels: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_project(repo, "proj", "0.1", src_layout=True)
    make_repo(repo, {"train.py": "import proj\n"})
    python = make_venv(tmp_path / "venv")
    install(python, wheels, "-e", str(repo))
    spec = capture("auto", ["python", "train.py"], str(repo), [], environ(python), print)
    (proj,) = [p for p in spec["packages"] if p["name"] == "proj"]
    assert (proj["repo_path"], proj["pth"]) == (".", ["src"])


def test_too_much_to_include_is_refused_with_the_reason(venv: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"t.py": ""})
    with open(repo / "data.bin", "wb") as f:
        f.truncate(MAX_INCLUDE_BYTES + 1)  # sparse: nothing is read before the sizes are summed
    with pytest.raises(CaptureError, match=r"10.0 MB of files, over the 10 MB limit \(largest: data.bin 10.0 MB\)"):
        capture("auto", ["python", "t.py"], str(repo), ["data.bin"], environ(venv), print)
    with pytest.raises(CaptureError, match="outside the repository"):
        capture("auto", ["python", "t.py"], str(repo), [str(tmp_path)], environ(venv), print)
    with pytest.raises(CaptureError, match="not in a git work tree"):
        capture("auto", ["python", "t.py"], str(tmp_path), ["x"], environ(venv), print)
    args = SimpleNamespace(env="auto", env_include=["nope"])
    with pytest.raises(CaptureFailed, match="nope: no such file"):
        environment(args, {"argv": ["python", "t.py"]}, str(repo), environ(venv))
