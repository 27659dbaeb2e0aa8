"""Base images for the docker tests, built locally from this machine's own files.

There is no registry here (no network in CI either), so ``docker pull busybox``
or ``python:3.11`` is not an option. Instead each image is a root filesystem
written to a tar and loaded with ``docker import``:

* ``schedd-test/busybox:1``: Debian's static ``/bin/busybox`` (package
  ``busybox-static``) with a link per applet, ``/tmp`` and a minimal
  ``/etc/passwd`` / ``/etc/group`` (root and nobody).
* ``schedd-test/setuid:1``: busybox plus ``/bin/su0``, a static C program,
  setuid root, that calls ``setgid(0)`` and ``setuid(0)`` and then executes
  its arguments: how an image's setuid binary would make its job root.
* ``schedd-test/python:X.Y.Z``: the same plus the *base* interpreter the tests
  run under (they run in a venv; ``sys.base_prefix`` is the real installation),
  copied to the same absolute path so that it finds its stdlib, without
  site-packages, tests, tkinter or idlelib (compiled ``.pyc`` kept), plus every shared
  library ``ldd`` says it and its extension modules load. ``ensurepip`` stays,
  so ``python -m venv`` works in a container.

Both functions are idempotent: when the tag exists they return at once.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

import docker
from docker.errors import ImageNotFound

__all__ = ["BUSYBOX_TAG", "SETUID_TAG", "busybox_image", "python_image", "python_tag", "setuid_image"]

BUSYBOX_TAG = "schedd-test/busybox:1"
BUSYBOX = Path("/bin/busybox")
SETUID_TAG = "schedd-test/setuid:1"
#: /bin/su0 of the setuid image: become root if the kernel lets us, then run argv[1:].
SU0_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (setgid(0) != 0) perror("su0: setgid(0)");
    if (setuid(0) != 0) perror("su0: setuid(0)");
    if (argc > 1) execvp(argv[1], argv + 1);
    perror("su0: execvp");
    return 127;
}
"""
LOADER = "/lib64/ld-linux-x86-64.so.2"
PYTHON_PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"
# Parts of the stdlib a test container never needs (names of directories).
SKIP_DIRS_TOP = {"idlelib", "tkinter", "turtledemo", "site-packages"}
SKIP_DIRS_ANY = {"test", "tests", "idle_test"}
#: What every glibc distribution image has and a static-ish tool (uv) needs beyond libc.
_GLIBC_EXTRAS = {f"/lib/{arch}-linux-gnu/{lib}" for arch in ("x86_64", "aarch64")
                 for lib in ("libgcc_s.so.1", "librt.so.1", "libpthread.so.0", "libdl.so.2", "libm.so.6")
                 if os.path.exists(f"/lib/{arch}-linux-gnu/{lib}")}
SKIP_DYNLOAD = ("_tkinter", "_test", "_ctypes_test", "_xxtestfuzz")


# -- public -----------------------------------------------------------------


def busybox_image(client: docker.DockerClient) -> str:
    """Tag of the busybox image, importing it first if the engine lacks it."""
    if not _exists(client, BUSYBOX_TAG):
        with _Rootfs() as root:
            _add_busybox(root)
            _import(client, root, BUSYBOX_TAG, [])
    return BUSYBOX_TAG


def setuid_image(client: docker.DockerClient) -> str:
    """Tag of busybox + a setuid-root ``/bin/su0``, compiling and importing it first
    if the engine lacks it (gcc and a static libc are installed if need be)."""
    if not _exists(client, SETUID_TAG):
        with _Rootfs() as root:
            _add_busybox(root)
            root.data("/bin/su0", _compile_static(SU0_C), mode=0o4755)  # owned by root: _Rootfs's rule
            _import(client, root, SETUID_TAG, [])
    return SETUID_TAG


def python_tag() -> str:
    """``schedd-test/python:X.Y.Z`` for the interpreter running the tests."""
    v = sys.version_info
    return f"schedd-test/python:{v.major}.{v.minor}.{v.micro}"


def python_image(client: docker.DockerClient) -> str:
    """Tag of busybox + this machine's base Python, importing it first if need be."""
    tag = python_tag()
    if not _exists(client, tag):
        with _Rootfs() as root:
            _add_busybox(root)
            _add_python(root)
            _import(client, root, tag, [f"ENV {PYTHON_PATH_ENV}"])
    return tag


# -- the engine -------------------------------------------------------------


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def _import(client: docker.DockerClient, root: _Rootfs, tag: str, changes: list[str]) -> None:
    repository, _, version = tag.rpartition(":")
    data = root.finish()
    out = client.api.import_image_from_data(data, repository=repository, tag=version, changes=changes)
    if not _exists(client, tag):
        raise RuntimeError(f"docker import of {tag} did not create it: {out}")


# -- the tar ----------------------------------------------------------------


class _Rootfs:
    """A root filesystem being written to a temporary tar; parents come first."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()
        self._tar = tarfile.open(fileobj=self._file, mode="w")
        self._names: set[str] = set()

    def __enter__(self) -> _Rootfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tar.close()
        self._file.close()

    def dir(self, path: str, mode: int = 0o755) -> None:
        name = path.strip("/")
        if not name or name in self._names:
            return
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self._add(info)

    def data(self, path: str, content: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(path.strip("/"))
        info.size, info.mode = len(content), mode
        self._parents(info.name)
        self._add(info, io.BytesIO(content))

    def link(self, path: str, target: str) -> None:
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.linkname = tarfile.SYMTYPE, target
        self._parents(info.name)
        self._add(info)

    def copy(self, path: str, host: Path) -> None:
        """``host`` (a file or a symlink, kept as such) at ``path`` in the image."""
        name = path.strip("/")
        if name in self._names:
            return
        info = self._tar.gettarinfo(str(host), arcname=name)
        self._parents(name)
        if info.isreg():
            with host.open("rb") as f:
                self._add(info, f)
        else:
            self._add(info)

    def finish(self) -> IO[bytes]:
        """Close the tar; the open file, rewound, for the upload."""
        self._tar.close()
        self._file.seek(0)
        return self._file

    def _parents(self, name: str) -> None:
        for parent in reversed(PurePosixPath(name).parents):
            if str(parent) != ".":
                self.dir(str(parent))

    def _add(self, info: tarfile.TarInfo, f: IO[bytes] | None = None) -> None:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        self._names.add(info.name)
        self._tar.addfile(info, f)


# -- busybox ----------------------------------------------------------------


def _add_busybox(root: _Rootfs) -> None:
    busybox = _static_busybox()
    root.copy("/bin/busybox", busybox)
    for applet in _applets(busybox):
        if applet != "bin/busybox":
            root.link(applet, "/bin/busybox")
    root.dir("/tmp", 0o1777)
    root.dir("/root", 0o755)
    root.dir("/usr/local/bin")
    root.data("/etc/passwd", PASSWD.encode())
    root.data("/etc/group", GROUP.encode())


def _compile_static(source: str) -> bytes:
    """``source`` compiled by ``gcc -static``: the binary's bytes (runs in any image)."""
    if shutil.which("gcc") is None:
        _apt_install("gcc")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "prog.c", Path(tmp) / "prog"
        src.write_text(source)
        argv = ["gcc", "-static", "-O2", "-o", str(out), str(src)]
        if subprocess.run(argv, capture_output=True).returncode != 0:
            _apt_install("libc6-dev")  # libc.a
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"gcc -static failed: {done.stderr[-2000:]}")
        return out.read_bytes()


def _applets(busybox: Path) -> list[str]:
    """Install paths of every applet (``usr/bin/env``, ``bin/sh``, ...)."""
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if "/" in line]


def _static_busybox() -> Path:
    if not _is_static(BUSYBOX):
        _apt_install("busybox-static")
    if not _is_static(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is not a static busybox even after installing busybox-static")
    return BUSYBOX


def _is_static(path: Path) -> bool:
    if not path.is_file():
        return False
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    return "not a dynamic executable" in out.stdout + out.stderr or "statically linked" in out.stdout


def _apt_install(package: str) -> None:
    hint = f"the docker test images need Debian's {package}: run `sudo apt-get install -y {package}`"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"cannot install {package} here (not root or no apt-get); {hint}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, capture_output=True).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"apt-get install {package} failed: {done.stderr[-2000:]}; {hint}")


# -- python -----------------------------------------------------------------


def _add_python(root: _Rootfs) -> None:
    interpreter = _base_interpreter()
    root.copy(str(interpreter), interpreter)
    v = sys.version_info
    bindir = Path(sys.base_prefix) / "bin"
    named = bindir / f"python{v.major}.{v.minor}"
    if named != interpreter:
        root.link(str(named), str(interpreter))
    root.link(str(bindir / "python3"), named.name)
    for host in _libpython():
        root.copy(str(host), host)
    stdlib = Path(sysconfig.get_path("stdlib"))
    for host in _stdlib_files(stdlib):
        root.copy(str(host), host)
    root.dir(str(stdlib / "site-packages"))
    for printed in _shared_libraries([interpreter, *_libpython(), *_dynload(stdlib)]) | _GLIBC_EXTRAS:
        root.copy(printed, Path(os.path.realpath(printed)))
    root.link("/usr/local/bin/python3", str(named))
    root.link("/usr/local/bin/python", str(named))


def _base_interpreter() -> Path:
    """The real file of the base installation's ``pythonX.Y`` (tests run in a venv)."""
    v = sys.version_info
    named = Path(sys.base_prefix) / "bin" / f"python{v.major}.{v.minor}"
    base = named if named.exists() else Path(getattr(sys, "_base_executable", sys.executable))
    return Path(os.path.realpath(base))


def _libpython() -> list[Path]:
    libdir = sysconfig.get_config_var("LIBDIR")
    return sorted(Path(libdir).glob("libpython*.so*")) if libdir else []


def _stdlib_files(stdlib: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(stdlib):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if _keep_dir(stdlib, here, d)]
        for name in filenames:
            if _keep_file(stdlib, here, name):
                yield here / name


def _keep_dir(stdlib: Path, here: Path, name: str) -> bool:
    if name in SKIP_DIRS_ANY:
        return False
    return not (here == stdlib and name in SKIP_DIRS_TOP)


def _keep_file(stdlib: Path, here: Path, name: str) -> bool:
    if here.name.startswith("config-") and here.parent == stdlib and name.endswith(".a"):
        return False  # libpythonX.Y.a: tens of MB, for linking C programs only
    if here.name == "__pycache__" and ".opt-" in name:
        return False  # the plain .pyc is kept: without it every container compiles the stdlib it imports
    return not (here.name == "lib-dynload" and name.startswith(SKIP_DYNLOAD))


def _dynload(stdlib: Path) -> list[Path]:
    folder = stdlib / "lib-dynload"
    return sorted(p for p in folder.glob("*.so") if not p.name.startswith(SKIP_DYNLOAD))


def _shared_libraries(elves: Iterable[Path]) -> set[str]:
    """Paths ``ldd`` resolves for ``elves`` (transitively), the loader included."""
    out = subprocess.run(["ldd", *map(str, elves)], capture_output=True, text=True).stdout
    found = {LOADER} if Path(LOADER).exists() else set()
    for line in out.splitlines():
        if not line.startswith("\t"):
            continue  # "file:" headers of a multi-file ldd
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            found.add(path)
    return found
