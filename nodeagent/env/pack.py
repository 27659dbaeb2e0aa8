"""Rebuild a captured environment on the node: a cached venv, a checkout of the code.

Runs in the job's supervisor, before the job starts (never in the agent's event
loop). Two parts, see :func:`prepare`:

**The venv**, from the agent's ``--env-cache`` (:mod:`nodeagent.env.cache`):
one per Python minor version and package list, so a new commit or diff reuses
the venv of the last one; a hit is ~1 ms, a miss a uv (else pip) build that
concurrent jobs of the same environment wait for rather than repeat.

**The code**, when the spec has git: a clone of the repository root when this
node sees it (the shared filesystem case; ``--shared``, no object copied), else
of its origin URL; checkout of the commit, ``git apply`` of the diff, the
``--env-include`` files. An editable install inside the repository is taken
from the checkout (its import roots on PYTHONPATH), not installed: the job runs
the submitted code, not whatever the tree holds now. The job's directory and
the included files must stay inside the checkout: an absolute path, a ``..``
or a committed symbolic link leading out is refused.

**As the job's owner**: when the supervisor is root and the job someone
else's, the checkout and the venv (probing the interpreter, uv or pip, the
packages' build backends) are done in a child that has become the owner
(:mod:`nodeagent.asowner`), in the owner's own cache (``CACHE/u<uid>``); only
the venv's lease comes back. Nothing the user controls runs as root, and
nothing is chowned: what the child creates is theirs. The docker runtime's
image is built by the engine, in its build container (:mod:`nodeagent.env.image`).

Every failure is an :class:`EnvError` (a short message for the job's comment,
the log for its stderr); a kill while preparing is :class:`Cancelled`. Nothing
ever falls back to another environment.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from nodeagent.env.cache import (
    DEFAULT_CACHE_MB,
    Announce,
    Cancelled,
    EnvCache,
    EnvError,
    Owner,
    Venv,
    Waiter,
    error_line,
    find_python,
    in_repo,
    never,
    owner_environ,
    run_tool,
    tail,
    venv_key,
)
from schedd.protocol import EnvSpec, LaunchSpec

__all__ = [
    "DEFAULT_CACHE_MB",
    "Announce",
    "Cancelled",
    "EnvCache",
    "EnvError",
    "Owner",
    "Prepared",
    "Venv",
    "Waiter",
    "checkout",
    "find_python",
    "is_python",
    "prepare",
    "prepare_image",
    "venv_key",
]


def is_python(argv0: str) -> bool:
    """``python``, ``python3``, ``python3.11`` or a path to one (as qsub decides).

    >>> [is_python(a) for a in ("python", "/v/bin/python3.11", "pythonw", "sh")]
    [True, True, False, False]
    """
    base = argv0.rsplit("/", 1)[-1]
    rest = base[len("python"):] if base.startswith("python") else None
    return rest is not None and (rest == "" or (rest[0].isdigit() and all(c.isdigit() or c == "." for c in rest)))


# ---------------------------------------------------------------- the code


def checkout(spec: EnvSpec, dest: Path, waiter: Waiter | None = None, environ: dict[str, str] | None = None) -> Path:
    """Clone the spec's commit into ``dest``, apply its diff, write its files; the
    job's working directory in there. Raises EnvError or Cancelled.

    Runs as whoever calls it — the job's owner (see the module docstring): git
    runs their hooks and follows their repository's links."""
    wait = waiter or never
    git = spec.git
    assert git is not None
    env = dict(os.environ if environ is None else environ)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", LC_ALL="C")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log_path = dest.parent / f"{dest.name}.git.log"
    short = git.commit[:12]
    with open(log_path, "wb") as log:
        def git_ok(*args: str, cwd: Path | None = None) -> bool:
            return run_tool(["git", *args], log, wait, env=env, cwd=cwd) == 0

        def fail(message: str) -> EnvError:
            log.flush()
            text = log_path.read_text(errors="replace")
            return EnvError(f"{message}: {error_line(text)}" if text.strip() else message, tail(text))

        sources: list[tuple[str, list[str]]] = []
        if os.path.isdir(git.root):
            sources.append((git.root, ["--shared"]))
        if git.remote:
            sources.append((git.remote, []))
        if not sources:
            raise EnvError(f"code: {git.root} does not exist on this node and the repository has no origin remote")
        for i, (origin, extra) in enumerate(sources):
            shutil.rmtree(dest, ignore_errors=True)
            if git_ok("clone", "--quiet", "--no-checkout", *extra, "--", origin, str(dest)) and \
                    git_ok("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", git.commit, cwd=dest):
                break
            if i == len(sources) - 1:
                where = " or ".join(o for o, _ in sources)
                raise fail(f"code: cannot check out commit {short} from {where}")
        if git.diff:
            patch = base64.b64decode(git.diff) if git.diff_encoding == "base64" else git.diff.encode()
            diff_path = dest.parent / f"{dest.name}.diff"
            diff_path.write_bytes(patch)
            if not git_ok("apply", "--whitespace=nowarn", str(diff_path), cwd=dest):
                raise fail(f"code: the uncommitted diff does not apply to commit {short}")
    for f in spec.files:
        _write_file(dest, f.path, base64.b64decode(f.data), f.mode)
    if not git.cwd:
        return dest
    cwd = _inside(dest, git.cwd, "the job's directory")
    try:
        cwd.mkdir(parents=True, exist_ok=True)  # the submit directory was untracked (or empty): it exists for the job
    except OSError as exc:
        raise EnvError(f"code: cannot create the job's directory {git.cwd!r}: {exc.strerror or exc}") from None
    return cwd


def _inside(dest: Path, rel: str, what: str, *, follow_last: bool = True) -> Path:
    """``dest / rel`` with its links resolved (the last one only if ``follow_last``),
    refused unless it is inside the checkout: ``rel`` relative, without ``..``,
    and no symbolic link on the way leading out of ``dest``."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts:
        raise EnvError(f"code: {what} {rel!r} must be a relative path inside the repository, without '..'")
    path = dest / pure
    real = path.resolve() if follow_last else path.parent.resolve() / path.name
    if not real.is_relative_to(dest.resolve()):
        raise EnvError(f"code: {what} {rel!r} leads outside the checkout (a symbolic link to {real})")
    return real


def _write_file(dest: Path, rel: str, data: bytes, mode: int) -> None:
    """One ``--env-include`` file; a tracked file or link of the same name is
    replaced, never written through."""
    path = _inside(dest, rel, "included file", follow_last=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o777)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise EnvError(f"code: no space left writing {rel}") from None
        raise EnvError(f"code: cannot write included file {rel}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- the whole job


@dataclass
class Prepared:
    """How to run the job in its rebuilt environment."""

    cwd: Path | None  # None: the launch's workdir
    argv: list[str] | None
    env: dict[str, str]
    venv: Venv | None  # a host venv, held while the job runs; None in a container
    key: str  # the venv key, or the image tag
    built: bool = False  # this job built it (a miss)
    seconds: float = 0.0  # time spent getting the venv or image


def _spec(launch: LaunchSpec) -> EnvSpec:
    assert launch.env_spec is not None
    try:
        return msgspec.convert(launch.env_spec, EnvSpec)
    except msgspec.ValidationError as exc:
        raise EnvError(f"the environment spec is malformed: {exc}") from None


def prepare(launch: LaunchSpec, src: Path, env: dict[str, str], cache: EnvCache, *,
            argv: list[str] | None, waiter: Waiter | None = None, announce: Announce | None = None,
            owner: Owner | None = None) -> Prepared:
    """Check the code out into ``src`` (when the spec has git), then get the venv —
    as ``owner`` in their own cache when given (we are root); the job's cwd, argv
    and environment. Raises EnvError or Cancelled."""
    spec = _spec(launch)
    cwd, venv = _make(spec, src, cache, owner, waiter, announce, with_venv=True)
    assert venv is not None
    env, argv = _in_venv(spec, launch, src, env, argv, venv.path)
    return Prepared(cwd, argv, env, venv, venv.key, venv.built, venv.seconds)


def prepare_image(launch: LaunchSpec, src: Path, env: dict[str, str], cache: EnvCache, api: Any, base: str, *,
                  argv: list[str] | None, waiter: Waiter | None = None, announce: Announce | None = None,
                  owner: Owner | None = None) -> Prepared:
    """As :func:`prepare` for the docker runtime: the venv is in an image FROM
    ``base`` (:mod:`nodeagent.env.image`), the code checked out here (as ``owner``)
    and mounted; ``key`` is the image to run. The image is built here, as root:
    that runs nothing of the user's on this host, the engine runs the build."""
    from nodeagent.env import image as envimage

    spec = _spec(launch)
    cwd, _ = _make(spec, src, cache, owner, waiter, announce, with_venv=False)
    image = envimage.ensure_image(api, base, spec, cache.root, cache.environ, waiter, uv=cache.uv(), announce=announce,
                                  max_bytes=cache.max_bytes)
    env, argv = _in_venv(spec, launch, src, env, argv, Path(envimage.VENV))
    return Prepared(cwd, argv, env, None, image.tag, image.built, image.seconds)


def _make(spec: EnvSpec, src: Path, cache: EnvCache, owner: Owner | None, waiter: Waiter | None,
          announce: Announce | None, *, with_venv: bool) -> tuple[Path | None, Venv | None]:
    """The checkout (when the spec has git) and the venv (``with_venv``): here, or
    as ``owner`` in a child (:mod:`nodeagent.asowner`) whose venv lease is handed
    back, so that the venv stays held from its check to the job's end."""
    if owner is None:
        return _make_here(spec, src, cache, waiter, announce, with_venv)
    from nodeagent import asowner

    mine = cache.for_owner(owner) if with_venv else EnvCache(cache.root, environ=owner_environ(cache.environ, owner))

    def step(wait: Waiter, say: Announce) -> tuple[dict[str, Any], list[int]]:
        cwd, venv = _make_here(spec, src, mine, wait, say, with_venv)
        result: dict[str, Any] = {"cwd": str(cwd) if cwd is not None else None}
        if venv is None:
            return result, []
        result.update(built=venv.built, seconds=venv.seconds)
        return result, [venv.lease]

    result, fds = asowner.call(owner, step, waiter or never, announce or (lambda _: None))
    cwd = Path(result["cwd"]) if result.get("cwd") else None
    if not with_venv:
        return cwd, None
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise EnvError(f"preparing as {owner.name} failed: no lease on the venv came back")
    key = venv_key(spec)  # the path is ours to say (the owner's cache), not the child's
    return cwd, Venv(key, mine.root / key / "venv", bool(result["built"]), float(result["seconds"]), fds[0])


def _make_here(spec: EnvSpec, src: Path, cache: EnvCache, waiter: Waiter | None, announce: Announce | None,
               with_venv: bool) -> tuple[Path | None, Venv | None]:
    cwd = checkout(spec, src, waiter, cache.environ) if spec.git is not None else None
    return cwd, cache.ensure(spec, waiter, announce) if with_venv else None


def _in_venv(spec: EnvSpec, launch: LaunchSpec, src: Path, env: dict[str, str], argv: list[str] | None,
             venv: Path) -> tuple[dict[str, str], list[str] | None]:
    """The job's environment and argv to run in ``venv`` with the checkout in ``src``."""
    env = dict(env)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["SCHEDD_ENV_HASH"] = launch.env_hash
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    roots = [str(src / r) for p in spec.packages if in_repo(spec, p) for r in (p.pth or [p.repo_path])]
    if roots:
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = ":".join(dict.fromkeys([*roots, *([old] if old else [])]))
    new_argv = list(argv) if argv is not None else None
    if new_argv and is_python(new_argv[0]):
        new_argv[0] = str(venv / "bin" / "python")
        git = spec.git
        if git is not None and git.entry_point and 0 < git.entry_index < len(new_argv):
            new_argv[git.entry_index] = str(src / git.entry_point)
    return env, new_argv
