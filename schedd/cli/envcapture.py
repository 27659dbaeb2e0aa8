"""``qsub --env``: capture the submitter's Python environment and code. Stdlib only.

What goes into the spec (its JSON is drawn in :mod:`schedd.envspec`):

- **the interpreter** the job names (``python``, ``python3.11``, a path; for a
  script job or another command, the interpreter of its ``#!`` line, else
  ``python3`` on PATH) and its version, asked of that interpreter itself;
- **its installed distributions**, read from the ``*.dist-info`` headers of its
  ``site-packages`` (never ours: a venv is seen as the job would see it), pinned
  ``name==version``; editable installs keep their path (PEP 610
  ``direct_url.json``), other direct installs their URL. ``pip`` itself is left
  out (the node's venv tool brings its own). Or, with ``--env FILE``, the lines
  of a requirements file, ``[project].dependencies`` of a pyproject.toml, or
  what ``uv export`` says of a uv.lock;
- **the code**, when the submit directory is in a git work tree: root, origin
  URL (without credentials), branch, commit, ``git diff HEAD --binary`` of the
  tracked files, the submit directory and the entry point relative to the root.
  Untracked files only by name (``--env-include``), up to
  :data:`~schedd.envspec.MAX_INCLUDE_BYTES` in all; an untracked entry point is
  sent too (with a warning), since the job cannot run without it.

Cost, measured: one run of the interpreter (``-I``, ~25 ms) overlapping the git
commands (~2 ms each), then ~20 µs per distribution (two small reads).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from typing import Any

__all__ = ["CaptureError", "capture", "captures_by_default", "entry_point", "is_python", "mode_of"]

#: distributions a rebuilt venv gets from its own tool, as ``pip freeze`` leaves them out
_SKIP = frozenset({"pip", "distribute"})
_PROBE = ("import sys,json;print(json.dumps([list(sys.version_info[:3]),sys.implementation.name,sys.executable,"
          "getattr(sys,'_base_executable',''),sys.prefix,sys.base_prefix,sys.path]))")
#: Python options that take the next word as their value (-c and -m end the options)
_PY_VALUE_OPTS = frozenset({"-W", "-X", "--check-hash-based-pycs"})


class CaptureError(Exception):
    """The environment cannot be captured as asked; the message says why and what to do."""


def is_python(argv0: str) -> bool:
    """``python``, ``python3``, ``python3.11`` or a path to one.

    >>> [is_python(a) for a in ("python", "/venv/bin/python3.11", "python3", "pythonista", "bash")]
    [True, True, True, False, False]
    """
    base = argv0.rsplit("/", 1)[-1]
    rest = base[len("python"):] if base.startswith("python") else None
    return rest is not None and (rest == "" or (rest[0].isdigit() and all(c.isdigit() or c == "." for c in rest)))


def mode_of(value: str) -> str:
    """``--env`` value -> auto | none | requirements | pyproject | uvlock.

    >>> [mode_of(v) for v in ("auto", "none", "req/dev.txt", "pyproject.toml", "uv.lock")]
    ['auto', 'none', 'requirements', 'pyproject', 'uvlock']
    """
    base = value.rsplit("/", 1)[-1]
    if value in ("auto", "none"):
        return value
    if base.endswith(".txt"):
        return "requirements"
    if base == "pyproject.toml":
        return "pyproject"
    if base == "uv.lock":
        return "uvlock"
    raise CaptureError(f"--env {value}: expected auto, none, a requirements file (*.txt), pyproject.toml or uv.lock")


def _python_target(argv: list[str]) -> tuple[str, int]:
    """What ``python ...`` runs: ("script", index), ("module", index), ("command"|"stdin", -1)."""
    i = 1
    while i < len(argv):
        word = argv[i]
        if word == "-" or word == "--" and i + 1 >= len(argv):
            return "stdin", -1
        if word == "--":
            return "script", i + 1
        if not word.startswith("-"):
            return "script", i
        if word.startswith("-c"):
            return "command", -1
        if word.startswith("-m"):
            return "module", i if word != "-m" else i + 1
        i += 2 if word in _PY_VALUE_OPTS else 1
    return "stdin", -1


def entry_point(argv: list[str]) -> int:
    """The argv index of the script a ``python ...`` command runs; -1 for ``-c``, ``-m``, stdin.

    >>> entry_point(["python", "-u", "-X", "dev", "train.py", "--lr", "1"]), entry_point(["python", "-m", "x"])
    (4, -1)
    """
    kind, index = _python_target(argv)
    return index if kind == "script" else -1


def captures_by_default(argv: list[str] | None) -> bool:
    """``--env auto`` is the default for a Python entry point: ``python script.py`` or
    ``python -m module`` (not ``python -c``, not a script job, not another command).

    >>> [captures_by_default(a) for a in (["python3", "t.py"], ["python", "-m", "x"], ["python", "-c", "1"], ["sh"])]
    [True, True, False, False]
    """
    return argv is not None and bool(argv) and is_python(argv[0]) and _python_target(argv)[0] in ("script", "module")


def capture(mode: str, argv: list[str] | None, cwd: str, includes: list[str], environ: dict[str, str],
            warn: Callable[[str], None]) -> dict[str, Any]:
    """The environment spec of a job submitted from ``cwd``. Raises CaptureError.

    ``mode``: auto, or the path of a requirements file / pyproject.toml / uv.lock;
    ``argv``: the job's command (None for a script job).
    """
    import subprocess

    kind = mode_of(mode)
    python = _interpreter(argv, cwd, environ)
    probe = subprocess.Popen([python, "-I", "-c", _PROBE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        git = _git(cwd, argv, warn)
        out, err = probe.communicate(timeout=60)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    if probe.returncode != 0:
        raise CaptureError(f"--env: {python} did not run: {err.decode(errors='replace').strip()[-300:]}")
    import json

    version, impl, executable, base, prefix, base_prefix, path = json.loads(out)
    py: dict[str, Any] = {"version": ".".join(map(str, version)), "executable": executable or python,
                          "implementation": impl}
    if base and base != py["executable"]:
        py["base"] = base
    spec: dict[str, Any] = {"version": 1, "python": py}
    if kind == "auto":
        spec["source"] = "installed"
        spec["packages"] = installed(path, git["root"] if git else "")
    else:
        file = os.path.normpath(os.path.join(cwd, mode))
        spec["source"], spec["source_path"] = kind, file
        spec["requirements"] = {"requirements": _requirements_txt, "pyproject": _pyproject,
                                "uvlock": _uv_lock}[kind](file)
    files: list[dict[str, Any]] = []
    if git is not None:
        untracked_entry = git.pop("_untracked_entry", "")
        paths = list(includes)
        if untracked_entry:
            warn(f"{git['entry_point']} is not tracked by git: it is sent with the job")
            paths.append(os.path.join(git["root"], untracked_entry))
        files = _includes(paths, cwd, git["root"])
        spec["git"] = git
    elif includes:
        raise CaptureError("--env-include: the submit directory is not in a git work tree; included files are "
                           "added to the job's checkout, so there must be one")
    if files:
        spec["files"] = files
    _check_size(spec)
    return spec


# ---------------------------------------------------------------- the interpreter


def _which(name: str, environ: dict[str, str], cwd: str) -> str | None:
    if "/" in name:
        path = os.path.join(cwd, name)
        return path if os.access(path, os.X_OK) and os.path.isfile(path) else None
    for d in environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path if os.path.isabs(path) else os.path.join(cwd, path)
    return None


def _shebang_python(path: str) -> str | None:
    """The interpreter of a ``#!.../python3`` or ``#!/usr/bin/env python3`` line, if it is Python."""
    try:
        with open(path, "rb") as f:
            line = f.readline(512)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode(errors="replace").split()
    if words and words[0].endswith("/env"):
        words = [w for w in words[1:] if not w.startswith("-")]
    return words[0] if words and is_python(words[0]) else None


def _interpreter(argv: list[str] | None, cwd: str, environ: dict[str, str]) -> str:
    names: list[str] = []
    if argv and is_python(argv[0]):
        names = [argv[0]]
    else:
        exe = _which(argv[0], environ, cwd) if argv else None
        named = _shebang_python(exe) if exe else None
        names = [named] if named else ["python3", "python"]
    for name in names:
        found = _which(name, environ, cwd)
        if found:
            return found
    raise CaptureError(f"--env: {' or '.join(names)} not found on PATH; use --env none to submit "
                       "without capturing the environment")


# ---------------------------------------------------------------- installed distributions


def installed(sys_path: list[str], git_root: str = "") -> list[dict[str, Any]]:
    """The distributions in the ``site-packages``/``dist-packages`` entries of ``sys_path``,
    first one of a name wins (as for imports); sorted by name. O(distributions)."""
    out: dict[str, dict[str, Any]] = {}
    for site in sys_path:
        if os.path.basename(site) not in ("site-packages", "dist-packages"):
            continue
        try:
            names = sorted(os.listdir(site))
        except OSError:
            continue
        pth_dirs: list[str] | None = None
        for name in names:
            if name.endswith(".dist-info"):
                pkg = _dist_info(os.path.join(site, name))
            elif name.endswith(".egg-info"):
                pkg = _egg_info(os.path.join(site, name))
            elif name.endswith(".egg-link"):
                pkg = _egg_link(os.path.join(site, name))
            else:
                continue
            if pkg is None:
                continue
            key = pkg["name"].lower().replace("_", "-").replace(".", "-")
            if key in out or key in _SKIP:
                continue
            editable = os.path.realpath(pkg["editable"]) if pkg.get("editable") else ""
            if editable and git_root and _inside(editable, git_root):
                if pth_dirs is None:
                    pth_dirs = [os.path.realpath(d) for d in _pth_dirs(site, names)]
                pkg["repo_path"] = _rel(editable, git_root) or "."
                pkg["pth"] = sorted({_rel(d, git_root) or "." for d in pth_dirs if _inside(d, editable)})
            out[key] = pkg
    return [out[k] for k in sorted(out)]


def _headers(path: str) -> dict[str, str]:
    """Name and Version from an RFC 822 metadata file (only its first lines are read)."""
    found: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep and key in ("Name", "Version"):
                    found[key] = value.strip()
                    if len(found) == 2:
                        break
    except OSError:
        pass
    return found


def _dist_info(path: str) -> dict[str, Any] | None:
    meta = _headers(os.path.join(path, "METADATA"))
    if "Name" not in meta:
        return None
    pkg: dict[str, Any] = {"name": meta["Name"], "version": meta.get("Version", "")}
    try:
        with open(os.path.join(path, "direct_url.json"), encoding="utf-8") as f:
            raw = f.read()
    except OSError:
        return pkg
    import json

    try:
        direct = json.loads(raw)
        url = str(direct["url"])
    except (ValueError, KeyError, TypeError):
        return pkg
    if isinstance(direct.get("dir_info"), dict) and direct["dir_info"].get("editable"):
        pkg["editable"] = _file_path(url)
    elif isinstance(direct.get("vcs_info"), dict):
        vcs = direct["vcs_info"]
        pkg["url"] = f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id') or vcs.get('requested_revision', '')}"
        if direct.get("subdirectory"):
            pkg["url"] += f"#subdirectory={direct['subdirectory']}"
    else:
        pkg["url"] = url
    return pkg


def _egg_info(path: str) -> dict[str, Any] | None:
    meta = _headers(os.path.join(path, "PKG-INFO") if os.path.isdir(path) else path)
    return {"name": meta["Name"], "version": meta.get("Version", "")} if "Name" in meta else None


def _egg_link(path: str) -> dict[str, Any] | None:
    """A legacy ``setup.py develop`` install: the file's first line is the project path."""
    try:
        with open(path, encoding="utf-8") as f:
            target = f.readline().strip()
    except OSError:
        return None
    name = os.path.basename(path)[: -len(".egg-link")]
    return {"name": name, "version": "", "editable": target} if target else None


def _pth_dirs(site: str, names: list[str]) -> list[str]:
    """Directories that the ``.pth`` files of ``site`` put on sys.path (import lines skipped)."""
    dirs = []
    for name in names:
        if not name.endswith(".pth"):
            continue
        try:
            with open(os.path.join(site, name), encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                dirs.append(os.path.normpath(os.path.join(site, line)))
    return dirs


def _file_path(url: str) -> str:
    if not url.startswith("file://"):
        return url
    path = url[len("file://"):]
    if "%" in path:
        from urllib.parse import unquote

        path = unquote(path)
    return path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _rel(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return "" if rel == "." else rel


# ---------------------------------------------------------------- requirements files


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CaptureError(f"--env {what}: {e.strerror}") from None


def _requirements_txt(path: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """The lines of a requirements file, comments and blanks dropped, ``-r``/``-c`` inlined."""
    if path in seen:
        raise CaptureError(f"--env {path}: includes itself")
    lines: list[str] = []
    text = _read(path, path).replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        opt, _, rest = line.partition(" ")
        if opt in ("-r", "--requirement", "-c", "--constraint") and rest.strip():
            inner = os.path.join(os.path.dirname(path), rest.strip())
            lines += _requirements_txt(os.path.normpath(inner), seen | {path})
            continue
        lines.append(line)
    return lines


def _pyproject(path: str) -> list[str]:
    import tomllib

    try:
        data = tomllib.loads(_read(path, path))
    except tomllib.TOMLDecodeError as e:
        raise CaptureError(f"--env {path}: {e}") from None
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise CaptureError(f"--env {path}: no [project] dependencies list")
    return list(deps)


def _uv_lock(path: str) -> list[str]:
    """The locked packages for this platform, as ``uv export`` writes them (markers kept)."""
    import subprocess

    argv = ["uv", "export", "--frozen", "--no-hashes", "--no-header", "--no-annotate", "--no-emit-project",
            "--format", "requirements-txt"]
    try:
        done = subprocess.run(argv, cwd=os.path.dirname(path), capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise CaptureError(f"--env {path}: uv is not on PATH (the lock is read with uv export)") from None
    if done.returncode != 0:
        raise CaptureError(f"--env {path}: uv export failed: {done.stderr.strip()[-300:]}")
    return [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# ---------------------------------------------------------------- git


def _run_git(args: list[str], cwd: str) -> subprocess.Popen[bytes]:
    import subprocess

    return subprocess.Popen(["git", *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _git(cwd: str, argv: list[str] | None, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The code part of the spec, or None outside a work tree (or without git)."""
    try:
        head = _run_git(["rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"], cwd)
    except FileNotFoundError:
        return None
    out, _ = head.communicate()
    lines = out.decode(errors="surrogateescape").splitlines()
    if head.returncode != 0:
        if lines and lines[0].startswith("/"):
            warn(f"{lines[0]} has no commit yet: the code is not captured (the job runs in the submit directory)")
        return None
    root, commit, branch = lines[0], lines[1], lines[2] if len(lines) > 2 else ""
    here = os.path.realpath(cwd)
    git: dict[str, Any] = {"root": root, "commit": commit, "cwd": _rel(here, root) if _inside(here, root) else ""}
    if branch and branch != "HEAD":
        git["branch"] = branch
    entry = ""
    index = entry_point(argv) if argv and is_python(argv[0]) else -1
    script = argv[index] if argv and index >= 0 else ""
    if script:
        path = os.path.realpath(os.path.join(here, script))
        if _inside(path, root):
            entry = _rel(path, root)
            git["entry_point"] = entry
            if os.path.isabs(script):
                git["entry_index"] = index
    remote = _run_git(["config", "--get", "remote.origin.url"], root)
    diff = _run_git(["-c", "core.quotepath=off", "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff",
                     "--no-textconv", "--no-relative", "--ignore-submodules=all", "--src-prefix=a/",
                     "--dst-prefix=b/"], root)
    tracked = _run_git(["ls-files", "--cached", "-z", "--", entry], root) if entry else None
    url = remote.communicate()[0].decode(errors="replace").strip()
    patch, err = diff.communicate()
    if diff.returncode != 0:
        raise CaptureError(f"--env: git diff failed: {err.decode(errors='replace').strip()[-300:]}")
    if url:
        git["remote"] = _without_credentials(url)
    if patch:
        if len(patch) > MAX_DIFF_BYTES:
            raise CaptureError(f"--env: the uncommitted diff is {len(patch) / 2**20:.1f} MB, over the "
                               f"{MAX_DIFF_BYTES >> 20} MB limit; commit it, or use --env none")
        try:
            git["diff"] = patch.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            git["diff"], git["diff_encoding"] = base64.b64encode(patch).decode("ascii"), "base64"
    if tracked is not None:
        listed = tracked.communicate()[0]
        if not listed and os.path.isfile(os.path.join(root, entry)):
            git["_untracked_entry"] = entry
    return git


#: the diff alone may take most of the spec's room (schedd.envspec.MAX_SPEC_BYTES)
MAX_DIFF_BYTES = 12 * 1024 * 1024


def _without_credentials(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: the URL is visible to every user.

    >>> _without_credentials("https://u:t@github.com/a/b.git"), _without_credentials("git@github.com:a/b.git")
    ('https://github.com/a/b.git', 'git@github.com:a/b.git')
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def _includes(paths: list[str], cwd: str, root: str) -> list[dict[str, Any]]:
    """``--env-include`` files (directories walked, .git skipped), refused past the size limit."""
    from schedd.envspec import MAX_INCLUDE_BYTES

    found: dict[str, tuple[str, int, int]] = {}  # rel -> (abs, size, mode)
    for given in paths:
        path = os.path.realpath(os.path.join(cwd, given))
        if not _inside(path, root):
            raise CaptureError(f"--env-include {given}: outside the repository {root}")
        if os.path.isdir(path):
            for top, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != ".git")
                for name in sorted(files):
                    _add_file(found, os.path.join(top, name), root)
        elif os.path.isfile(path):
            _add_file(found, path, root)
        else:
            raise CaptureError(f"--env-include {given}: no such file or directory")
    total = sum(size for _, size, _ in found.values())
    if total > MAX_INCLUDE_BYTES:
        big = sorted(found.items(), key=lambda kv: -kv[1][1])[:3]
        named = ", ".join(f"{rel} {size / 2**20:.1f} MB" for rel, (_, size, _) in big)
        raise CaptureError(f"--env-include: {total / 2**20:.1f} MB of files, over the {MAX_INCLUDE_BYTES >> 20} MB "
                           f"limit (largest: {named}); put large files on shared storage and read them from there")
    import base64

    out = []
    for rel, (path, _, mode) in sorted(found.items()):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CaptureError(f"--env-include {rel}: {e.strerror}") from None
        out.append({"path": rel, "mode": mode, "data": base64.b64encode(data).decode("ascii")})
    return out


def _add_file(found: dict[str, tuple[str, int, int]], path: str, root: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    if not os.path.isfile(path):
        return
    found[_rel(path, root)] = (path, st.st_size, st.st_mode & 0o777)


def _check_size(spec: dict[str, Any]) -> None:
    from schedd.envspec import MAX_SPEC_BYTES, canonical

    size = len(canonical(spec))
    if size > MAX_SPEC_BYTES:
        raise CaptureError(f"--env: the environment is {size / 2**20:.1f} MB, over the {MAX_SPEC_BYTES >> 20} MB "
                           "limit (uncommitted diff plus --env-include files); commit, or include less")
