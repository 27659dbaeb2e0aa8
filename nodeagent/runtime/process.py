"""Start one job rank's process: who it runs as, its scratch, its output files.

Called by the supervisor once. Everything that can go wrong here is a
:class:`LaunchFailed` whose message becomes the ``comment`` of an Exited with
status EXIT_LAUNCH_FAILED — precise enough for a user to fix their job
("workdir /x does not exist", "cannot execute foo: No such file or directory").

User switching happens only when the supervisor is root and the job belongs to
someone else. Then everything done *for* the job is done with that user's ids,
never root's, because root may go where the user may not:

* its workdir is checked, and entered, as the user: the supervisor takes the
  user's effective ids (:func:`_effective`) around the ``Popen``, whose child
  changes directory with them and then sets its real, effective and saved ids
  to the user's (allowed without privilege, since the effective ones already
  are) — ``Popen(cwd=..., user=...)`` alone would enter it as root;
* its output files are opened with the user's effective ids (root never follows
  a user's symlink to overwrite a file), and whether a ``-o``/``-e`` path is a
  directory (PBS's default name then goes inside it) is asked the same way;
* its environment (checkout, venv build) is prepared by a child that has become
  the user (:mod:`nodeagent.asowner`);
* its scratch is chowned to it and placed where that user can reach it (see
  :func:`nodeagent.jobdir.scratch_dir`).
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import errno
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nodeagent import proctree
from nodeagent.runtime import containerize
from nodeagent.jobdir import SupervisorSpec, scratch_dir
from nodeagent.jobenv import HELPERS, job_environment
from schedd.protocol import LaunchSpec

if TYPE_CHECKING:  # imported when a job has an environment spec: bare jobs start without it
    from nodeagent.env import pack as envpack

__all__ = ["JobUser", "LaunchFailed", "Leader", "Spawned", "StartCancelled", "adopt_container", "job_user",
           "remove_scratch", "spawn_job"]


#: How entering a directory fails (rather than executing the program).
_NO_DIR = (errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class LaunchFailed(Exception):
    """The job could not be started; the message is the Exited comment."""


class StartCancelled(Exception):
    """The job was killed before it started (while its environment was prepared)."""


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    shell: str


class Leader(Protocol):
    """The job's top process as the supervisor follows it: a Popen, or a forked runner."""

    pid: int
    returncode: int | None


@dataclass
class Spawned:
    proc: Leader
    argv: list[str]
    scratch: Path
    venv: envpack.Venv | None = None  # held (shared lock) until the supervisor exits
    env_note: str = ""  # how the environment was had, for the supervisor's log
    #: the top process's create time when its fork tells it (:func:`nodeagent.proctree.created_between`)
    created: float | None = None


def job_user(name: str, allowed: bool) -> JobUser | None:
    """Who to run as: ``name`` when we are root and it is someone else, else None (ourselves).

    Not root (a developer's machine, a pod running as one user): the job runs
    as the supervisor's own user, whatever ``name`` says.
    """
    if os.geteuid() != 0 or not name or not allowed:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise LaunchFailed(f"no such user {name!r} on this node") from None
    if entry.pw_uid == 0:
        return None
    groups = os.getgrouplist(name, entry.pw_gid)
    return JobUser(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, entry.pw_shell)


def spawn_job(jobdir: Path, spec: SupervisorSpec, waiter: envpack.Waiter | None = None,
              announce: envpack.Announce | None = None,
              enter: Callable[[], contextlib.AbstractContextManager[object]] | None = None) -> Spawned:
    """Start the rank in its own session; raises LaunchFailed (leaving no scratch behind),
    or StartCancelled when ``waiter`` says the job was killed while its
    environment was being prepared. ``enter``: a context the job's process is
    forked in (the rank's cgroups: :meth:`nodeagent.cgroups.RankGroup.enter`)."""
    launch = spec.launch.spec
    workdir = Path(launch.workdir)
    if (launch.script is None) == (launch.argv is None) or launch.argv == []:
        raise LaunchFailed("the launch spec must have exactly one of script and a non-empty argv")
    user = job_user(launch.user, spec.switch_user)
    _check_workdir(workdir, user)
    image = spec.image()
    outputs: tuple[int, int] | None = None
    if launch.env_spec is None and not image:  # nothing to prepare: the files are opened once, here
        outputs = _open_outputs(launch, workdir, user, truncate=spec.launch.rank == 0)
    elif spec.launch.rank == 0:
        _start_outputs(launch, workdir, user)
    scratch = scratch_dir(jobdir, spec, user is not None)
    try:
        tmpdir, nodefile, script = _make_scratch(scratch, launch, user)
        metrics = _make_metrics(scratch, user)
        helpers = _container_helpers(scratch, user) if image else HELPERS
        argv = [launch.shell, script] if launch.script is not None else list(launch.argv or [])
        env = job_environment(
            spec.launch, tmpdir=tmpdir, nodefile=nodefile, cookie=spec.cookie,
            home=user.home if user else os.environ.get("HOME", ""), login_shell=user.shell if user else "",
            metrics=metrics, helpers=helpers,
        )
        cwd, venv, note = workdir, None, ""
        if launch.env_spec is not None:
            prepared, note = _prepare(spec, scratch, env, argv, user, (waiter, announce), workdir, image)
            cwd, env, venv = prepared.cwd or workdir, prepared.env, prepared.venv
            argv = prepared.argv if prepared.argv is not None else argv
            image = prepared.key if image else ""
        if outputs is None:
            outputs = _open_outputs(launch, workdir, user)
        out, err = outputs
        if image:  # the runner (ours, forked) talks to the engine; the container runs as the user
            from nodeagent.runtime.runner import fork_runner

            ids = (user.uid, user.gid, user.groups) if user else None
            note = f"{note}; in a container of {image}" if note else f"in a container of {image}"
            path = containerize.write_spec(jobdir, spec, image, argv, env, cwd, scratch, ids)
            return Spawned(fork_runner(path, out, err), ["nodeagent.runtime.runner", str(path)], scratch, venv, note)
        with enter() if enter is not None else contextlib.nullcontext():
            proc = _popen(argv, cwd, env, out, err, user)
    except BaseException:  # LaunchFailed, StartCancelled
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        if outputs is not None:
            _close_pair(outputs)
    return Spawned(proc, argv, scratch, venv, note, proc.created if isinstance(proc, _Child) else None)


def _close_pair(fds: tuple[int, int]) -> None:
    """Close an (out, err) pair from :func:`_open_outputs` (one descriptor when they are the same)."""
    out, err = fds
    os.close(out)
    if err != out:
        os.close(err)


def _popen(argv: list[str], cwd: Path, env: dict[str, str], out: int, err: int, user: JobUser | None) -> Leader:
    """The job's process, entering ``cwd`` as ``user`` (see the module docstring):
    the child inherits our effective ids and the user's groups, changes directory
    with them, then makes its real and saved ids the user's too."""
    with _effective(user):
        try:
            if _fork_exec is not None:
                return _spawn(argv, str(cwd), env, out, err, user)
            return subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True,
                user=user.uid if user else None, group=user.gid if user else None,
            )
        except OSError as exc:
            if str(exc.filename) == str(cwd) and exc.errno in _NO_DIR:  # chdir, not exec (a checkout's cwd; a race)
                who = f" for user {user.name}" if user else ""
                raise LaunchFailed(f"workdir {cwd}: {(exc.strerror or str(exc)).lower()}{who}") from None
            raise LaunchFailed(f"cannot execute {argv[0]}: {exc.strerror or exc}") from None


#: CPython's own fork-and-exec, which ``subprocess.Popen`` wraps; called directly
#: on the interpreter versions whose signature :func:`_spawn` knows (3.11), it
#: saves a rank a tenth of its supervision (Popen's object, handles and
#: per-variable environment encoding). Elsewhere: Popen.
_fork_exec = getattr(_posixsubprocess, "fork_exec", None) if sys.version_info[:2] == (3, 11) else None


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's


@dataclass
class _Child:
    """The job's top process as :func:`_spawn` started it (a :class:`Leader`)."""

    pid: int
    created: float | None  # its create time, when the clock readings around its fork tell it
    returncode: int | None = None


def _spawn(argv: list[str], cwd: str, env: dict[str, str], out: int, err: int, user: JobUser | None) -> _Child:
    """What ``Popen(argv, cwd=, env=, stdin=DEVNULL, stdout=out, stderr=err,
    start_new_session=True, close_fds=True, user=, group=)`` does, without its
    Python layer; raises the OSError Popen would (``filename`` the cwd when
    entering it failed, else the program)."""
    assert _fork_exec is not None
    if any("=" in key for key in env):
        raise OSError(errno.EINVAL, "illegal environment variable name", argv[0])
    env_list = [f"{key}={value}".encode(_FS_ENCODING, _FS_ERRORS) for key, value in env.items()]
    program = os.fsencode(argv[0])
    if os.path.dirname(program):
        programs: tuple[bytes, ...] = (program,)
    else:
        programs = tuple(os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env))
    report_r, report_w = os.pipe2(os.O_CLOEXEC)  # the child's exec error, or EOF once it executed
    stdin = -1
    try:
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        pid = _fork_exec(argv, programs, True, (report_w,), cwd, env_list,
                         stdin, -1, -1, out, -1, err, report_r, report_w,
                         True, True, -1, user.gid if user else None, None, user.uid if user else None,
                         -1, None, True)
        created = proctree.created_between(before, time.clock_gettime_ns(time.CLOCK_BOOTTIME))
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
        if stdin >= 0:
            os.close(stdin)
    try:
        report = b""
        while chunk := os.read(report_r, 50000):
            report += chunk
    finally:
        os.close(report_r)
    if not report:
        return _Child(pid, created)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    _name, _, rest = report.partition(b":")
    hex_errno, _, message = rest.partition(b":")
    code = int(hex_errno or b"0", 16)
    filename = cwd if message == b"noexec" else argv[0]
    raise OSError(code, os.strerror(code) if code else message.decode(errors="replace"), filename)


def _check_workdir(workdir: Path, user: JobUser | None) -> None:
    """The workdir as the job's owner sees it: a directory they may enter. Asked
    as root, a job could start in — and its failure tell about — a directory
    its owner cannot reach."""
    who = f" for user {user.name}" if user else ""
    with _effective(user):
        try:
            st = os.stat(workdir)
            enter = os.access(workdir, os.X_OK, effective_ids=True)
        except PermissionError:
            raise LaunchFailed(f"workdir {workdir}: permission denied{who}") from None
        except OSError:
            st, enter = None, False
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise LaunchFailed(f"workdir {workdir} does not exist or is not a directory")
    if not enter:
        raise LaunchFailed(f"workdir {workdir}: permission denied{who}")


def adopt_container(jobdir: Path, spec: SupervisorSpec) -> Spawned:
    """Follow the rank's container again (its runner died with the previous
    supervisor): a runner forked in adopt mode, appending to the output files
    from their last write on. Raises LaunchFailed when the files cannot be opened."""
    from nodeagent.runtime.runner import Adopt, fork_runner

    launch = spec.launch.spec
    workdir = Path(launch.workdir)
    user = job_user(launch.user, spec.switch_user)
    scratch = scratch_dir(jobdir, spec, user is not None)
    out, err = _open_outputs(launch, workdir, user)
    try:
        adopt = Adopt(os.fstat(out).st_size, os.fstat(err).st_size, joined=err == out)
        proc = fork_runner(jobdir / containerize.CONTAINER_SPEC, out, err, adopt)
    finally:
        _close_pair((out, err))
    return Spawned(proc, ["nodeagent.runtime.runner", "--adopt"], scratch, None,
                   f"re-attached to its container ({adopt.stdout_bytes} + {adopt.stderr_bytes} bytes of output kept)")


def _prepare(spec: SupervisorSpec, scratch: Path, env: dict[str, str], argv: list[str], user: JobUser | None,
             hooks: tuple[envpack.Waiter | None, envpack.Announce | None], workdir: Path,
             image: str) -> tuple[envpack.Prepared, str]:
    """The rebuilt environment (envpack.prepare, or prepare_image FROM ``image``
    for a container); a failure becomes LaunchFailed with the reason as the
    comment and the build log written to the job's stderr file."""
    from nodeagent.env import pack as envpack

    launch = spec.launch.spec
    started = time.monotonic()
    name = launch.env_hash[:12] or "spec"
    if not spec.env_cache:
        raise LaunchFailed(f"environment {name}: this node has no environment cache (nodeagent --env-cache)")
    try:
        cache = envpack.EnvCache(Path(spec.env_cache), max_mb=spec.env_cache_mb, installer=spec.env_installer)
        owner = envpack.Owner(user.name, user.uid, user.gid, tuple(user.groups), user.home) if user else None
        job_argv = argv if launch.argv is not None else None
        if image:
            from nodeagent.runtime import engine

            try:
                api = engine.client(spec.docker_host).api
            except engine.EngineError as exc:
                raise envpack.EnvError(str(exc)) from None
            prepared = envpack.prepare_image(launch, scratch / "src", env, cache, api, image,
                                             argv=job_argv, waiter=hooks[0], owner=owner, announce=hooks[1])
        else:
            prepared = envpack.prepare(launch, scratch / "src", env, cache, argv=job_argv, waiter=hooks[0],
                                       owner=owner, announce=hooks[1])
    except envpack.Cancelled as exc:
        raise StartCancelled(str(exc)) from None
    except (envpack.EnvError, ValueError) as exc:
        log = getattr(exc, "log", "")
        _write_stderr(launch, workdir, user,
                      f"schedd: the job's environment {name} could not be rebuilt: {exc}\n" + (log and f"{log}\n"))
        raise LaunchFailed(f"environment {name}: {exc}") from None
    how = "built" if prepared.built else "cache hit"
    what = "image" if image else "venv"
    note = (f"environment {name}: {what} {prepared.key} {how} in {prepared.seconds:.3f} s, "
            f"prepared in {time.monotonic() - started:.3f} s")
    return prepared, note


def _write_stderr(launch: LaunchSpec, workdir: Path, user: JobUser | None, text: str) -> None:
    """What the job's stderr file holds when it never ran: why (best effort)."""
    try:
        out, err = _open_outputs(launch, workdir, user)
    except LaunchFailed:
        return
    try:
        os.write(err, text.encode(errors="replace"))
    except OSError:
        pass
    finally:
        _close_pair((out, err))


def _make_scratch(scratch: Path, launch: LaunchSpec, user: JobUser | None) -> tuple[str, str, str]:
    """The rank's private dir: ``tmp/`` (TMPDIR), ``nodefile`` (PBS_NODEFILE), ``script``.
    By string paths and descriptors: this runs for every rank."""
    root = str(scratch)
    tmpdir, nodefile, script = f"{root}/tmp", f"{root}/nodefile", f"{root}/script"
    ids = (user.uid, user.gid) if user is not None else None
    try:
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:  # a scratch root not made yet
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(tmpdir, 0o700)
        _write_file(nodefile, "".join(f"{n}\n" for n in launch.nodes), None, ids)
        if launch.script is not None:
            _write_file(script, launch.script, 0o700, ids)
        if ids is not None:  # last: until the owner has the directory, no one else can put a link in it
            os.chown(tmpdir, *ids, follow_symlinks=False)
            os.chown(root, *ids)
    except OSError as exc:
        raise LaunchFailed(f"cannot create scratch dir {scratch}: {exc.strerror or exc}") from None
    return tmpdir, nodefile, script


def _write_file(path: str, text: str, mode: int | None, ids: tuple[int, int] | None) -> None:
    """``path`` holding ``text`` (created as ``open`` would, then given ``mode``), owned by ``ids``;
    a link there is refused, never followed (root writes it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    try:
        os.write(fd, text.encode())
        if mode is not None:
            os.fchmod(fd, mode)
        if ids is not None:
            os.fchown(fd, *ids)
    finally:
        os.close(fd)


def remove_scratch(scratch: Path) -> None:
    """Remove the rank's scratch: what :func:`_make_scratch` made, by name, when the
    job left nothing else in it (the common case, a few calls); else the tree walk.
    Names are taken relative to the directory opened without following a link: the
    owner may have put one in its place (shutil.rmtree refuses one at the top too)."""
    root = str(scratch)
    try:
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:  # a link, or not ours to read: the walk decides
        shutil.rmtree(scratch, ignore_errors=True)
        return
    try:
        for name in ("nodefile", "script"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir("tmp", dir_fd=dfd)
        os.rmdir(root)
    except FileNotFoundError:
        pass
    except OSError:  # not empty (the job's files, a checkout): the walk
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(dfd)


def _make_metrics(scratch: Path, user: JobUser | None) -> str:
    """The rank's SCHEDD_METRICS file, empty and the owner's (the agent follows it:
    nodeagent.metrics). In the scratch, which a container has at the same path."""
    from nodeagent.metrics import METRICS_FILE

    path = f"{scratch}/{METRICS_FILE}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if user is not None:
            os.fchown(fd, user.uid, user.gid)
        os.close(fd)
    except OSError as exc:
        raise LaunchFailed(f"cannot create {path}: {exc.strerror or exc}") from None
    return path


def _container_helpers(scratch: Path, user: JobUser | None) -> str:
    """The helpers' directory for a container rank: a copy in its scratch."""
    try:
        return containerize.copy_helpers(scratch, (user.uid, user.gid) if user else None)
    except OSError as exc:
        raise LaunchFailed(f"cannot copy the job helpers into {scratch}: {exc.strerror or exc}") from None


def _start_outputs(launch: LaunchSpec, workdir: Path, user: JobUser | None) -> None:
    """Rank 0 starts the job's output afresh (truncates or creates ``.o``/``.e``),
    once per attempt and before anything else — a new attempt of a requeued job
    overwrites the last one's output, as PBS does when it reruns a job.

    Only rank 0 truncates, and the daemon launches a gang's other ranks only
    once rank 0 has said it started or is preparing (both come after this), so
    on a shared filesystem no rank ever erases what another has written: every
    rank then appends (O_APPEND) to the same files. A failure is left for the
    real open to report."""
    with contextlib.suppress(LaunchFailed):
        _close_pair(_open_outputs(launch, workdir, user, truncate=True))


def _open_outputs(launch: LaunchSpec, workdir: Path, user: JobUser | None, truncate: bool = False) -> tuple[int, int]:
    """stdout and stderr fds (the same one when the paths are equal), O_APPEND;
    truncated only when ``truncate`` (rank 0's :func:`_start_outputs`). A path
    that is a directory as the user sees it (``-o DIR``) gets PBS's default name
    inside it (``stdout_name``, from the daemon, which does not look itself)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
    opened: list[int] = []
    where = str(workdir)
    with _effective(user):
        try:
            paths = [_output_path(os.path.join(where, launch.stdout_path), launch.stdout_name),
                     _output_path(os.path.join(where, launch.stderr_path), launch.stderr_name)]
            for path in dict.fromkeys(paths):
                opened.append(os.open(path, flags, 0o644))
        except OSError as exc:
            for fd in opened:
                os.close(fd)
            raise LaunchFailed(f"cannot open output file {exc.filename}: {exc.strerror}") from None
    return opened[0], opened[-1]


def _output_path(path: str, name: str) -> str:
    """``path``, or ``path/name`` when ``name`` is given and ``path`` is a directory
    (asked with the caller's ids: the job owner's)."""
    return os.path.join(path, name) if name and os.path.isdir(path) else path


@contextlib.contextmanager
def _effective(user: JobUser | None) -> Iterator[None]:
    """Temporarily take the job user's effective ids (root only), for opening its files."""
    if user is None:
        yield
        return
    saved = os.getgroups()
    os.setgroups(user.groups)
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved)
