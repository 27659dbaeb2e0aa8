"""qstat's default layout, one line per job, as OpenPBS's ``display_statjob`` prints it:
``"%-17s %-16s %-16s  %8s %1s %-16s"`` under ``Job id  Name  User  Time Use S Queue``;
``-w`` widens the columns to 30/15/15/15, ``-p`` shows ``% done`` instead of Time Use.

Written once for both ends. Plain ``qstat`` asks the server for these lines
(``GET /api/v1/jobs?table=qstat``: server-side printing, as ``kubectl get``
asks the API server for a table) as the very text to write, heading included
(``Accept: text/plain``), so a queue of 10,000 jobs costs the command one
write, not 10,000 records decoded and formatted in Python; the command's other
paths (``-p``, job operands, ``-J``/``-E``/``-x`` choosing among the lines,
an older server) format with the same functions, so every path prints the
same bytes. The server imports this module too: standard library only, and
nothing at module level (the command's other paths import it).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from collections.abc import Iterable

    #: A row: id, name, owner, queue, state letter, Time Use (or % done).
    Row = tuple[str, str, str, str, str, str]

__all__ = ["LETTERS", "TABLES", "header", "letter", "lines", "time_use", "used"]

#: schedd's job states as PBS's ``job_state`` letters.
LETTERS = {"held": "H", "queued": "Q", "waiting": "W", "running": "R", "exiting": "E", "finished": "F"}

#: The layouts the server prints (``table=``): name -> wide (``-w``).
TABLES = {"qstat": False, "qstat-wide": True}

_HEAD = {
    (False, False): "Job id            Name             User              Time Use S Queue\n",
    (False, True): "Job id            Name             User               % done  S Queue\n",
    (True, False): "Job id                         Name            User             Time Use S Queue\n",
    (True, True): "Job id                         Name            User              % done  S Queue\n",
}
_RULE = {
    False: "----------------  ---------------- ----------------  -------- - -----\n",
    True: "-----------------------------  --------------- ---------------  -------- - ---------------\n",
}


def letter(state: str, jid: str) -> str:
    """The ``job_state`` letter: B for an array whose subjobs have begun, X for a finished subjob.

    >>> letter("running", "5[]"), letter("finished", "5[2]"), letter("finished", "5[]"), letter("held", "7")
    ('B', 'X', 'F', 'H')
    """
    if state == "running" and jid.endswith("[]"):
        return "B"
    if state == "finished" and jid.endswith("]") and not jid.endswith("[]"):
        return "X"
    return LETTERS.get(state, "?")


def time_use(cpu_s: float) -> str:
    """The Time Use column of a job that has run: ``HH:MM:SS``, cut to 8 with a ``*``."""
    from schedd.cli.pbsfmt import hms

    text = hms(cpu_s)
    return text if len(text) <= 8 else text[:7] + "*"


def used(jid: str, start_time: float | None, cpu_s: float | None) -> str:
    """Time Use: ``0`` until the job has started (PBS shows 0 until cput is
    reported), and always for an array parent, which reports none."""
    if start_time and not jid.endswith("[]"):
        return time_use(cpu_s or 0.0)
    return "0"


def header(wide: bool, percent: bool = False) -> str:
    """The two heading lines."""
    return _HEAD[wide, percent] + _RULE[wide]


def lines(table: Iterable[Row], server: str, wide: bool) -> list[str]:
    """Each row as its line (no newline): the id with the server's short name,
    every column cut to its width with a ``*`` as PBS cuts it (a name of
    exactly the width too). One ``%`` a row, as qstat.c does one printf: with
    10,000 jobs this loop is most of the formatting, wherever it runs."""
    wid, wname, wuser, wqueue = (30, 15, 15, 15) if wide else (17, 16, 16, 16)
    fmt = f"%-{wid}s %-{wname}s %-{wuser}s  %8s %1s %-{wqueue}s"
    suffix = "." + server.split(".", 1)[0]
    out: list[str] = []
    append = out.append
    for jid, name, owner, queue, st, use in table:
        jid += suffix
        if len(jid) > wid:
            jid = jid[: wid - 1] + "*"
        if len(name) >= wname:
            name = name[: wname - 1] + "*"
        if len(owner) > wuser:
            owner = owner[: wuser - 1] + "*"
        if len(queue) > wqueue:
            queue = queue[: wqueue - 1] + "*"
        append(fmt % (jid, name, owner, use, st, queue))
    return out
