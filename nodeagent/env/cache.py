"""The venv cache of a node: one venv per owner and package set, built once, evicted LRU.

Used by :mod:`nodeagent.env.pack` in the job's supervisor. A venv is keyed by
:func:`venv_key` — a hash of the Python minor version and the package list
only, so a new commit or diff reuses the venv of the last one.

**One cache per job owner** when the supervisor is root and runs jobs as their
owners: ``CACHE/u<uid>/`` (:meth:`EnvCache.for_owner`), created by root with
mode 0700 and given to the user; everything inside is created by the user, in a
child process that has become them (:mod:`nodeagent.asowner`). Never shared:
the files of a venv belong to whoever built it, who could plant code in it, so
a venv built by alice must never be run by bob. The same layout, one level
down, as below; a supervisor that switches no user (not root, or a job of
root's) uses ``CACHE/`` itself::

    CACHE/<key>.lock    flock: shared while a job uses the venv, exclusive to build or evict it
    CACHE/<key>/venv/   the venv (built in place: venvs are not relocatable)
    CACHE/<key>/ready   written last, atomically: no ready marker, not a venv to use;
                        its mtime is the last use (touched on every hit): LRU order
    CACHE/<key>/build.log, requirements.txt
    CACHE/evict.lock    one eviction at a time
    CACHE/.uv-cache/, .pip-cache/   the installers' own caches, per owner (see for_owner)

A hit costs an open, a non-blocking shared flock, two stats and a utime (~1 ms).
A miss takes the lock exclusively (waiting for any other builder of the same
key, which then turns the miss into a hit), removes a half-built directory,
builds — ``uv venv`` + ``uv pip install`` when uv is on PATH, else ``python -m
venv`` + ``pip install`` (pip's environment and config apply: ``PIP_FIND_LINKS``,
``PIP_NO_INDEX``..., which are also passed on to uv) — writes ``ready``, goes
back to a shared lock and evicts least-recently-used venvs nobody holds until
the cache is under its size cap. Exact pins, ``--no-deps`` for an installed-
package list (it is already closed); editable installs from their path, which
must exist on the node. The interpreter is the submitter's (its path, or its
venv's base) or ``pythonX.Y`` on PATH, same minor version, else an EnvError.
Every tool and candidate interpreter runs with the ids of the process that
calls :meth:`EnvCache.ensure` — the job's owner, never the agent's root.
The size cap (``--env-cache-mb``) applies to each owner's cache.

::

    Exception
    ├── EnvError    cannot be rebuilt: str() for the job's comment, .log for its stderr
    └── Cancelled   the job was killed while waiting for a build or a tool
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nodeagent.jobdir import write_atomic
from schedd.protocol import EnvPackage, EnvPython, EnvSpec

__all__ = [
    "DEFAULT_CACHE_MB",
    "Announce",
    "Cancelled",
    "EnvCache",
    "EnvError",
    "Owner",
    "Venv",
    "Waiter",
    "error_line",
    "find_python",
    "count",
    "flock_wait",
    "in_repo",
    "requirement_lines",
    "never",
    "owner_environ",
    "run_tool",
    "tail",
    "venv_key",
]

DEFAULT_CACHE_MB = 20 * 1024
READY = "ready"
_LOCK_POLL_S = 0.1  # flock cannot be waited on with select: a waiter retries this often
_LOG_TAIL = 64 * 1024  # what of a build log goes to the job's stderr

#: ``waiter(fd, timeout_s)``: block until ``fd`` (a pidfd; None: nothing) is
#: readable or ``timeout_s`` passed; True when the job is to stop (a kill came).
Waiter = Callable[[int | None, float], bool]
#: ``announce(what)``: tell the user what the job waits for before it starts
#: (a build, another job's build); shown as the job's comment
Announce = Callable[[str], None]
_PROBE_S = 60.0  # a candidate interpreter that has not said its version by then is not one


@dataclass(frozen=True)
class Owner:
    """The user a root supervisor prepares a job for (:mod:`nodeagent.asowner` becomes them)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def owner_environ(environ: dict[str, str], owner: Owner) -> dict[str, str]:
    """The agent's environment as the owner's tools see it: their HOME (git's config,
    uv's and pip's caches are theirs; root's home is not even readable to them)."""
    return dict(environ, HOME=owner.home, USER=owner.name, LOGNAME=owner.name)


class EnvError(Exception):
    """The environment cannot be rebuilt. ``str()`` is for the job's comment; ``log`` for its stderr."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class Cancelled(Exception):
    """The job was killed while its environment was being prepared."""


def never(fd: int | None, timeout_s: float) -> bool:
    """The default waiter: nothing ever asks to stop."""
    select.select([fd] if fd is not None else [], [], [], timeout_s)
    return False


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def in_repo(spec: EnvSpec, pkg: EnvPackage) -> bool:
    """An editable install taken from the job's checkout rather than installed."""
    return bool(pkg.repo_path) and spec.git is not None


def requirement_lines(spec: EnvSpec) -> list[str]:
    """What the installer gets, one requirement per line."""
    if spec.source != "installed":
        return list(spec.requirements)
    lines = []
    for p in spec.packages:
        if in_repo(spec, p):
            continue
        if p.editable:
            lines.append(f"-e {p.editable}")
        elif p.url:
            lines.append(f"{p.name} @ {p.url}")
        else:
            lines.append(f"{p.name}=={p.version}" if p.version else p.name)
    return lines


def venv_key(spec: EnvSpec) -> str:
    """The venv cache key: Python ``major.minor`` + what is installed, nothing of the code.

    >>> from schedd.protocol import EnvPython
    >>> a = EnvSpec(python=EnvPython("3.11.7"), packages=[EnvPackage("x", "1.0")])
    >>> b = EnvSpec(python=EnvPython("3.11.9", executable="/elsewhere"), packages=[EnvPackage("x", "1.0")])
    >>> venv_key(a) == venv_key(b), venv_key(a) == venv_key(EnvSpec(python=EnvPython("3.12.1")))
    (True, False)
    """
    what = {"v": 1, "python": _minor(spec.python.version), "impl": spec.python.implementation,
            "source": spec.source, "install": sorted(requirement_lines(spec))}
    raw = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- running tools


def tail(text: str) -> str:
    return text[-_LOG_TAIL:]


def run_tool(argv: list[str], log: IO[bytes], waiter: Waiter, *, env: dict[str, str] | None = None,
             cwd: str | Path | None = None, timeout_s: float | None = None) -> int:
    """Run a tool as ourselves, its output appended to ``log``; its exit code (124
    when it ran past ``timeout_s`` and was killed). Raises Cancelled (after killing
    its process group) when the waiter says to stop."""
    log.write(f"$ {' '.join(argv)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True, close_fds=True)
    except OSError as exc:
        log.write(f"cannot run {argv[0]}: {exc.strerror or exc}\n".encode())
        return 127
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = None
    deadline = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
    try:
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(proc)
                log.write(f"killed after {timeout_s:g} s\n".encode())
                return 124
            if waiter(pidfd, min(left, 1.0 if pidfd is not None else 0.05)):
                _kill_group(proc)
                raise Cancelled(f"killed while running {os.path.basename(argv[0])}")
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return proc.returncode


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def error_line(log: str) -> str:
    """The line of a tool's output that says what went wrong (pip's ERROR:, uv's ×, git's fatal:)."""
    lines = [line.strip() for line in log.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith(("ERROR:", "error:", "fatal:", "×")):
            causes = []  # uv explains on the next lines: "cause: ...", "╰─▶ ..."
            for follow in lines[i + 1:i + 3]:
                if not follow.startswith(("cause:", "Caused by:", "╰─▶")):
                    break
                causes.append(follow)
            return "; ".join([line, *causes])[:400]
    rest = [line for line in lines if line and not line.startswith("$ ")]
    return rest[-1][:400] if rest else "no output"


def find_python(py: EnvPython, environ: dict[str, str], waiter: Waiter = never) -> str:
    """The interpreter to build with: the submitter's path, its venv's base, or
    ``pythonX.Y`` on PATH — whichever exists first with the same minor version.

    Each candidate is *run* to learn its version, and the paths come from the
    job's env spec: this must run as the job's owner (it does, see
    :mod:`nodeagent.asowner`), as everything else that builds the venv."""
    want = _minor(py.version)
    tried: list[str] = []
    candidates = [py.base, py.executable, shutil.which(f"python{want}", path=environ.get("PATH", os.defpath))]
    for cand in dict.fromkeys(c for c in candidates if c):
        if not os.access(cand, os.X_OK):
            tried.append(f"{cand} (absent)")
            continue
        code, got = _probe(cand, environ, waiter)
        if code == 0 and got == want:
            return cand
        tried.append(f"{cand} (Python {got or '?'})" if code == 0 else f"{cand} ({got or f'exit code {code}'})")
    raise EnvError(f"Python {want} is not installed on this node (tried {', '.join(tried) or f'python{want} on PATH'})")


def _probe(cand: str, environ: dict[str, str], waiter: Waiter) -> tuple[int, str]:
    """(exit code, last line of output) of ``cand`` asked for its version; a kill
    of the job stops it (Cancelled), as any other tool."""
    with tempfile.TemporaryFile() as out:
        code = run_tool([cand, "-I", "-c", "import sys;print('%d.%d' % sys.version_info[:2])"], out, waiter,
                        env=environ, timeout_s=_PROBE_S)
        out.seek(0)
        lines = [line.strip() for line in out.read(64 * 1024).decode(errors="replace").splitlines()[1:]]
    rest = [line for line in lines if line]
    return code, rest[-1][:80] if rest else ""


def count(n: int, noun: str) -> str:
    """``3 requirements``, ``1 requirement``.

    >>> count(1, "package"), count(30, "package")
    ('1 package', '30 packages')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def flock_wait(fd: int, how: int, waiter: Waiter, blocked: Callable[[], None] | None = None) -> None:
    """``flock`` that a kill interrupts: flock cannot be selected on, so retry every
    ``_LOCK_POLL_S`` while asking ``waiter``; raises Cancelled when the job is to end.
    ``blocked`` is called once if the lock is not free at once (to say why we wait)."""
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if blocked is not None:
                blocked()
                blocked = None
            if waiter(None, _LOCK_POLL_S):
                raise Cancelled("killed while waiting for another job's build of the same environment") from None


# ---------------------------------------------------------------- the venv cache


@dataclass
class Venv:
    """A ready venv and the shared lock that keeps it from eviction while the job runs."""

    key: str
    path: Path
    built: bool  # this call built it (a miss); False: a hit
    seconds: float  # time spent in ensure()
    lease: int  # fd holding LOCK_SH; closing it (or exiting) releases the venv

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lease)


class EnvCache:
    """The venvs of one cache directory (see the module docstring for the layout)."""

    def __init__(self, root: Path, *, max_mb: int = DEFAULT_CACHE_MB, installer: str = "auto",
                 environ: dict[str, str] | None = None, python: str = sys.executable) -> None:
        if installer not in ("auto", "uv", "pip"):
            raise ValueError(f"installer {installer!r}: expected auto, uv or pip")
        self.root = root
        self.max_bytes = max_mb * 1024 * 1024
        self.installer = installer
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python  # whose pip may install into a venv made without one

    def for_owner(self, owner: Owner) -> EnvCache:
        """The cache of ``owner``'s venvs, ``ROOT/u<uid>``: created here (we are root)
        with mode 0700 and given to them; everything in it is then created by them.

        Per owner because a venv's files belong to whoever built it: a shared
        venv built by alice could run code alice planted in it as bob. A path
        there that is not a directory of theirs is refused rather than used.
        uv's and pip's download caches go in there too (``.uv-cache``,
        ``.pip-cache``; not under the size cap), whatever the agent's settings:
        a home may be missing or unwritable on a node, and a cache shared
        between users (uv links its files into the venvs) could be poisoned."""
        path = self.root / f"u{owner.uid}"
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
            try:
                os.mkdir(path, 0o700)
                os.chown(path, owner.uid, owner.gid)
            except FileExistsError:
                pass
            st = os.lstat(path)
        except OSError as exc:
            raise EnvError(f"env cache {path}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner.uid:
            raise EnvError(f"env cache {path} is not a directory of {owner.name}'s")
        environ = owner_environ(self.environ, owner)
        environ.update(UV_CACHE_DIR=str(path / ".uv-cache"), PIP_CACHE_DIR=str(path / ".pip-cache"))
        mine = EnvCache(path, installer=self.installer, environ=environ, python=self.python)
        mine.max_bytes = self.max_bytes
        return mine

    # ------------------------------------------------------------ use

    def ensure(self, spec: EnvSpec, waiter: Waiter | None = None, announce: Announce | None = None) -> Venv:
        """A ready venv for ``spec``, built if needed; raises EnvError or Cancelled."""
        waiter = waiter or never
        say = announce or (lambda _: None)
        started = time.monotonic()
        key = venv_key(spec)
        busy = lambda: say(f"waiting for another job's build of environment venv {key[:12]}")  # noqa: E731
        entry = self.root / key
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EnvError(f"env cache {self.root}: {exc.strerror or exc}") from None
        try:
            while True:
                flock_wait(fd, fcntl.LOCK_SH, waiter, busy)
                if self._usable(entry):
                    with contextlib.suppress(OSError):
                        os.utime(entry / READY)
                    return Venv(key, entry / "venv", False, time.monotonic() - started, fd)
                fcntl.flock(fd, fcntl.LOCK_UN)
                flock_wait(fd, fcntl.LOCK_EX, waiter, busy)
                if self._usable(entry):  # someone built it while we waited
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    continue
                say(f"building environment venv {key[:12]} ({count(len(requirement_lines(spec)), 'requirement')})")
                try:
                    self._build(spec, key, entry, waiter)
                except BaseException:
                    shutil.rmtree(entry, ignore_errors=True)  # its log is in the EnvError
                    raise
                fcntl.flock(fd, fcntl.LOCK_SH)  # not atomic: the fresh venv is the last LRU victim anyway
                self.evict(keep=key)
                return Venv(key, entry / "venv", True, time.monotonic() - started, fd)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _usable(entry: Path) -> bool:
        return (entry / READY).exists() and (entry / "venv" / "bin" / "python").exists()

    # ------------------------------------------------------------ build

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in self.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", UV_PYTHON_DOWNLOADS="never",
                   UV_NO_PROGRESS="1")
        return env

    def uv(self) -> str | None:
        """The uv this cache builds with: on PATH under ``auto``, required under ``uv``,
        None under ``pip``; raises EnvError when ``uv`` is asked for and absent."""
        if self.installer == "pip":
            return None
        uv = shutil.which("uv", path=self.environ.get("PATH", os.defpath))
        if uv is None and self.installer == "uv":
            raise EnvError("--env-installer uv: uv is not on the agent's PATH")
        return uv

    def _uv_index_flags(self) -> list[str]:
        """pip's index settings from the environment, for uv (which reads only its own)."""
        env, flags = self.environ, []
        if "UV_FIND_LINKS" not in env:
            for link in env.get("PIP_FIND_LINKS", "").split():
                flags += ["--find-links", link]
        if "UV_NO_INDEX" not in env and env.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
            flags.append("--no-index")
        if "UV_INDEX_URL" not in env and "UV_DEFAULT_INDEX" not in env and env.get("PIP_INDEX_URL"):
            flags += ["--index-url", env["PIP_INDEX_URL"]]
        if "UV_EXTRA_INDEX_URL" not in env and "UV_INDEX" not in env:
            for url in env.get("PIP_EXTRA_INDEX_URL", "").split():
                flags += ["--extra-index-url", url]
        return flags

    def _pip_runs_elsewhere(self) -> bool:
        """Our own pip can install into another interpreter's venv (pip >= 22.3 ``--python``)."""
        try:
            out = subprocess.run([self.python, "-c", "import pip;print(pip.__version__)"], capture_output=True,
                                 text=True, timeout=60, stdin=subprocess.DEVNULL)
            major, minor = (int(x) for x in out.stdout.strip().split(".")[:2])
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and (major, minor) >= (22, 3)

    def _build(self, spec: EnvSpec, key: str, entry: Path, waiter: Waiter) -> None:
        started = time.monotonic()
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)  # a half-built one: its builder died
        try:
            entry.mkdir(mode=0o755)
        except OSError as exc:
            raise EnvError(f"env cache {entry}: {exc.strerror or exc}") from None
        venv = entry / "venv"
        lines = requirement_lines(spec)
        for p in spec.packages:
            if p.editable and not in_repo(spec, p) and not os.path.isdir(p.editable):
                raise EnvError(f"editable install of {p.name}: {p.editable} does not exist on this node "
                               "(editable installs are installed from their path)")
        (entry / "requirements.txt").write_text("".join(f"{line}\n" for line in lines))
        env = self._env()
        with open(entry / "build.log", "wb") as log:
            def step(argv: list[str], what: str) -> None:
                if run_tool(argv, log, waiter, env=env, cwd=entry) != 0:
                    log.flush()
                    text = (entry / "build.log").read_text(errors="replace")
                    raise EnvError(f"{what} failed: {error_line(text)}", tail(text))

            interp = find_python(spec.python, self.environ, waiter)
            uv = self.uv()
            no_deps = ["--no-deps"] if spec.source == "installed" else []
            req = ["-r", str(entry / "requirements.txt")]
            if uv is not None:
                installer = "uv"
                step([uv, "venv", "--quiet", "--no-project", "--python", interp, str(venv)], "uv venv")
                if lines:
                    step([uv, "pip", "install", "--python", str(venv / "bin" / "python"), *self._uv_index_flags(),
                          *no_deps, *req], "uv pip install")
            elif not lines or self._pip_runs_elsewhere():
                installer = "pip"
                step([interp, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
                if lines:
                    step([self.python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                          "--no-input", *no_deps, *req], "pip install")
            else:
                installer = "pip"
                step([interp, "-m", "venv", str(venv)], "python -m venv")
                step([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", *no_deps, *req],
                     "pip install")
            log.write(f"built with {installer} in {time.monotonic() - started:.1f} s\n".encode())
        ready = {"key": key, "python": interp, "installer": installer, "size_bytes": _du(venv),
                 "build_s": round(time.monotonic() - started, 3), "built_at": time.time()}
        write_atomic(entry / READY, json.dumps(ready).encode(), durable=True)

    # ------------------------------------------------------------ eviction

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, size in bytes, key) of every ready venv, least recently used first."""
        out = []
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        for name in names:
            if name.startswith("."):
                continue  # .trash-* being removed
            ready = self.root / name / READY
            try:
                st = ready.stat()
                size = int(json.loads(ready.read_bytes()).get("size_bytes", 0))
            except (OSError, ValueError, AttributeError):
                continue
            out.append((st.st_mtime, size, name))
        return sorted(out)

    def evict(self, keep: str = "") -> list[str]:
        """Remove least recently used venvs that no job holds until the cache fits
        ``max_mb``; the evicted keys. O(entries); one evictor at a time (others skip)."""
        try:
            guard = os.open(self.root / "evict.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return []
        try:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            evicted: list[str] = []
            for _, size, key in entries:
                if total <= self.max_bytes:
                    break
                if key != keep and self._remove(key):
                    total -= size
                    evicted.append(key)
            return evicted
        finally:
            os.close(guard)

    def _remove(self, key: str) -> bool:
        """Remove one venv unless a job holds it (its lock is taken without waiting)."""
        try:
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            trash = self.root / f".trash-{key}-{os.getpid()}"
            os.rename(self.root / key, trash)
            shutil.rmtree(trash, ignore_errors=True)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


def _du(path: Path) -> int:
    """Bytes used under ``path`` (hard links counted once). O(files)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total
