"""Building deploy/docker/Dockerfile offline, for tests/kube/test_image.py.

No registry and maybe no network: ``python:3.11-slim`` cannot be pulled and
pip cannot download. So the Dockerfile's two inputs are made here:

* ``BASE``: the test Python image of :mod:`tests.dockerimages` (busybox and
  this machine's base interpreter) plus, in its site-packages, the installed
  distributions that ``schedd[server,agent]`` needs, found from pyproject.toml
  and each distribution's own ``Requires-Dist`` (and pip, to install with).
  Copied file by file from their ``RECORD``, so nothing of the tests' venv
  (pytest, mypy) comes along and ``pip check`` in the build proves the closure.
* ``WHEEL``: a wheel of this project written here with the standard library
  (as :mod:`tests.pyenvs` writes its tiny ones), because building one needs
  setuptools from an index. It holds the packages, their ``py.typed``, the
  console scripts and the metadata of pyproject.toml, with extras as markers.

The build context is the working tree's files that git does not ignore, plus that wheel, as a
tar: what ``git archive HEAD`` would send, with uncommitted edits included.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sysconfig
import tarfile
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any

import docker
from packaging.requirements import Requirement

from tests import dockerimages

__all__ = ["DOCKERFILE", "EXTRAS", "ROOT", "build", "context_tar", "deps_image", "project_wheel"]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = "deploy/docker/Dockerfile"
EXTRAS = ("server", "agent")


# -- the project's wheel -------------------------------------------------------


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _metadata(project: dict[str, Any]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}",
             f"Requires-Python: {project.get('requires-python', '')}"]
    lines += [f"Requires-Dist: {r}" for r in project.get("dependencies", [])]
    for extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        lines.append(f"Provides-Extra: {extra}")
        for r in reqs:
            req = Requirement(r)
            marker = f"({req.marker}) and extra == {extra!r}" if req.marker else f"extra == {extra!r}"
            lines.append(f"Requires-Dist: {str(req).split(';')[0].strip()}; {marker}")
    return "\n".join(lines) + "\n"


def _package_files() -> dict[str, Path]:
    """Tracked ``.py`` and ``py.typed`` files of the packages pyproject.toml includes."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pattern.rstrip("*") for pattern in include}
    out = {}
    for name in _tracked():
        path = PurePosixPath(name)
        if path.parts[0] in tops and path.name.endswith((".py", "py.typed")) and (ROOT / name).is_file():
            out[name] = ROOT / name
    return out


def project_wheel(directory: Path) -> Path:
    """``schedd-<version>-py3-none-any.whl`` in ``directory``, from the working tree."""
    project = _project()
    dist = project["name"].replace("-", "_")
    info = f"{dist}-{project['version']}.dist-info"
    files: dict[str, bytes] = {name: path.read_bytes() for name, path in sorted(_package_files().items())}
    scripts = "".join(f"{cmd} = {target}\n" for cmd, target in project.get("scripts", {}).items())
    files[f"{info}/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    files[f"{info}/METADATA"] = _metadata(project).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: schedd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{dist}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# -- the base with the dependencies ------------------------------------------


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def dependency_closure() -> list[metadata.Distribution]:
    """Installed distributions that ``schedd[server,agent]`` needs, transitively, plus pip."""
    project = _project()
    todo = [Requirement(r) for r in project.get("dependencies", [])]
    todo += [Requirement(r) for extra in EXTRAS for r in project.get("optional-dependencies", {}).get(extra, [])]
    todo.append(Requirement("pip"))
    found: dict[str, metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another Python, or an extra nobody asked for
        if _key(req.name) in found:
            continue
        dist = metadata.distribution(req.name)  # PackageNotFoundError: the venv lacks a dependency
        found[_key(req.name)] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return sorted(found.values(), key=lambda d: _key(d.metadata["Name"]))


def _site_files(dists: list[metadata.Distribution]) -> dict[str, Path]:
    """Each distribution's recorded files that live in site-packages (scripts in bin/ left out)."""
    out: dict[str, Path] = {}
    for dist in dists:
        base = Path(str(dist.locate_file(""))).resolve()
        for rel in dist.files or []:
            path = Path(str(dist.locate_file(rel))).resolve()
            if path.is_file() and path.is_relative_to(base) and "__pycache__" not in path.parts:
                out[str(path.relative_to(base))] = path
    return out


def deps_image(client: docker.DockerClient) -> str:
    """Tag of the test Python image plus the dependency closure (built once per closure)."""
    dists = dependency_closure()
    names = "\n".join(f"{d.metadata['Name']}=={d.version}" for d in dists)
    base = dockerimages.python_image(client)
    tag = f"schedd-test/python-deps:{hashlib.sha256((base + names).encode()).hexdigest()[:12]}"
    if _exists(client, tag):
        return tag
    site = Path(sysconfig.get_path("stdlib")) / "site-packages"  # of the base install: where python_image has it
    bindir = Path(sysconfig.get_path("stdlib")).parents[1] / "bin"
    dockerfile = (f"FROM {base}\nCOPY site-packages/ {site}/\n"
                  f"ENV PATH={bindir}:/usr/local/bin:/usr/bin:/bin\n"
                  "RUN python -m compileall -q -j 0 " + str(site) + "\n")
    with tempfile.TemporaryFile() as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            _add_bytes(tar, "Dockerfile", dockerfile.encode())
            for rel, path in sorted(_site_files(dists).items()):
                tar.add(str(path), arcname=f"site-packages/{rel}", filter=_root_owned)
        f.seek(0)
        build(client, f, tag, dockerfile="Dockerfile")
    return tag


# -- the context and the build -------------------------------------------------


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def context_tar(wheel: Path) -> IO[bytes]:
    """The repository's tracked files as they are now, plus ``dist/<wheel>``: a rewound tar file."""
    f = tempfile.TemporaryFile()
    with tarfile.open(fileobj=f, mode="w") as tar:
        for name in _tracked():
            path = ROOT / name
            if path.is_file() and not path.is_symlink():
                tar.add(str(path), arcname=name, filter=_root_owned)
        tar.add(str(wheel), arcname=f"dist/{wheel.name}", filter=_root_owned)
    f.seek(0)
    return f


def build(client: docker.DockerClient, context: IO[bytes], tag: str, *, dockerfile: str = DOCKERFILE,
          target: str | None = None, buildargs: dict[str, str] | None = None) -> str:
    """``docker build`` of a tar context; the build log in the error when it fails."""
    log: list[str] = []
    kwargs: dict[str, Any] = {"target": target} if target else {}
    for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, dockerfile=dockerfile,
                                  buildargs=buildargs or {}, rm=True, forcerm=True, decode=True, **kwargs):
        if "stream" in chunk:
            log.append(chunk["stream"])
        if "error" in chunk:
            raise RuntimeError(f"docker build of {tag} failed: {chunk['error']}\n{''.join(log)[-6000:]}")
    if not _exists(client, tag):
        raise RuntimeError(f"docker build of {tag} reported no error but made no image\n{''.join(log)[-6000:]}")
    return tag


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o444 if info.isreg() else 0o555
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
