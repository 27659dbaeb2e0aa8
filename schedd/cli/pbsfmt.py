"""PBS Pro's display conventions, shared by qstat, qnodes and qacct.

Every rule here is PBS's own (``src/cmds/qstat.c``, ``pbsnodes.c``; see
../shared/reference section 1.5): a field too long for its column keeps its
first ``width - 1`` characters and ends in ``*``; times are ``HH:MM:SS`` with
unbounded hours; dates are ``ctime()``; sizes carry ``kb``/``mb``/``gb``; a
``-f`` attribute is ``    name[.resource] = value`` wrapped near 78
columns at commas, continued after a TAB; ``-F json`` turns resources into
nested objects and numeric values into JSON numbers.

Stdlib only and nothing at import time: every command imports this module.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import Any

    #: One ``-f`` attribute: (name, resource or None, value), e.g. ("Resource_List", "ngpus", "2").
    Attr = tuple[str, str | None, str]

__all__ = [
    "attrs_dsv",
    "attrs_json",
    "attrs_text",
    "ctime",
    "duration",
    "hms",
    "json_document",
    "mem_kb",
    "mem_str",
    "pbs_version",
    "render",
    "run_at",
    "trunc",
]

LINE_LIMIT = 78  # prt_attr's CHAR_LINE_LIMIT


def trunc(value: str, width: int) -> str:
    """PBS's truncation: longer than ``width`` keeps ``width - 1`` characters and a ``*``.

    >>> trunc("llama-finetune-13b", 16), trunc("short", 16)
    ('llama-finetune-*', 'short')
    """
    return value if len(value) <= width else value[: width - 1] + "*"


def hms(seconds: float) -> str:
    """``HH:MM:SS`` with unbounded hours, as PBS prints cput and walltime.

    >>> hms(3600), hms(59.9), hms(13955718)
    ('01:00:00', '00:00:59', '3876:35:18')
    """
    s = _seconds(seconds)
    if s is None:
        return "--"
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def duration(seconds: float) -> str:
    """Slurm's elapsed format ``[D-]HH:MM:SS`` (qacct).

    >>> duration(59), duration(90061)
    ('00:00:59', '1-01:01:01')
    """
    s = _seconds(seconds)
    if s is None:
        return "--"
    days, rest = divmod(s, 86400)
    text = f"{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def ctime(epoch: float) -> str:
    """``Thu May 14 07:04:20 2020`` in local time (PBS's ctime, qtime, stime...).

    A value the platform cannot show as a date (out of range, NaN, not a
    number) is printed as it came rather than ending the command:

    >>> ctime(1e308), ctime(float("nan")), ctime(None)
    ('1e+308', 'nan', '--')
    """
    if epoch is None:  # time.ctime(None) would print the current time
        return "--"
    try:
        return time.ctime(epoch)
    except (OverflowError, ValueError, OSError, TypeError):
        return _raw(epoch)


def run_at(epoch: float) -> str:
    """The date in PBS's ``Job run at Fri May 01 at 14:28 on ...`` comment."""
    if epoch is None:
        return "--"
    try:
        return time.strftime("%a %b %d at %H:%M", time.localtime(epoch))
    except (OverflowError, ValueError, OSError, TypeError):
        return _raw(epoch)


def _raw(value: object) -> str:
    """A value no date or duration fits, as it came: ``--`` for none."""
    return "--" if value is None else str(value)


def _seconds(value: object) -> int | None:
    """Whole non-negative seconds, or None for what is not a finite number."""
    try:
        return max(0, int(value))  # type: ignore[call-overload, no-any-return]
    except (OverflowError, ValueError, TypeError):
        return None


def mem_str(mb: int) -> str:
    """A request in the unit a user would have typed: ``4gb``, ``1500mb``.

    >>> mem_str(4096), mem_str(1500), mem_str(0)
    ('4gb', '1500mb', '0mb')
    """
    if mb and mb % 1048576 == 0:
        return f"{mb // 1048576}tb"
    if mb and mb % 1024 == 0:
        return f"{mb // 1024}gb"
    return f"{mb}mb"


def mem_kb(mb: float) -> str:
    """A measured size as PBS reports it, in kilobytes: ``19456kb``."""
    return f"{int(mb * 1024)}kb"


def pbs_version() -> str:
    """The version string of ``-F json`` (``pbs_version``): schedd's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"schedd-{version('schedd')}"
    except PackageNotFoundError:
        return "schedd"


# ---------------------------------------------------------------- -f attributes


def _wrap(head: str, value: str) -> str:
    """prt_attr: break at commas near 78 columns; an over-long piece breaks anywhere."""
    out = [head]
    start = len(head)
    first = True
    pieces = [p for p in value.split(",") if p]  # strtok skips empty tokens
    for n, piece in enumerate(pieces):
        if len(piece) + start < LINE_LIMIT:
            out.append(piece)
            start += len(piece)
        else:
            if not first:
                out.append("\n\t")
                start = 9
            for ch in piece:
                out.append(ch)
                start += 1
                if start > LINE_LIMIT:
                    start = 8
                    out.append("\n\t")
        if n + 1 < len(pieces):
            first = False
            out.append(",")
    return "".join(out)


def attrs_text(title: str, attrs: list[Attr], one_line: bool = False) -> str:
    """A ``-f`` block: ``Job Id: ID`` then ``    name = value`` lines, then a blank line.

    >>> print(attrs_text("Job Id: 1.srv", [("Job_Name", None, "a"), ("Resource_List", "ngpus", "2")]), end="")
    Job Id: 1.srv
        Job_Name = a
        Resource_List.ngpus = 2
    <BLANKLINE>
    """
    lines = [title]
    for name, res, value in attrs:
        head = f"    {name}.{res} = " if res else f"    {name} = "
        if one_line:
            lines.append(head + value.replace("\n", "\\n").replace("\f", "\\f"))
        else:
            lines.append(_wrap(head, value))
    return "\n".join(lines) + "\n\n"


def attrs_dsv(title: str, attrs: list[Attr], delim: str) -> str:
    """``-F dsv``: one line, ``name=value`` pairs joined by ``delim`` (escaped in values)."""
    parts = [title]
    for name, res, value in attrs:
        value = value.replace("\\", "\\\\").replace(delim, "\\" + delim).replace("\n", "\\n").replace("\f", "\\f")
        parts.append(f"{name}.{res}={value}" if res else f"{name}={value}")
    return delim.join(parts) + "\n"


def _number(value: str) -> Any:
    """A value that is a JSON number becomes one (PBS parses each value as JSON)."""
    if not value or not (value[0].isdigit() or value[0] == "-"):
        return value
    import json

    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (int, float)) else value


def attrs_json(attrs: list[Attr]) -> dict[str, Any]:
    """``-F json``: resources nest under their attribute; Variable_List becomes an object."""
    obj: dict[str, Any] = {}
    for name, res, value in attrs:
        if name == "Variable_List":
            env: dict[str, Any] = {}
            for item in _split_escaped(value):
                key, _, val = item.partition("=")
                env[key] = val
            obj[name] = env
        elif res:
            obj.setdefault(name, {})[res] = _number(value)
        else:
            obj[name] = _number(value)
    return obj


def _split_escaped(value: str) -> list[str]:
    r"""Split at commas not preceded by a backslash (PBS escapes commas in values as ``\,``)."""
    out, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] == ",":
            cur.append(",")
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    if cur:
        out.append("".join(cur))
    return out


def json_document(server: str, key: str | None, body: dict[str, Any]) -> str:
    """PBS's JSON envelope, 4-space indented: timestamp, pbs_version, pbs_server, then ``key``."""
    import json

    doc: dict[str, Any] = {"timestamp": int(time.time()), "pbs_version": pbs_version(), "pbs_server": server}
    if key is not None:
        doc[key] = body
    return json.dumps(doc, indent=4, separators=(",", ":"), ensure_ascii=False) + "\n"


def render(title: str, key: str, objects: dict[str, list[Attr]], server: str, fmt: str = "default",
           delim: str = "|", one_line: bool = False) -> str:
    """Objects (jobs, queues, a server) in ``-f`` text, ``-F dsv`` or ``-F json``.

    ``title`` heads each text block (``Job Id: 17.srv``); ``key`` holds them in JSON (``"Jobs"``),
    left out when there is none, as PBS does.
    """
    if fmt == "json":
        body = {name: attrs_json(attrs) for name, attrs in objects.items()}
        return json_document(server, key if body else None, body)
    if fmt == "dsv":
        return "".join(attrs_dsv(f"{title}: {name}", attrs, delim) for name, attrs in objects.items())
    return "".join(attrs_text(f"{title}: {name}", attrs, one_line) for name, attrs in objects.items())
