"""qsub: submit a batch script (a file, or stdin) or a command, as PBS does.

stdout carries the job id and nothing else (``17.server``, ``17[].server`` for
an array), so ``jid=$(qsub job.sh)`` works; ``-z`` prints nothing. Options come
from the command line and from the script's ``#PBS`` directives; the command
line wins. A bad value is refused here, before anything is sent, with PBS's
``qsub: illegal -X value`` line, a line saying exactly what is wrong, and exit 2;
a request the server refuses (unknown queue, never fits...) exits with PBS's
code for it. ``-W block=true`` waits and exits with the job's exit status.

Start-up time is part of the interface: stdlib only, imports deferred to where
they are used.
"""

import os
import sys

from schedd.cli import command
from schedd.cli.common import EXIT_OF, USAGE, UsageError, fail, help_parser, job_path, options, run, usage_error

TYPE_CHECKING = False  # mypy reads this as True; typing stays unimported at run time
if TYPE_CHECKING:
    import argparse
    from types import ModuleType, SimpleNamespace
    from typing import Any

    from schedd.cli.client import ApiError, Client
else:
    SimpleNamespace = type(sys.implementation)  # types.SimpleNamespace, without importing types.py

__all__ = ["CaptureFailed", "UsageError", "build_request", "environment", "main", "parse"]

CMD = "qsub"
USAGE_LINE = (
    "qsub [-a date_time] [-A account] [-C prefix] [-e path] [-h] [-j oe|eo|n] [-J X-Y[:Z][%max]]\n"
    "            [-l resource_list] [-N name] [-o path] [-p priority] [-P project] [-q queue]\n"
    "            [-r y|n] [-S shell] [-v variable_list] [-V] [-W attribute=value] [-z]\n"
    "            [--env auto|none|FILE] [--env-include path] [script | -- command [arg ...]]"
)
EPILOG = """\
examples:
  jid=$(qsub job.sh)                          submit a script; its #PBS lines are options too
  qsub -N train -q 1xgpu -l walltime=02:00:00 train.sh
  qsub -l select=2:ncpus=16:ngpus=8:mem=200gb dist.sh     two nodes, all or nothing
  qsub -J 1-100%10 sweep.sh                   an array: PBS_ARRAY_INDEX=1..100, 10 at a time
  qsub -W depend=afterok:$jid report.sh       start after $jid succeeded
  qsub -W block=true -- /bin/hostname         wait, exit with the job's exit status
  echo 'nvidia-smi' | qsub -l ngpus=1         the script from stdin (job name STDIN)
  qsub -l ngpus=1 -- python train.py          your venv's packages, git commit and uncommitted
                                              diff are captured and rebuilt (cached) on the node
  qsub --env requirements.txt -- python x.py  these packages instead of the installed ones
  qsub --env-include conf/local.yaml -- python train.py   also send an untracked file

  -l takes select=, walltime=, ncpus=, ngpus=, mem= (b/kb/mb/gb/tb), place=, signal=SIG@SECS, qos=,
  container=IMAGE (run in a docker container of IMAGE; nodes with a docker runtime).
  --env is auto for `-- python script.py` and `-- python -m module` jobs (python, python3,
  pythonX.Y or a path to one) and none otherwise; in a git work tree the job runs in a checkout
  of the commit plus the diff, in a venv rebuilt (and cached) on the node.
  Ignored with a warning: -m, -M (no mail), -k, -R. Not supported: -I, -X, -u, -c, -G.

exit codes: 0 submitted (the job id on stdout), 2 usage, 32 rejected by the site's submit hook
  (PBSE_HOOKERROR; its message on stderr), 159 not allowed (queue's users), 166 bad attribute
  value or never fits a node, 170 unknown queue, 186 cannot reach the server;
  -W block=true: the job's exit status (3 if it was deleted before it ran).
"""

_WARN_IGNORED = {"mail": "-m", "mail_users": "-M", "keep": "-k", "remove": "-R"}
_UNSUPPORTED = {"interactive": "-I", "x11": "-X", "user": "-u", "checkpoint": "-c", "gui": "-G"}
_W_UNSUPPORTED = ("sandbox", "stagein", "stageout", "umask", "group_list", "run_count", "release_nodes_on_stageout")
#: set by the node for each job: never carried over from the submit environment by -V
_JOB_OWN = ("RANK", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "SCHEDD_JOB_COOKIE")

#: getopt letters, as PBS's qsub; ':' takes a value
OPTS = "a:A:c:C:e:fGhIj:J:k:l:m:M:N:o:p:P:q:r:R:S:u:v:VW:Xz"
#: option letter -> attribute of the parsed options
DEST = {
    "a": "after", "A": "account", "c": "checkpoint", "C": "prefix", "e": "stderr", "f": "foreground", "G": "gui",
    "h": "hold", "I": "interactive", "j": "join", "J": "array", "k": "keep", "l": "resources", "m": "mail",
    "M": "mail_users", "N": "name", "o": "stdout", "p": "priority", "P": "project", "q": "queue",
    "r": "rerunnable", "R": "remove", "S": "shell", "u": "user", "v": "variables", "V": "all_env",
    "W": "attributes", "X": "x11", "z": "quiet",
}
_REPEATED = "lvW"  # these accumulate; other values: the last one wins
#: long options (getopt form) -> (attribute, repeatable)
LONG = {"env=": ("env", False), "env-include=": ("env_include", True)}


def build_parser() -> "argparse.ArgumentParser":
    """The ``--help`` text (parsing is getopt: :func:`schedd.cli.common.options`)."""
    return help_parser(CMD, f"usage: {USAGE_LINE}", "Submit a job. Prints its id (ID.SERVER) on stdout.", EPILOG, [
        ("-a", "[[[[CC]YY]MM]DD]hhmm[.SS]", "eligible from this local time on"),
        ("-A", "ACCOUNT", "account (fair-share is per account)"),
        ("-C", "PREFIX", "directive prefix (default #PBS, or $PBS_DPREFIX); '' turns directives off"),
        ("-e", "PATH", "stderr file (default NAME.eSEQ in this directory)"),
        ("-f", "", "accepted; qsub always runs in the foreground"),
        ("-h", "", "submit with a user hold (state H; qrls releases it)"),
        ("-j", "oe|eo|n", "join stderr into stdout (oe) or stdout into stderr (eo)"),
        ("-J", "X-Y[:Z][%max]", "array job: subjobs X..Y step Z, at most max running"),
        ("-l", "RESOURCES", "resources, e.g. select=1:ngpus=1 or walltime=01:00:00 (repeatable)"),
        ("-N", "NAME", "job name (default: the script's file name, or STDIN)"),
        ("-o", "PATH", "stdout file (default NAME.oSEQ in this directory)"),
        ("-p", "PRIORITY", "priority, -1024..1023 (default 0)"),
        ("-P", "PROJECT", "project: the account, when -A is not given"),
        ("-q", "DEST", "queue, queue@server or @server"),
        ("-r", "y|n", "may be requeued (default y)"),
        ("-S", "PATH", "the shell that runs the script (default /bin/bash)"),
        ("-v", "VAR[=value],...", "export these variables (repeatable)"),
        ("-V", "", "export the whole submit environment"),
        ("-W", "ATTR=VALUE", "depend=afterok:ID[:ID][,afterany:ID...] or block=true"),
        ("-z", "", "do not print the job id"),
        ("--env", "auto|none|FILE", "capture the environment: auto (default for python jobs), none, or "
                                    "a requirements *.txt, pyproject.toml or uv.lock"),
        ("--env-include", "PATH", "also send this untracked file or directory (repeatable, 10 MB in all)"),
    ], operands="")


def namespace(pairs: list[tuple[str, str]], into: SimpleNamespace | None = None) -> SimpleNamespace:
    """getopt's pairs as attributes (``DEST``); unset: None, False for switches, [] for lists."""
    if into is None:
        into = SimpleNamespace()
        for letter, dest in DEST.items():
            takes = OPTS[OPTS.index(letter) + 1:].startswith(":")
            setattr(into, dest, [] if letter in _REPEATED else (None if takes else False))
        for dest, repeated in LONG.values():
            setattr(into, dest, [] if repeated else None)
    for opt, value in pairs:
        long = LONG.get(opt[2:] + "=") if opt.startswith("--") else None
        if long is not None:
            if long[1]:
                getattr(into, long[0]).append(value)
            else:
                setattr(into, long[0], value)
            continue
        letter = opt[1:]
        dest = DEST[letter]
        if letter in _REPEATED:
            getattr(into, dest).append(value)
        else:
            setattr(into, dest, value if OPTS[OPTS.index(letter) + 1:].startswith(":") else True)
    return into


def merge(cli: SimpleNamespace, directives: SimpleNamespace) -> SimpleNamespace:
    """The command line wins: lists are concatenated (directives first, so a later
    ``-l walltime=`` replaces an earlier one), flags are or-ed, values replaced."""
    out = cli
    for key, value in vars(directives).items():
        mine = getattr(cli, key, None)
        if isinstance(value, list):
            setattr(out, key, value + (mine or []))
        elif mine is None or mine is False:
            setattr(out, key, value)
    return out


def _cwd() -> str:
    """The submit directory, keeping symlinks as the shell shows them ($PWD)."""
    cwd = os.getcwd()
    pwd_env = os.environ.get("PWD")
    if pwd_env and os.path.isabs(pwd_env):
        try:
            if os.path.samefile(pwd_env, cwd):
                return pwd_env
        except OSError:
            pass
    return cwd


def _path(value: str, cwd: str) -> str:
    """``[host:]path``, relative to the submit directory; an empty one is refused
    (it would silently mean the submit directory itself).

    >>> _path("out/x.log", "/home/u")
    '/home/u/out/x.log'
    >>> _path("", "/home/u")
    Traceback (most recent call last):
    ...
    ValueError: '': expected a file or directory path
    """
    if not value.strip() or "\0" in value:
        raise ValueError(f"{value!r}: expected a file or directory path")
    host, colon, rest = value.partition(":")
    if colon and host and "/" not in host and rest:
        value = rest  # PBS allows host:path; the files are written where the job runs
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))


def _submit_env(args: SimpleNamespace, cwd: str) -> dict[str, str]:
    """-V environment, then the PBS_O_* variables, then -v."""
    environ = dict(os.environ)
    env: dict[str, str] = {}
    if args.all_env:
        env = {k: v for k, v in environ.items() if not k.startswith(("PBS_", "SLURM_")) and k not in _JOB_OWN}
    for var, src in (("HOME", "HOME"), ("LANG", "LANG"), ("PATH", "PATH"), ("SHELL", "SHELL"), ("TZ", "TZ"),
                     ("MAIL", "MAIL")):
        if src in environ:
            env[f"PBS_O_{var}"] = environ[src]
    logname = environ.get("LOGNAME") or environ.get("USER")
    if not logname:
        import pwd

        try:
            logname = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            logname = str(os.getuid())
    uname = os.uname()  # nodename is gethostname() without importing socket.py
    env.update(PBS_O_LOGNAME=logname, PBS_O_HOST=uname.nodename, PBS_O_SYSTEM=uname.sysname, PBS_O_WORKDIR=cwd)
    if args.queue_name:
        env["PBS_O_QUEUE"] = args.queue_name
    for text in args.variables or ():
        from schedd.cli.resources import parse_vars

        try:
            env.update(parse_vars(text, environ))
        except ValueError as e:
            raise UsageError(str(e), "-v") from None
    return env


def _check(option: str, fn: "Any", *values: "Any") -> "Any":
    try:
        return fn(*values)
    except ValueError as e:
        raise UsageError(str(e), option) from None


def _res() -> "ModuleType":
    """:mod:`schedd.cli.resources`, imported when a value needs one of its parsers
    (``qsub job.sh`` of a script without -l needs none)."""
    from schedd.cli import resources

    return resources


def build_request(args: SimpleNamespace, cwd: str, now: float) -> "tuple[dict[str, Any], bool]":
    """The POST /api/v1/jobs body for merged options, and whether to block."""
    body: dict[str, Any] = {"workdir": cwd}
    for dest, flag in _UNSUPPORTED.items():
        if getattr(args, dest) not in (None, False):
            what = "interactive jobs" if flag in ("-I", "-X", "-G") else "this option"
            raise UsageError(f"{flag}: schedd does not support {what}")
    for dest, flag in _WARN_IGNORED.items():
        if getattr(args, dest, None) is not None:
            print(f"{CMD}: warning: {flag} is ignored (schedd sends no mail and keeps no files on nodes)",
                  file=sys.stderr)
    body["name"] = args.default_name if args.name is None else _check("-N", job_name, args.name)
    if args.queue_name:
        body["queue"] = args.queue_name
    account = args.account or args.project
    if args.account and args.project and args.account != args.project:
        raise UsageError("-A and -P: schedd has one account per job; give one of them")
    if account:
        body["account"] = account
    resources: dict[str, str] = {}
    for text in args.resources or ():
        resources.update(_check("-l", _res().parse_l, text))
    if resources:
        body.update(_check("-l", _res().resolve, resources))
    block = False
    for text in args.attributes or ():
        for key, value in _check("-W", _res().parse_w, text):
            if key == "depend":
                body["depend"] = _check("-W", _res().parse_depend, value)
            elif key == "block":
                if value.lower() not in ("true", "false"):
                    raise UsageError(f"block={value}: expected block=true or block=false", "-W")
                block = value.lower() == "true"
            elif key in _W_UNSUPPORTED:
                raise UsageError(f"{key}: not supported by schedd (jobs read and write shared storage in place)", "-W")
            else:
                raise UsageError(f"{key}: unknown attribute; schedd knows depend= and block=", "-W")
    if args.after is not None:
        body["eligible_time"] = _check("-a", _res().parse_after, args.after, now)
    if args.array is not None:
        body["array"] = _check("-J", _res().parse_array, args.array)
    if args.priority is not None:
        body["priority"] = _check("-p", priority, args.priority)
    if args.join is not None:
        if args.join not in ("oe", "eo", "n"):
            raise UsageError(f"{args.join!r}: expected oe, eo or n", "-j")
        body["join"] = args.join
    if args.rerunnable is not None:
        if args.rerunnable not in ("y", "n"):
            raise UsageError(f"{args.rerunnable!r}: expected y or n", "-r")
        body["rerunnable"] = args.rerunnable == "y"
    if args.shell is not None:
        shell = args.shell.split(",", 1)[0].split("@", 1)[0]
        if not os.path.isabs(shell):
            raise UsageError(f"{args.shell!r}: expected an absolute path, e.g. /bin/bash", "-S")
        body["shell"] = shell
    if args.stdout is not None:
        body["stdout_path"] = _check("-o", _path, args.stdout, cwd)
    if args.stderr is not None:
        body["stderr_path"] = _check("-e", _path, args.stderr, cwd)
    if args.hold:
        body["hold"] = True
    body["env"] = _submit_env(args, cwd)
    return body, block


def priority(text: str) -> int:
    """PBS's -p: an integer from -1024 to 1023."""
    try:
        value = int(text) if text.strip().isascii() else None
    except ValueError:
        value = None
    if value is None or not -1024 <= value <= 1023:
        raise ValueError(f"{text!r}: expected an integer from -1024 to 1023")
    return value


def job_name(text: str) -> str:
    """PBS's -N: printable, no white space (and no '/': it names the output files)."""
    if not text or len(text) > 236 or any(c.isspace() or c == "/" or not c.isprintable() for c in text):
        raise ValueError(f"{text!r}: up to 236 printable characters, no white space or '/'")
    return text


def queue_of(dest: str | None) -> str | None:
    """``-q queue``, ``queue@server`` or ``@server`` -> the queue name (None = default)."""
    if dest is None:
        return None
    queue, _, server = dest.partition("@")
    ok = all(c.isalnum() or c in "_.-" for c in queue + server)
    if not ok or not (queue or server):
        raise UsageError(f"illegally formed destination: {dest}")
    return queue or None


def _fill_chunks(client: "Client", body: "dict[str, Any]") -> None:
    """Resources a chunk does not name come from the queue's default chunk, as PBS's default_chunk."""
    chunks = body.get("chunks")
    if not chunks or all(v is not None for c in chunks for v in c.values()):
        return
    answer = client.call("GET", "/api/v1/queues")
    queue = answer.get("queues", {}).get(body.get("queue") or answer.get("default"), {})
    default = {"ncpus": 1, "mem_mb": 0, "ngpus": 0} | (queue.get("settings", {}).get("default_chunk") or {})
    for c in chunks:
        for key in ("ncpus", "mem_mb", "ngpus"):
            if c[key] is None:
                c[key] = default.get(key, 0)


def _read_script(operands: list[str]) -> tuple[str, str]:
    """(script text, default job name); stdin when no script is named."""
    if operands:
        path = operands[0]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            raise UsageError(f"script file {path}: not a text file") from None
        except OSError as e:
            raise UsageError(f"script file {path}: {e.strerror}") from None
        name = os.path.basename(path)
    else:
        text, name = sys.stdin.read(), "STDIN"
    if not text.strip():
        raise UsageError("script file is empty")
    return text, name


def parse(argv: list[str], environ: dict[str, str]) -> "tuple[SimpleNamespace, dict[str, Any]]":
    """Command line + directives -> (merged options, the script or argv part of the body).

    Raises UsageError; ``--help`` prints the help and raises SystemExit(0).
    """
    from schedd.cli.directives import prefix_of, scan

    exe: list[str] | None = None
    if "--" in argv:
        i = argv.index("--")
        argv, exe = argv[:i], argv[i + 1:]
        if not exe:
            raise UsageError("-- must be followed by a command")
    pairs, operands = options(argv, OPTS, tuple(LONG))
    if ("--help", "") in pairs:
        build_parser().print_help()
        raise SystemExit(0)
    args = namespace(pairs)
    if exe is not None and operands:
        raise UsageError("give a script or -- command, not both")
    if len(operands) > 1:
        raise UsageError(f"unexpected arguments after the script: {' '.join(operands[1:])}")
    if exe is not None:
        part: dict[str, Any] = {"argv": exe}
        args.default_name = "STDIN"
    else:
        text, args.default_name = _read_script(operands)
        part = {"script": text}
        found = namespace([])
        try:
            directives = scan(text, prefix_of(args.prefix, environ))
        except ValueError as e:
            raise UsageError(f"directive error: {e}") from None
        for d in directives:
            try:
                pairs, rest = options(d.words, OPTS, tuple(LONG))
            except UsageError as e:
                raise UsageError(f"directive error: line {d.line}: {d.text}: {e}") from None
            if rest or ("--help", "") in pairs:
                extra = " ".join(rest) or "--help"
                raise UsageError(f"directive error: line {d.line}: {d.text}: unexpected {extra}")
            namespace(pairs, found)
        args = merge(args, found)
    args.queue_name = queue_of(args.queue)
    return args, part


def _exit_status(job: "dict[str, Any]") -> int:
    """PBS: the job's exit status (the shell sees its low 8 bits); 3 if it was deleted before it ran."""
    status = job.get("exit_status")
    if status is None or (job.get("finish_reason") == "cancelled" and job.get("start_time") is None):
        return 3
    return int(status) & 0xFF


def _block(client: "Client", job_id: str) -> int:
    """Wait for the job to finish: the server's long poll, else GET with a backoff."""
    import time

    from schedd.cli.client import ApiError

    long_poll, delay = True, 0.05
    while True:
        if long_poll:
            try:
                job = client.call("GET", job_path(job_id, "/wait?timeout_s=30"))["job"]
            except ApiError as e:
                # 503: the server has as many long polls waiting as it takes ([http] max_waiters)
                if e.status not in (404, 405, 503) or e.code == "unknown_job":
                    raise
                long_poll = False
                continue
        else:
            job = client.call("GET", job_path(job_id))["job"]
        if job.get("state") == "finished":
            return _exit_status(job)
        if not long_poll:
            time.sleep(delay)  # polling fallback against an older server
            delay = min(delay * 1.5, 2.0)


def _server_error(e: "ApiError") -> int:
    message = e.message
    if e.code == "unknown_queue" and message.startswith("unknown queue"):
        message = "U" + message[1:]  # PBS: "qsub: Unknown queue"
    return fail(CMD, message, EXIT_OF.get(e.code, USAGE))


class CaptureFailed(UsageError):
    """The environment could not be captured: the message alone, exit 2 (no usage text)."""


def environment(args: SimpleNamespace, part: "dict[str, Any]", cwd: str,
                environ: dict[str, str]) -> "dict[str, Any] | None":
    """``--env``: the captured environment spec, or None when none is captured.

    Auto for ``-- python script.py`` and ``-- python -m module`` jobs, off for the
    rest (``python -c``, scripts, other commands) unless ``--env`` asks.
    Raises UsageError for a bad option, CaptureFailed when capturing fails.
    """
    argv = part.get("argv")
    mode = args.env
    if mode is None and not args.env_include and not (argv and argv[0].rsplit("/", 1)[-1].startswith("python")):
        return None  # the common case, decided without importing the capture (see captures_by_default)
    from schedd.cli.envcapture import CaptureError, captures_by_default, mode_of

    try:
        explicit = mode_of(mode) if mode is not None else None
    except CaptureError as e:
        raise UsageError(str(e), "--env") from None
    if explicit is None:
        mode = "auto" if captures_by_default(argv) else "none"
    if mode == "none":
        if args.env_include:
            why = "--env none" if explicit else "only `python script.py` jobs capture it by default: add --env auto"
            raise UsageError(f"the environment is not captured ({why})", "--env-include")
        return None
    from schedd.cli.envcapture import capture

    def warn(text: str) -> None:
        print(f"{CMD}: warning: {text}", file=sys.stderr)

    try:
        return capture(mode, argv, cwd, list(args.env_include), environ, warn)
    except CaptureError as e:
        raise CaptureFailed(str(e)) from None


@command
def main(argv: list[str]) -> int:
    """Submit as the command line says."""
    try:
        import time

        environ = dict(os.environ)
        args, part = parse(argv, environ)
        cwd = _cwd()
        body, block = build_request(args, cwd, time.time())
        body.update(part)
        spec = environment(args, part, cwd, environ)
        if spec is not None:
            from schedd.envspec import spec_hash

            body["env_spec"], body["env_hash"] = spec, spec_hash(spec)
    except CaptureFailed as e:
        return fail(CMD, str(e), USAGE)
    except UsageError as e:
        return usage_error(CMD, e, f"usage: {USAGE_LINE}")
    except OSError as e:
        return fail(CMD, str(e), USAGE)

    def submit(client: "Client") -> int:
        from schedd.cli.client import ApiError

        try:
            _fill_chunks(client, body)
            answer = client.call("POST", "/api/v1/jobs", body)
        except ApiError as e:
            return _server_error(e)
        if not args.quiet:
            print(answer["id"], flush=True)
        if not block:
            return 0
        try:
            return _block(client, answer["job"]["id"])
        except ApiError as e:
            if e.code == "unknown_job":
                return fail(CMD, f"job {answer['id']} was deleted", 3)
            raise

    return run(CMD, submit)


if __name__ == "__main__":
    sys.exit(main())
