"""What qsub's option values mean: ``-l`` resources, ``-a`` times, ``-J``, ``-W`` and ``-v``.

Pure functions of strings (and of ``now``): stdlib only, no I/O, nothing done
at import time; ``re`` is imported by the functions that match, so a plain
``qsub job.sh`` never loads it (with ``enum``, a third of the interpreter's start-up). Each raises :class:`ValueError` whose text is the detail qsub
prints under PBS's own ``qsub: illegal -l value`` line, naming the resource
and quoting the value, e.g. ``walltime: '1:2:3:4': expected [[HH:]MM:]SS``.

``-l`` grammar (PBS Pro)::

    -l select=[N:]chunk[+[N:]chunk...]     chunk = res=val[:res=val...]  (ncpus, ngpus, mem)
    -l walltime=[[HH:]MM:]SS[.frac]        -l place=free|scatter|vscatter[:shared]
    -l ncpus=4,ngpus=1,mem=16gb            job-wide, without select: one chunk
    -l signal=USR1@60                      warn signal, seconds before the walltime kill
    -l qos=NAME

Sizes are PBS sizes: an integer with b, kb, mb, gb, tb or pb (1kb = 1024
bytes; no unit = bytes), converted to MB rounding up.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # mypy reads this as True; typing stays unimported at run time
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEPEND_KINDS",
    "parse_after",
    "parse_array",
    "parse_depend",
    "parse_l",
    "parse_signal",
    "parse_size_mb",
    "parse_vars",
    "parse_w",
    "parse_walltime",
    "resolve",
]

DEPEND_KINDS = ("after", "afterok", "afternotok", "afterany")
CHUNK_RESOURCES = ("ncpus", "ngpus", "mem")
_JOB_WIDE = ("ncpus", "ngpus", "mem", "select", "walltime", "place", "signal", "qos", "container")
_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, "pb": 1 << 50}
_SIZE = r"(?i)^(\d+)([kmgtp]?b)?$"  # patterns are compiled on first use, not at import
_ARRAY = r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$"
_DEP_ID = r"^(\d+(?:\[\d*\])?)(?:\.[A-Za-z0-9_.-]+)?(?:@[A-Za-z0-9_.-]+)?$"
_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"


def parse_size_mb(text: str, what: str = "mem") -> int:
    """A PBS size in MB, rounded up.

    >>> [parse_size_mb(s) for s in ("64gb", "512mb", "1536kb", "1", "0", "2TB")]
    [65536, 512, 2, 1, 0, 2097152]
    """
    import re

    m = re.match(_SIZE, text.strip())
    if m is None:
        raise ValueError(f"{what}: {text!r}: expected a size such as 512mb or 64gb (units b, kb, mb, gb, tb)")
    n = int(m[1]) * _UNITS[(m[2] or "b").lower()]
    return -(-n // (1 << 20))


def parse_walltime(text: str) -> float:
    """``[[HH:]MM:]SS[.frac]`` in seconds; minutes and seconds may exceed 59, as in PBS.

    >>> [parse_walltime(s) for s in ("01:30:00", "90:00", "45", "1:00:00.5")]
    [5400.0, 5400.0, 45.0, 3600.5]
    """
    fields = text.strip().split(":")
    head, last = fields[:-1], fields[-1]
    whole, _, frac = last.partition(".")
    if len(fields) > 3 or not all(_digits(f) for f in [*head, whole]) or (frac and not _digits(frac)):
        raise ValueError(f"walltime: {text!r}: expected [[HH:]MM:]SS, e.g. 01:30:00")
    seconds = 0.0
    for f in head:
        seconds = (seconds + int(f)) * 60
    seconds += float(last)
    if seconds <= 0:
        raise ValueError(f"walltime: {text!r}: must be more than 0 seconds")
    return seconds


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _count(what: str, value: str) -> int:
    if not _digits(value):
        raise ValueError(f"{what}: {value!r}: expected a whole number")
    return int(value)


def _select(text: str) -> list[dict[str, int | None]]:
    """``2:ncpus=8:ngpus=1+ncpus=2`` -> chunks; a resource not given is None (the queue's default)."""
    chunks: list[dict[str, int | None]] = []
    for term in text.split("+"):
        parts = term.split(":")
        count = 1
        if parts and _digits(parts[0]):
            count = int(parts.pop(0))
            if count < 1:
                raise ValueError(f"select: {term!r}: the chunk count must be at least 1")
        chunk: dict[str, int | None] = {"ncpus": None, "mem_mb": None, "ngpus": None, "count": count}
        for part in parts:
            key, eq, value = part.partition("=")
            if not eq or not key or not value:
                raise ValueError(f"select: {term!r}: expected [N:]res=value[:res=value], "
                                 "e.g. select=2:ncpus=8:ngpus=1:mem=64gb")
            if key not in CHUNK_RESOURCES:
                raise ValueError(f"select: unknown chunk resource {key!r}; chunks take ncpus, ngpus and mem")
            field = "mem_mb" if key == "mem" else key
            if chunk[field] is not None:
                raise ValueError(f"select: {term!r}: {key} given twice")
            chunk[field] = parse_size_mb(value) if key == "mem" else _count(key, value)
        chunks.append(chunk)
    return chunks


def _place(text: str) -> None:
    """Validate ``place=``: schedd puts each chunk on a distinct node (scatter) and shares nodes."""
    for word in text.split(":"):
        if word in ("free", "scatter", "vscatter", "shared"):
            continue
        if word in ("pack", "excl", "exclhost") or word.startswith("group="):
            raise ValueError(f"place: {word!r} is not supported: schedd places every chunk on its own "
                             "node (scatter) and shares nodes between jobs")
        raise ValueError(f"place: {text!r}: expected [free|scatter|vscatter][:shared]")


def _signal(text: str) -> tuple[str, float]:
    """``USR1@60`` -> ("USR1", 60.0); the default lead time is 60 s."""
    sig, at, lead = text.partition("@")
    try:
        name = parse_signal(sig)
    except ValueError:
        raise ValueError(f"signal: {text!r}: expected SIGNAL[@SECONDS], e.g. USR1@60") from None
    if at and not _digits(lead):
        raise ValueError(f"signal: {text!r}: the time after @ must be whole seconds, e.g. USR1@60")
    seconds = float(lead) if at else 60.0
    if seconds <= 0:
        raise ValueError(f"signal: {text!r}: the time after @ must be more than 0 seconds")
    return name, seconds


def parse_signal(text: str) -> str:
    """A signal as the agents take it: ``SIGUSR1``, ``usr1`` -> ``USR1``; ``10`` -> ``10``.

    >>> parse_signal("sigusr1"), parse_signal("10"), parse_signal("TERM")
    ('USR1', '10', 'TERM')
    """
    import signal

    name = text.strip().upper().removeprefix("SIG")
    try:
        if _digits(name):
            signal.Signals(int(name))
        elif name.isalnum():
            signal.Signals["SIG" + name]
        else:
            raise ValueError(name)
    except (KeyError, ValueError):
        raise ValueError(f"{text!r}: not a signal name or number (e.g. TERM, USR1, 10)") from None
    return name


def parse_l(text: str) -> list[tuple[str, str]]:
    """Split one ``-l`` value into (resource, value) pairs, checking the names.

    >>> parse_l("select=2:ncpus=8,walltime=1:00:00")
    [('select', '2:ncpus=8'), ('walltime', '1:00:00')]
    """
    out = []
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value:
            raise ValueError(f"{item!r}: expected resource=value, e.g. walltime=01:00:00")
        if key == "nodes":
            raise ValueError("nodes: Torque's nodes= is not supported; use select=N:ncpus=C:ngpus=G")
        if key not in _JOB_WIDE:
            raise ValueError(f"unknown resource {key!r}; schedd knows {', '.join(sorted(_JOB_WIDE))}")
        out.append((key, value))
    return out


def resolve(resources: dict[str, str]) -> dict[str, Any]:
    """The submit body's fields for the merged ``-l`` resources (later values already won).

    Chunks keep None for a resource not given: qsub fills those from the queue's default chunk.

    >>> resolve({"ngpus": "2", "walltime": "10:00"})
    {'chunks': [{'ncpus': None, 'mem_mb': None, 'ngpus': 2, 'count': 1}], 'walltime_s': 600.0}
    """
    out: dict[str, Any] = {}
    wide = [k for k in CHUNK_RESOURCES if k in resources]
    if "select" in resources:
        if wide:
            raise ValueError(f"select and job-wide {', '.join(wide)} cannot be combined; put {wide[0]} in the select chunks")
        out["chunks"] = _select(resources["select"])
    elif wide:
        chunk: dict[str, int | None] = {"ncpus": None, "mem_mb": None, "ngpus": None, "count": 1}
        for key in wide:
            field = "mem_mb" if key == "mem" else key
            chunk[field] = parse_size_mb(resources[key]) if key == "mem" else _count(key, resources[key])
        out["chunks"] = [chunk]
    if "walltime" in resources:
        out["walltime_s"] = parse_walltime(resources["walltime"])
    if "place" in resources:
        _place(resources["place"])
    if "signal" in resources:
        out["warn_signal"], out["warn_before_s"] = _signal(resources["signal"])
    if "qos" in resources:
        out["qos"] = resources["qos"]
    if "container" in resources:
        out["container"] = resources["container"]  # the server checks the image reference
    return out


def parse_after(text: str, now: float) -> float:
    """``-a [[[[CC]YY]MM]DD]hhmm[.SS]`` in local time, as an epoch.

    As PBS: a time of day already past today means tomorrow; a day already past
    this month (month not given) means next month; a month already past this
    year (year not given) means next year. A full date in the past is kept.
    """
    main, dot, sec = text.strip().partition(".")
    if not _digits(main) or len(main) not in (4, 6, 8, 10, 12) or (dot and not (len(sec) == 2 and _digits(sec))):
        raise ValueError(f"{text!r}: expected [[[[CC]YY]MM]DD]hhmm[.SS], e.g. 202612312359.30")
    now_tm = time.localtime(now)
    fields = [int(main[i:i + 2]) for i in range(0, len(main), 2)]
    mm, hh = fields.pop(), fields.pop()
    day = fields.pop() if fields else None
    month = fields.pop() if fields else None
    year = fields.pop() if fields else None
    if year is not None:
        year += fields.pop() * 100 if fields else 2000
    ss = int(sec) if dot else 0
    if hh > 23 or mm > 59 or ss > 59 or (month is not None and not 1 <= month <= 12) or (day is not None and not 1 <= day <= 31):
        raise ValueError(f"{text!r}: a field is out of range (hh 00-23, mm 00-59, SS 00-59, MM 01-12, DD 01-31)")
    y = year if year is not None else now_tm.tm_year
    mo = month if month is not None else now_tm.tm_mon
    d = day if day is not None else now_tm.tm_mday

    def epoch(y: int, mo: int, d: int) -> float:
        t = time.mktime((y, mo, d, hh, mm, ss, 0, 0, -1))
        if time.localtime(t)[:3] != (y + (mo - 1) // 12, (mo - 1) % 12 + 1, d):
            raise ValueError(f"{text!r}: there is no day {d} in month {(mo - 1) % 12 + 1}")
        return t

    if day is None:  # time of day only: today, else tomorrow
        t = epoch(y, mo, d)
        return t if t >= now else time.mktime((y, mo, d + 1, hh, mm, ss, 0, 0, -1))
    if month is None:  # day given: this month, else next month
        t = epoch(y, mo, d)
        return t if t >= now else epoch(y, mo + 1, d)
    if year is None:  # month given: this year, else next year
        t = epoch(y, mo, d)
        return t if t >= now else epoch(y + 1, mo, d)
    return epoch(y, mo, d)


def parse_array(text: str) -> str:
    """Check ``-J X-Y[:Z][%max]`` (PBS: indices >= 0, Y > X); the server gets the text.

    >>> parse_array("1-10:2%3")
    '1-10:2%3'
    """
    import re

    m = re.match(_ARRAY, text.strip())
    if m is None:
        raise ValueError(f"{text!r}: expected X-Y[:Z][%max], e.g. 1-100%10")
    if int(m[2]) <= int(m[1]):
        raise ValueError(f"{text!r}: the end must be greater than the start")
    if (m[3] is not None and int(m[3]) < 1) or (m[4] is not None and int(m[4]) < 1):
        raise ValueError(f"{text!r}: the step and %max must be at least 1")
    return text.strip()


def parse_w(text: str) -> list[tuple[str, str]]:
    """Split ``-W attr=value[,attr=value]``; a comma inside ``depend=`` lists stays there.

    >>> parse_w("depend=afterok:1:2,afterany:3,block=true")
    [('depend', 'afterok:1:2,afterany:3'), ('block', 'true')]
    """
    import re

    out = []
    for item in re.split(r",(?=\s*[A-Za-z_]+=)", text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r}: expected attribute=value, e.g. depend=afterok:12")
        out.append((key.strip(), value.strip()))
    return out


def parse_depend(text: str) -> list[dict[str, Any]]:
    """``afterok:12.srv:13,afterany:14`` -> the API's depend list (server suffixes dropped).

    >>> parse_depend("afterok:12.srv:13,afterany:14[]")
    [{'kind': 'afterok', 'ids': ['12', '13']}, {'kind': 'afterany', 'ids': ['14[]']}]
    """
    import re

    out: list[dict[str, Any]] = []
    for term in text.split(","):
        kind, _, rest = term.strip().partition(":")
        if kind.startswith("before") or kind == "on":
            raise ValueError(f"depend={kind}: {kind} dependencies are not supported yet; "
                             "submit the later job with -W depend=afterok:ID instead")
        if kind not in DEPEND_KINDS:
            raise ValueError(f"depend: {kind!r}: expected one of {', '.join(DEPEND_KINDS)}")
        ids = []
        for raw in rest.split(":"):
            m = re.match(_DEP_ID, raw.strip())
            if m is None:
                raise ValueError(f"depend: {term.strip()!r}: expected {kind}:JOBID[:JOBID...], e.g. {kind}:12.server")
            ids.append(m[1])
        out.append({"kind": kind, "ids": ids})
    return out


def parse_vars(text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``-v A,B=1,C='x,y'``: a name alone takes its value from the submit environment.

    >>> parse_vars("A,B=1,C='x,y'", {"A": "a"})
    {'A': 'a', 'B': '1', 'C': 'x,y'}
    """
    import re

    out: dict[str, str] = {}
    items, buf, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                buf += ch
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            items.append(buf)
            buf = ""
        else:
            buf += ch
    if quote:
        raise ValueError(f"{text!r}: unbalanced quote")
    items.append(buf)
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not re.match(_VAR, name):
            raise ValueError(f"{item!r}: expected VAR or VAR=value")
        out[name] = value if eq else (environ or {}).get(name, "")
    return out
