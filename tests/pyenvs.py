"""Builders for environment tests, offline: tiny wheels, projects, venvs, git repos.

A wheel is a zip written here (``*.dist-info`` with METADATA, WHEEL, RECORD);
a project has an in-tree PEP 517 backend with ``requires = []`` so that pip
builds and installs it (editable too) with no index at all.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["git", "install", "make_project", "make_repo", "make_venv", "make_wheel", "offline_env"]

PY = sys.executable


def _wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: schedd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return out


def make_wheel(directory: Path, name: str, version: str) -> Path:
    """``name-version`` whose module says its own version (``import name; name.__version__``)."""
    directory.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    return _wheel(directory, name, version, {f"{module}/__init__.py": f"__version__ = {version!r}\n".encode()})


_BACKEND = '''\
import base64, hashlib, os, zipfile
NAME, VERSION, PKG, SRC = {name!r}, {version!r}, {pkg!r}, {src!r}
ROOT = os.path.dirname(os.path.abspath(__file__))


def _wheel(directory, files):
    dist = NAME.replace("-", "_")
    info = dist + "-" + VERSION + ".dist-info"
    files = dict(files)
    files[info + "/METADATA"] = ("Metadata-Version: 2.1\\nName: " + NAME + "\\nVersion: " + VERSION + "\\n").encode()
    files[info + "/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(path + ",sha256=" + digest + "," + str(len(data)))
    files[info + "/RECORD"] = ("\\n".join(record + [info + "/RECORD,,"]) + "\\n").encode()
    name = dist + "-" + VERSION + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    base = os.path.join(ROOT, SRC)
    files = {{}}
    for top, _, names in os.walk(os.path.join(base, PKG)):
        for n in names:
            if n.endswith(".py"):
                full = os.path.join(top, n)
                with open(full, "rb") as f:
                    files[os.path.relpath(full, base)] = f.read()
    return _wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {{"_" + PKG + "_editable.pth": (os.path.join(ROOT, SRC) + "\\n").encode()}})
'''


def make_project(root: Path, name: str, version: str, *, src_layout: bool = False, body: str = "") -> Path:
    """A buildable project (in-tree backend, no build requirements); module ``name``
    (dashes -> underscores) under ``src/`` when ``src_layout``."""
    pkg = name.replace("-", "_")
    src = "src" if src_layout else ""
    (root / src / pkg).mkdir(parents=True, exist_ok=True)
    (root / src / pkg / "__init__.py").write_text(body or f"__version__ = {version!r}\n")
    (root / "tinybackend.py").write_text(_BACKEND.format(name=name, version=version, pkg=pkg, src=src))
    (root / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "tinybackend"\n'
                                         'backend-path = ["."]\n')
    return root


def offline_env(wheels: Path, **extra: str) -> dict[str, str]:
    """This environment, with pip told to use only ``wheels``."""
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


def make_venv(path: Path) -> Path:
    """A venv without pip (fast); its python."""
    subprocess.run([PY, "-m", "venv", "--without-pip", str(path)], check=True, capture_output=True)
    return path / "bin" / "python"


def install(python: Path, wheels: Path, *args: str) -> None:
    """Install into ``python``'s venv with our pip, from ``wheels`` only."""
    out = subprocess.run([PY, "-m", "pip", "--python", str(python), "install", "--no-input", *args],
                         env=offline_env(wheels), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", GIT_CONFIG_NOSYSTEM="1")
    out = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def make_repo(root: Path, files: dict[str, str]) -> str:
    """A git repository with ``files`` committed; the commit id."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return git(root, "rev-parse", "HEAD").strip()
