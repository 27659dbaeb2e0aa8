"""Rebuild a captured environment on the node: a cached venv, a checkout of the code.

Runs in the job's supervisor, before the job starts (never in the agent's event
loop). Two parts, see :func:`prepare`:

**The venv**, from the agent's ``--env-cache`` (:mod:`nodeagent.envcache`):
one per Python minor version and package list, so a new commit or diff reuses
the venv of the last one; a hit is ~1 ms, a miss a uv (else pip) build that
concurrent jobs of the same environment wait for rather than repeat.

**The code**, when the spec has git: a clone of the repository root when this
node sees it (the shared filesystem case; ``--shared``, no object copied), else
of its origin URL; checkout of the commit, ``git apply`` of the diff, the
``--env-include`` files — run as the job's user. An editable install inside
the repository is taken from the checkout (its import roots on PYTHONPATH),
not installed: the job runs the submitted code, not whatever the tree holds now.

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
from pathlib import Path
from typing import Any

import msgspec

from nodeagent.envcache import (
    DEFAULT_CACHE_MB,
    Announce,
    Cancelled,
    EnvCache,
    EnvError,
    RunAs,
    Venv,
    Waiter,
    error_line,
    find_python,
    in_repo,
    never,
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
    "Prepared",
    "RunAs",
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


def checkout(spec: EnvSpec, dest: Path, waiter: Waiter | None = None, run_as: RunAs | None = None,
             environ: dict[str, str] | None = None) -> Path:
    """Clone the spec's commit into ``dest``, apply its diff, write its files; the
    job's working directory in there. Raises EnvError or Cancelled."""
    wait = waiter or never
    git = spec.git
    assert git is not None
    env = dict(os.environ if environ is None else environ)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", LC_ALL="C")
    if run_as is not None:
        env["HOME"] = run_as[3]  # git reads the user's config, not the agent's
    dest.parent.mkdir(parents=True, exist_ok=True)
    log_path = dest.parent / f"{dest.name}.git.log"
    short = git.commit[:12]
    with open(log_path, "wb") as log:
        def git_ok(*args: str, cwd: Path | None = None) -> bool:
            return run_tool(["git", *args], log, wait, env=env, cwd=cwd, run_as=run_as) == 0

        def fail(message: str) -> EnvError:
            log.flush()
            text = log_path.read_text(errors="replace")
            return EnvError(f"{message}: {error_line(text)}" if text.strip() else message, tail(text))

        if run_as is not None:
            os.chown(log_path, run_as[0], run_as[1])
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
            if run_as is not None:
                os.chown(diff_path, run_as[0], run_as[1])
            if not git_ok("apply", "--whitespace=nowarn", str(diff_path), cwd=dest):
                raise fail(f"code: the uncommitted diff does not apply to commit {short}")
    for f in spec.files:
        _write_file(dest, f.path, base64.b64decode(f.data), f.mode, run_as)
    cwd = dest / git.cwd if git.cwd else dest
    if not cwd.is_dir():  # the submit directory was untracked (or empty): it exists for the job
        cwd.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            for p in [cwd, *cwd.parents]:
                if p == dest:
                    break
                os.chown(p, run_as[0], run_as[1])
    return cwd


def _write_file(dest: Path, rel: str, data: bytes, mode: int, run_as: RunAs | None) -> None:
    path = (dest / rel).resolve()
    if not path.is_relative_to(dest.resolve()):
        raise EnvError(f"code: included file {rel!r} is outside the checkout")
    created = [p for p in reversed(path.parents) if p.is_relative_to(dest) and not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a tracked file of the same name: replaced, not written through a link
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o777)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if run_as is not None:
            for p in [*created, path]:
                os.chown(p, run_as[0], run_as[1])
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
            argv: list[str] | None, waiter: Waiter | None = None, run_as: RunAs | None = None,
            announce: Announce | None = None) -> Prepared:
    """Check the code out into ``src`` (when the spec has git), then get the venv;
    the job's cwd, argv and environment. Raises EnvError or Cancelled."""
    spec = _spec(launch)
    cwd = checkout(spec, src, waiter, run_as, cache.environ) if spec.git is not None else None
    venv = cache.ensure(spec, waiter, announce)
    env, argv = _in_venv(spec, launch, src, env, argv, venv.path)
    return Prepared(cwd, argv, env, venv, venv.key, venv.built, venv.seconds)


def prepare_image(launch: LaunchSpec, src: Path, env: dict[str, str], cache: EnvCache, api: Any, base: str, *,
                  argv: list[str] | None, waiter: Waiter | None = None, run_as: RunAs | None = None,
                  announce: Announce | None = None) -> Prepared:
    """As :func:`prepare` for the docker runtime: the venv is in an image FROM
    ``base`` (:mod:`nodeagent.envimage`), the code checked out here and mounted;
    ``key`` is the image to run."""
    from nodeagent import envimage

    spec = _spec(launch)
    cwd = checkout(spec, src, waiter, run_as, cache.environ) if spec.git is not None else None
    image = envimage.ensure_image(api, base, spec, cache.root, cache.environ, waiter, uv=cache.uv(), announce=announce,
                                  max_bytes=cache.max_bytes)
    env, argv = _in_venv(spec, launch, src, env, argv, Path(envimage.VENV))
    return Prepared(cwd, argv, env, None, image.tag, image.built, image.seconds)


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
