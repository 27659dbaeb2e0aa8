"""A captured environment as a docker image: ``FROM`` the job's base image, plus a
venv of the captured packages at :data:`VENV`, tagged by a hash.

The docker runtime's counterpart of :mod:`nodeagent.env.cache`: the tag is a
hash of the base image's id and the venv key (Python minor version + package
list), so identical environments on the same base never rebuild, and a new
commit or diff reuses the image (the code is checked out on the host and
mounted, as for a process). One build at a time per tag on a node (a flock in
the env cache directory); the others wait for it and then find the image.
After a build, least recently used environment images are removed until their
own layers fit under the agent's ``--env-cache-mb`` (the same cap as its
venvs; last use is a file's mtime, as the engine records none; an image a
container still uses is never forced out).

The build runs in the engine (``docker build`` through the SDK, classic
builder): ``python3 -m venv`` with the base image's interpreter, whose minor
version must be the captured one — checked first, so a mismatch is a clear
failure rather than a venv of the wrong Python. pip's index settings of the
agent apply (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``PIP_NO_INDEX``);
``PIP_FIND_LINKS`` directories are copied into the build context, which is
how a node with no index reaches its wheels (and how the tests run offline).

Who runs what (security issue #17): this module runs in the root supervisor
and runs nothing of the user's on the host — it talks to the engine and reads
only the agent's own files (its uv, its find-links directories); the job's
code is checked out before, as its owner (:mod:`nodeagent.env.pack`), and an
editable install from a path is refused. What the user controls runs in the
engine's build container: the base image's ``python3`` (the base may be the
user's ``-l container=`` image) and uv or pip installing their requirements,
whose build backends run arbitrary code — *inside* that container, as
:data:`BUILD_UID` (``nobody``), never as the container's root: the build
stage gets its venv and scratch directories handed to that uid by ``COPY
--chown`` (no ``RUN`` as root at all), then ``USER`` drops before the first
``RUN``. An unprivileged process in a container has no capabilities, so the
host network it shares (``network_mode="host"``, for a package index the node
reaches on loopback) gives it no more than an ordinary user of the node has:
no privileged ports, no raw sockets. A base image with ``ONBUILD`` triggers is
refused (they would run as root in the build). The venv is copied into the
final image owned by root, so a job (whatever its uid) cannot change it. The
image is immutable once built, so sharing it between users (its tag is the
same for the same base and packages) lets no one plant code in another's
environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.env.cache import (
    Announce, Cancelled, EnvError, Waiter, count, error_line, flock_wait, in_repo, never, requirement_lines, tail, venv_key,
)
from schedd.protocol import EnvSpec

if TYPE_CHECKING:
    import docker

__all__ = ["VENV", "Image", "ensure_image", "evict_images", "image_tag"]

#: Where the environment's venv lives inside the image.
VENV = "/opt/schedd/venv"
#: Who runs the build steps inside the build container: nobody, whatever the base's USER.
BUILD_UID = 65534
_BUILD_HOME = "/opt/schedd/home"  # HOME and the installers' caches of the build user
REPOSITORY = "schedd-env"


@dataclass(frozen=True)
class Image:
    tag: str
    built: bool  # False: it was there already
    seconds: float


def image_tag(base_id: str, spec: EnvSpec) -> str:
    """``schedd-env:<hash of the base image id and the venv key>``.

    >>> from schedd.protocol import EnvPython
    >>> image_tag("sha256:ab", EnvSpec(python=EnvPython("3.11.7")))[:11]
    'schedd-env:'
    """
    digest = hashlib.sha256(f"{base_id}\n{venv_key(spec)}".encode()).hexdigest()[:32]
    return f"{REPOSITORY}:{digest}"


def ensure_image(api: docker.APIClient, base: str, spec: EnvSpec, lock_dir: Path, environ: dict[str, str],
                 waiter: Waiter | None = None, uv: str | None = None, announce: Announce | None = None,
                 max_bytes: int | None = None) -> Image:
    """The image for ``spec`` on ``base``, built unless present; raises EnvError or
    Cancelled. After a build, least recently used environment images go until
    theirs (each one's own layer) fit in ``max_bytes`` (None: no cap)."""
    import docker.errors

    waiter = waiter or never
    started = time.monotonic()
    try:
        base_info = api.inspect_image(base)  # type: ignore[no-untyped-call]
        base_id = str(base_info["Id"])
        if (base_info.get("Config") or {}).get("OnBuild"):
            raise EnvError(f"base image {base} has ONBUILD triggers, which would run as root in the environment "
                           "build: build the environment from an image without them")
    except docker.errors.ImageNotFound:
        raise EnvError(f"base image {base} is not on this node (pull it, or build it locally)") from None
    except docker.errors.DockerException as exc:
        raise EnvError(f"cannot reach the docker engine: {exc}") from None
    tag = image_tag(base_id, spec)
    if _exists(api, tag):
        _mark_used(lock_dir, tag)
        return Image(tag, False, time.monotonic() - started)
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"image-{tag.split(':')[1]}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise EnvError(f"env cache {lock_dir}: {exc.strerror or exc}") from None
    try:
        say = announce or (lambda _: None)
        flock_wait(fd, fcntl.LOCK_EX, waiter, lambda: say(f"waiting for another job's build of image {tag}"))
        if _exists(api, tag):  # another job built it while we waited
            _mark_used(lock_dir, tag)
            return Image(tag, False, time.monotonic() - started)
        say(f"building image {tag} FROM {base} ({count(len(requirement_lines(spec)), 'requirement')})")
        _build(api, base, base_id, tag, spec, environ, waiter, uv)
        _mark_used(lock_dir, tag)
    finally:
        os.close(fd)
    if max_bytes is not None:
        evict_images(api, lock_dir, max_bytes, keep=tag)
    return Image(tag, True, time.monotonic() - started)


def _mark_used(lock_dir: Path, tag: str) -> None:
    """The image's last use, for LRU eviction (the engine keeps no such time)."""
    path = lock_dir / f"image-{tag.split(':')[1]}.used"
    try:
        path.touch()
    except OSError:
        pass  # an unwritable cache only makes eviction less wise


def _own_size(api: docker.APIClient, image: dict[str, Any]) -> int:
    """Bytes the image adds to its base (the ``schedd.base`` label names it)."""
    import docker.errors

    base = (image.get("Labels") or {}).get("schedd.base", "")
    try:
        below = int(api.inspect_image(base)["Size"]) if base else 0  # type: ignore[no-untyped-call]
    except docker.errors.ImageNotFound:
        below = 0
    return max(0, int(image.get("Size", 0)) - below)


def evict_images(api: docker.APIClient, lock_dir: Path, max_bytes: int, keep: str = "") -> list[str]:
    """Remove least recently used ``schedd-env`` images until their own layers
    (the venv on top of the base; the base is shared, not counted) total at most
    ``max_bytes``. An image a container still uses is skipped: the engine
    refuses, and we do not force it. Returns the tags removed."""
    import docker.errors

    sized = []
    for image in api.images(name=REPOSITORY):
        for tag in image.get("RepoTags") or []:
            own = _own_size(api, image)
            used = lock_dir / f"image-{tag.split(':')[1]}.used"
            sized.append((used.stat().st_mtime if used.exists() else 0.0, own, tag))
    total = sum(own for _, own, _ in sized)
    removed = []
    for _, own, tag in sorted(sized):
        if total <= max_bytes:
            break
        if tag == keep:
            continue
        try:
            api.remove_image(tag)
        except docker.errors.APIError:
            continue  # in use by a container (or gone already)
        total -= own
        removed.append(tag)
        (lock_dir / f"image-{tag.split(':')[1]}.used").unlink(missing_ok=True)  # the lock stays: a waiter may hold it
    return removed


def _exists(api: docker.APIClient, tag: str) -> bool:
    import docker.errors

    try:
        api.inspect_image(tag)  # type: ignore[no-untyped-call]
    except docker.errors.ImageNotFound:
        return False
    return True


def _build(api: docker.APIClient, base: str, base_id: str, tag: str, spec: EnvSpec, environ: dict[str, str],
           waiter: Waiter, uv: str | None) -> None:
    import docker.errors

    context = _context(base, spec, environ, uv)
    log: list[str] = []
    try:
        for chunk in api.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True,
                               network_mode="host", labels={"schedd.env": venv_key(spec), "schedd.base": base_id}):
            if waiter(None, 0):
                raise Cancelled("killed while its environment image was being built")
            log.append(str(chunk.get("stream") or chunk.get("status") or ""))
            if "error" in chunk:
                text = "".join(log) + str(chunk["error"])
                raise EnvError(f"image build failed: {error_line(text) or chunk['error']}", tail(text))
    except docker.errors.DockerException as exc:
        raise EnvError(f"image build failed: {exc}", tail("".join(log))) from None


def _index_flags(spec: EnvSpec, environ: dict[str, str], links: int) -> list[str]:
    """Installer flags (pip's and uv's names agree) from the agent's pip settings."""
    flags = ["--no-deps"] if spec.source == "installed" else []
    if environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    if environ.get("PIP_INDEX_URL"):
        flags += ["--index-url", environ["PIP_INDEX_URL"]]
    for url in environ.get("PIP_EXTRA_INDEX_URL", "").split():
        flags += ["--extra-index-url", url]
    return flags + [arg for i in range(links) for arg in ("--find-links", f"/opt/schedd/links/{i}")]


def _dockerfile(base: str, spec: EnvSpec, flags: list[str], links: bool, uv: bool) -> str:
    """Two stages: the venv is built with the tools and wheels around, and only it is
    copied onto the base — uv, the wheels and requirements.txt stay behind. uv is
    used when the agent has it and it runs on the base (it needs glibc), else pip."""
    minor = tuple(int(x) for x in spec.python.version.split(".")[:2])
    check = (f"import sys; v = sys.version_info[:2]; sys.exit(0 if v == {minor!r} else "
             f"'the base image has Python %d.%d; the environment needs {minor[0]}.{minor[1]}' % v)")
    req, args = "/opt/schedd/requirements.txt", " ".join(flags)
    with_pip = f"python3 -m venv {VENV}" + (
        f" && {VENV}/bin/pip install --no-input --disable-pip-version-check {args} -r {req}"
        if requirement_lines(spec) else "")
    install = with_pip
    if uv:
        with_uv = f"/opt/schedd/uv venv --quiet --python python3 {VENV}" + (
            f" && /opt/schedd/uv pip install --python {VENV}/bin/python {args} -r {req}" if requirement_lines(spec) else "")
        install = f"if /opt/schedd/uv --version >/dev/null 2>&1; then {with_uv}; else {with_pip}; fi"
    own = f"--chown={BUILD_UID}:{BUILD_UID}"
    lines = [f"FROM {base} AS build", f"COPY {own} empty {VENV}", f"COPY {own} empty {_BUILD_HOME}",
             f"COPY requirements.txt {req}"]
    lines += ["COPY links /opt/schedd/links"] if links else []
    lines += ["COPY uv /opt/schedd/uv"] if uv else []
    lines += [f"USER {BUILD_UID}:{BUILD_UID}",
              f"ENV HOME={_BUILD_HOME} UV_CACHE_DIR={_BUILD_HOME}/uv PIP_CACHE_DIR={_BUILD_HOME}/pip "
              "UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1",
              f"RUN python3 -c {json.dumps(check)} && {install}",
              f"FROM {base}", f"COPY --from=build --chown=0:0 {VENV} {VENV}"]
    return "\n".join(lines) + "\n"


def _context(base: str, spec: EnvSpec, environ: dict[str, str], uv: str | None) -> io.BytesIO:
    """The build context (a tar): Dockerfile, requirements.txt, the find-links dirs, uv."""
    for p in spec.packages:
        if p.editable and not in_repo(spec, p):
            raise EnvError(f"editable install of {p.name} ({p.editable}) cannot be built into an image; "
                           "commit it to the job's repository or install it from an index")
    links = [d for d in environ.get("PIP_FIND_LINKS", "").split() if os.path.isdir(d)]
    flags = _index_flags(spec, environ, len(links))
    files = {"Dockerfile": _dockerfile(base, spec, flags, bool(links), uv is not None),
             "requirements.txt": "".join(f"{line}\n" for line in requirement_lines(spec))}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        empty = tarfile.TarInfo("empty")  # a directory to COPY --chown: the build user's venv and home
        empty.type, empty.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(empty)
        for i, d in enumerate(links):
            tar.add(d, arcname=f"links/{i}")
        if uv is not None:
            tar.add(uv, arcname="uv")
    buf.seek(0)
    return buf
