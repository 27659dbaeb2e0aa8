"""What every PBS command shares: exit codes, job id operands, error lines.

Stdlib only, imported by every command: keep it small. Exit codes are PBS's
(``pbs_errno & 0xFF``, see ../shared/reference section 1.7); the REST API's
error codes map onto them in :data:`EXIT_OF`.
"""

import sys

from schedd.cli.client import ApiError, Client, Unreachable

TYPE_CHECKING = False  # mypy reads this as True; argparse is imported only where a parser is built
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = [
    "EXIT_OF",
    "BAD_ID",
    "FINISHED",
    "HOOK_REJECTED",
    "OK",
    "PERMISSION",
    "SYSTEM",
    "UNKNOWN_JOB",
    "UNKNOWN_QUEUE",
    "UNREACHABLE",
    "USAGE",
    "WRONG_STATE",
    "JobOperand",
    "UsageError",
    "fail",
    "for_each_job",
    "help_formatter",
    "help_parser",
    "job_message",
    "job_path",
    "options",
    "parse_job_id",
    "run",
    "shown_id",
    "usage_error",
]

OK = 0
BAD_ID = 1  # illegally formed job identifier
USAGE = 2
FINISHED = 35  # PBSE_HISTJOBID: finished job without -x
BAD_ATTR = 166  # PBSE_BADATVAL
UNKNOWN_JOB = 153  # PBSE_UNKJOBID
PERMISSION = 159  # PBSE_PERM
WRONG_STATE = 168  # PBSE_BADSTATE
UNKNOWN_QUEUE = 170  # PBSE_UNKQUE
UNREACHABLE = 186  # PBSE_NOSERVER
HOOK_REJECTED = 32  # PBSE_HOOKERROR 15136: a site hook (queuejob/modifyjob) rejected the request
SYSTEM = 162  # PBSE_SYSTEM 15010: the server could not save the request (its state store is full)

#: REST error code -> PBS exit code.
EXIT_OF = {
    "unknown_job": UNKNOWN_JOB,
    "job_finished": FINISHED,
    "wrong_state": WRONG_STATE,
    "unknown_queue": UNKNOWN_QUEUE,
    "permission_denied": PERMISSION,
    "unauthenticated": PERMISSION,
    "never_fits": BAD_ATTR,
    "bad_request": BAD_ATTR,
    "hook_rejected": HOOK_REJECTED,
    "store_full": SYSTEM,
    "unavailable": SYSTEM,
}

#: What a server name (``17.NAME``, ``17@NAME``) is made of.
_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class JobOperand:
    """A job id operand: ``17``, ``17.srv``, ``17[]``, ``17[3]``, ``17[2-5]``.

    ``target`` is what the server is asked about: a range too is one request,
    which the server answers for the subjobs that exist (never one request
    per index: ``17[1-3000000]`` would be three million).

    >>> [j.target for j in map(parse_job_id, ["17.srv", "17[]", "17[3]", "17[2-4].srv"])]
    ['17', '17[]', '17[3]', '17[2-4]']
    """

    def __init__(self, text: str, number: str, bracket: str | None, first: str | None, last: str | None) -> None:
        self.text, self.number, self.bracket, self.first, self.last = text, number, bracket, first, last

    @property
    def target(self) -> str:
        return self.number + (self.bracket or "")

    @property
    def is_range(self) -> bool:
        return self.last is not None


def parse_job_id(text: str) -> JobOperand:
    """Parse an operand; raises ValueError (the command prints PBS's message, exit 1).

    ``NUMBER[[FIRST[-LAST]]][.SERVER][@SERVER]``: up to 18 digits, an index of
    up to 9 (or none: the array) or a range, server names of letters, digits
    and ``_.-``. Read by hand, not with ``re``: ``re`` (with ``enum``) costs a
    per-job command (qdel, qhold...) a third of the interpreter's start-up.
    tests/cli/test_job_ids.py holds this to the regular expression it replaces.
    """
    parsed = _job_id(text.strip())
    if parsed is None or (parsed[3] is not None and (not parsed[2] or int(parsed[3]) < int(parsed[2]))):
        raise ValueError(f"illegally formed job identifier: {text}")
    return JobOperand(text, *parsed)


def _job_id(s: str) -> tuple[str, str | None, str | None, str | None] | None:
    """(number, bracket, first, last) of a job id, or None if it is not one."""
    n = 0
    while n < len(s) and s[n].isdecimal():
        n += 1
    if not 1 <= n <= 18:
        return None
    number, rest = s[:n], s[n:]
    bracket = first = last = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None
        bracket, rest = rest[:end + 1], rest[end + 1:]
        first, dash, to = bracket[1:-1].partition("-")
        if len(first) > 9 or not (first == "" or first.isdecimal()):
            return None
        if dash:
            if not (1 <= len(to) <= 9 and to.isdecimal()):
                return None
            last = to
    return (number, bracket, first, last) if _servers(rest) else None


def _servers(rest: str) -> bool:
    """``rest`` is nothing, ``.NAME``, ``@NAME`` or ``.NAME@NAME``."""
    dotted, at, host = rest.partition("@")
    if (dotted and (dotted[0] != "." or len(dotted) < 2)) or (at and not host):
        return False
    return _NAME.issuperset(dotted[1:]) and _NAME.issuperset(host)


def fail(cmd: str, message: str, code: int) -> int:
    print(f"{cmd}: {message}", file=sys.stderr)
    return code


def run(cmd: str, body: "Callable[[Client], int]") -> int:
    """Run a command body with one client; map transport errors to PBS exits."""
    client = Client()
    try:
        return body(client)
    except Unreachable as e:
        return fail(cmd, f"cannot connect to server ({e})", UNREACHABLE)
    except ApiError as e:
        return fail(cmd, e.message, EXIT_OF.get(e.code, USAGE))
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


# ---------------------------------------------------------------- per-job commands (qdel, qhold, ...)

def job_path(job_id: str, suffix: str = "") -> str:
    """``/api/v1/jobs/17%5B3%5D/hold``: the REST path of a job id (brackets escaped)."""
    return "/api/v1/jobs/" + job_id.replace("[", "%5B").replace("]", "%5D") + suffix


def shown_id(op: JobOperand, job_id: str) -> str:
    """``job_id`` as the user wrote its operand: ``17[3]`` of ``17[2-4].srv`` -> ``17[3].srv``."""
    text = op.text.strip()
    return job_id + text[len(op.number) + len(op.bracket or ""):]


def job_message(message: str, job_id: str, shown: str) -> str:
    """A server message about ``job_id`` in PBS's ``prt_job_err`` form: the id as the
    user typed it, no state letter, e.g. ``Unknown Job Id 17.srv``.

    >>> job_message("Request invalid for state of job 17 (R)", "17", "17.srv")
    'Request invalid for state of job 17.srv'
    >>> job_message("Unauthorized Request: job 17 belongs to ann", "17", "17.srv")
    'Unauthorized Request: job 17.srv belongs to ann'
    >>> job_message("hold types: 'x': expected some of u, o, s", "17[]", "17[]")
    "hold types: 'x': expected some of u, o, s 17[]"
    """
    import re

    message = re.sub(r" \([A-Z]\)$", "", message)
    pattern = re.compile(r"(?<![\w\[.])" + re.escape(job_id) + r"(?![\w\[\]])")
    replaced, n = pattern.subn(lambda _: shown, message, count=1)
    return replaced if n else f"{message} {shown}"


def for_each_job(cmd: str, operands: list[str], action: "Callable[[Client, str], object]") -> int:
    """Run ``action(client, job_id)`` for every job the operands name, as PBS's
    per-job commands do: every failure is reported on stderr and processing
    goes on; the exit code is the last failure's (1 for a malformed id), 0 if none.
    A subjob range (``17[2-4]``) is one call: the server acts on the subjobs
    that exist and lists each one's failure (``{"errors": [{"id", "code",
    "message"}]}``), reported here as if each had been its own call."""
    code = OK
    client = Client()
    try:
        for text in operands:
            try:
                op = parse_job_id(text)
            except ValueError as e:
                code = fail(cmd, str(e), BAD_ID)
                continue
            try:
                answer = action(client, op.target)
            except ApiError as e:
                code = fail(cmd, job_message(e.message, op.target, shown_id(op, op.target)), EXIT_OF.get(e.code, USAGE))
                continue
            errors = answer.get("errors") if isinstance(answer, dict) else None
            for err in errors if isinstance(errors, list) else ():
                job_id = str(err.get("id", op.target))
                code = fail(cmd, job_message(str(err.get("message", "")), job_id, shown_id(op, job_id)),
                            EXIT_OF.get(str(err.get("code")), USAGE))
    except Unreachable as e:
        return fail(cmd, f"cannot connect to server ({e})", UNREACHABLE)
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return code


def help_formatter() -> "type[argparse.HelpFormatter]":
    """argparse's RawDescriptionHelpFormatter with the width decided once: left to
    itself argparse asks shutil (which imports lzma, bz2, zlib...) on every
    ``add_argument``, a few ms of every command's start-up."""
    import argparse
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1).columns
        except (OSError, ValueError):
            columns = 80
    fixed = max(columns - 2, 40)

    class Formatter(argparse.RawDescriptionHelpFormatter):
        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                     width: int | None = None) -> None:
            super().__init__(prog, indent_increment, max_help_position, width or fixed)

    return Formatter


class UsageError(Exception):
    """Bad options: the command prints ``CMD: message`` (after PBS's ``CMD: illegal -X
    value`` when ``option`` names one) and its usage, and exits 2."""

    def __init__(self, message: str = "", option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def options(argv: list[str], spec: str, long: tuple[str, ...] = ()) -> tuple[list[tuple[str, str]], list[str]]:
    """getopt as PBS's commands use it (options end at the first operand; bundles such
    as ``-Wforce`` and ``-hu`` work) plus ``--help`` and the ``long`` options
    (getopt's form: ``"env="`` takes a value); errors in glibc's words.

    >>> options(["-Wforce", "-x", "17", "-x"], "W:x")
    ([('-W', 'force'), ('-x', '')], ['17', '-x'])
    >>> options(["--env=none", "-x"], "x", ("env=",))
    ([('--env', 'none'), ('-x', '')], [])
    """
    from schedd.cli.getopts import GetoptError, getopt

    try:
        return getopt(argv, spec, ["help", *long])
    except GetoptError as e:
        if len(e.opt) != 1:
            if "requires argument" in e.msg:
                raise UsageError(f"option '--{e.opt}' requires an argument") from None
            raise UsageError(f"unrecognized option '--{e.opt}'") from None
        if "requires argument" in e.msg:
            raise UsageError(f"option requires an argument -- '{e.opt}'") from None
        raise UsageError(f"invalid option -- '{e.opt}'") from None


def usage_error(cmd: str, error: UsageError, usage: str) -> int:
    if error.option:
        print(f"{cmd}: illegal {error.option} value", file=sys.stderr)
    if str(error):
        print(f"{cmd}: {error}", file=sys.stderr)
    print(usage, file=sys.stderr)
    return USAGE


def help_parser(prog: str, usage: str, description: str, epilog: str,
                flags: list[tuple[str, str, str]], operands: str = "job_identifier") -> "argparse.ArgumentParser":
    """The parser that prints ``--help`` (built only then: parsing is :func:`options`).
    ``flags`` are (flag, metavar or "" for a switch, help)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, usage=usage.removeprefix("usage: ").replace("%", "%%"),
                                description=description, epilog=epilog, add_help=False,
                                formatter_class=help_formatter())
    p.add_argument("--help", action="store_true", help="show this help and exit")
    for flag, metavar, text in flags:
        if metavar:
            p.add_argument(flag, metavar=metavar, help=text)
        else:
            p.add_argument(flag, action="store_true", help=text)
    if operands:
        p.add_argument(operands, nargs="*", help="ID, ID.server, ID[] (an array), ID[N] (a subjob), ID[N-M]")
    return p
