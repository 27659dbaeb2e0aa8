"""qstat's tables, column for column as OpenPBS's ``src/cmds/qstat.c`` prints them.

- default (``display_statjob``): ``"%-17s %-16s %-16s  %8s %1s %-16s"`` under
  ``Job id  Name  User  Time Use S Queue``; ``-w`` widens to 30/15/15/15;
  ``-p`` shows ``% done`` instead of Time Use.
- alternate (``altdsp_statjob``; -a -u -n -s -i -r -H -T): preceded by a blank
  line and ``SERVER: ``; ``Job ID Username Queue Jobname SessID NDS TSK Memory
  Time S Time`` with Req'd Memory/Time and Elap Time, or ``Est Start Time``
  with ``-T``; ``-n`` adds the exec hosts and ``-s`` the comment under each
  job (on the same line with ``-1``). Missing values are `` -- ``.
- queues (``-Q``, ``-q``) and the server (``-B``).

Each function returns the text; the caller writes it once.
"""

from __future__ import annotations

import time

from schedd.cli.pbsfmt import hms, mem_str, trunc
from schedd.cli.qstat_default import header, lines, time_use, used

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import Any

    from schedd.cli.qstat_attrs import Context
    from schedd.cli.qstat_default import Row

    Job = dict[str, Any]

__all__ = ["alt_table", "default_table", "queue_alt_table", "queue_table", "rows", "server_table", "time_use"]

BLANK = " -- "


def _percent(job: Job, ctx: Context) -> str:
    """qstat -p: % of walltime used (arrays: % of subjobs done), as percent_cal formats it."""
    from schedd.cli.qstat_attrs import is_parent, letter

    st = letter(job)
    if st in "QTW":
        return "-- "
    if st == "X":
        return "100"
    if is_parent(job["id"]):
        subs = ctx.subjobs.get(job["id"])
        spec = job.get("array") or {}
        if subs is None or not spec:
            return "-- "
        total = len(range(spec["start"], spec["end"] + 1, spec.get("step", 1)))
        done = total - sum(s["state"] != "finished" for s in subs)
        return f"{done * 100 // total:3d} " if total else "-- "
    start, wall = job.get("start_time"), float(job.get("walltime_s") or 0.0)
    if not start or wall < 1:
        return "-- "
    try:
        used = int((job.get("end_time") or ctx.now) - start)
        pct = used * 100 // int(wall)
    except (OverflowError, ValueError, TypeError):  # a time the server holds but no clock reaches
        return "-- "
    return f"{pct:3d} " if 0 <= pct < 1000 else "-- "


def rows(jobs: list[Job], ctx: Context, percent: bool = False) -> list[Row]:
    """Jobs (API dicts) as default-layout rows: (id, name, owner, queue, state letter, Time Use or % done)."""
    from schedd.cli.qstat_attrs import letter

    out = []
    for j in jobs:
        jid = j["id"]
        use = _percent(j, ctx) if percent else used(jid, j.get("start_time"), (j.get("used") or {}).get("cpu_s"))
        out.append((jid, j["name"], j["owner"], j["queue"], letter(j), use))
    return out


def default_table(table: list[Row], server: str, wide: bool = False, percent: bool = False) -> str:
    """The default layout of rows (see :func:`rows`); nothing at all when there is none."""
    if not table:
        return ""
    return header(wide, percent) + "\n".join(lines(table, server, wide)) + "\n"


# ---------------------------------------------------------------- alternate layout


def cnv_size(mb: int, gb: bool = False) -> str:
    """cnv_size: a size in its own unit (or in gb with -G), at most four digits.

    >>> cnv_size(4096), cnv_size(1500), cnv_size(20000), cnv_size(1500, gb=True)
    ('4gb', '1500mb', '20gb', '2gb')
    """
    text = mem_str(mb)
    value, unit = int(text[:-2]), " kmgt".index(text[-2])
    out = 3 if gb else unit
    shift = 10 * (unit - out)
    if shift < 0:
        value = (value + (1 << -shift) - 1) >> -shift  # rounds up
    elif shift > 0:
        value <<= shift
    while value > 9999:
        value = (value + 1023) >> 10
        out += 1
    return f"{value}{' kmgtp?'[out]}b"


def est_start(est: float | None, now: float) -> str:
    """cnvt_est_start_time: today ``HH:MM``, within a week ``Tu 14``, else month, year or >5yrs."""
    if est is None:
        return "--"
    if est == 0:
        return "?"
    if est < now:
        return "--"
    try:
        e, n = time.localtime(est), time.localtime(now)
    except (OverflowError, ValueError, OSError, TypeError):
        return ">5yrs" if isinstance(est, (int, float)) and est > now else "--"
    if (e.tm_year, e.tm_yday) == (n.tm_year, n.tm_yday):
        return time.strftime("%H:%M", e)
    if est - now < 7 * 86400:
        return f"{time.strftime('%a', e)[:2]} {time.strftime('%H', e)}"
    if e.tm_year == n.tm_year:
        return time.strftime("%b", e)
    if e.tm_year - n.tm_year < 5:
        return time.strftime("%Y", e)
    return ">5yrs"


def _est_order(job: Job, now: float) -> tuple[int, float]:
    """cmp_est_time: started jobs first by start time, then by estimated start, unknown last."""
    if job.get("start_time"):
        return (0, float(job["start_time"]))
    est = job.get("planned_start")
    if est is None or est < now:
        return (2, 0.0)
    return (1, float(est))


def _nodes_lines(hosts: str, one_line: bool) -> str:
    """prt_nodes: exec hosts with domains stripped, broken at ``+`` near 78 columns."""
    names = []
    for token in filter(None, hosts.split("+")):
        host, slash, rest = token.partition("/")
        if not host.replace(".", "").isdigit():
            host = host.split(".", 1)[0]
        names.append(host + slash + rest)
    lines, cur = [], ""
    for name in names:
        if len(cur) + len(name) < 77:
            cur += name + "+"
        else:
            lines.append(cur)
            cur = name + "+"
    if cur:
        lines.append(cur[:-1])
    if one_line:
        return "".join(lines) + "\n"
    return "".join(f"   {line}\n" for line in lines)


def alt_table(jobs: list[Job], ctx: Context, *, wide: bool = False, est: bool = False, nodes: bool = False,
              comments: bool = False, one_line: bool = False, gb: bool = False) -> str:
    """The alternate layout (``-a``, ``-u``, ``-n``, ``-s``, ``-T``...)."""
    from schedd.cli.qstat_attrs import comment, exec_host, is_parent, letter, totals

    if not jobs:
        return ""
    now = ctx.now
    if est:
        jobs = sorted(jobs, key=lambda j: _est_order(j, now))
    if wide:
        widths = (30, 15, 15, 15, 8, 4, 5)
        pad = " ".join(" " * w for w in widths) + " "
        head = [f"\n{ctx.server}: \n"]
        if est:
            head.append(pad + "               Est\n")
        head.append(pad + ("Req'd  Req'd   Start\n" if est else "Req'd  Req'd   Elap\n"))
        labels = ("Job ID", "Username", "Queue", "Jobname", "SessID", "NDS", "TSK")
        head.append(" ".join(f"{t:<{w}.{w}}" for t, w in zip(labels, widths)) + " Memory Time  S Time\n")
        head.append(" ".join("-" * w for w in widths) + " ------ ----- - -----\n")
    else:
        widths = (15, 8, 8, 10, 6, 3, 3)
        head = [f"\n{ctx.server}: \n"]
        if est:
            head.append(f"{' ':>75}Est\n{' ':>60}Req'd  Req'd   Start\n")
        else:
            head.append(f"{' ':>60}Req'd  Req'd   Elap\n")
        head.append("Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n")
        head.append("--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n")
    wid, wuser, wqueue, wname, wsess, wnds, wtsk = widths
    out = head
    for job in jobs:
        st = letter(job)
        ncpus, _, mem, nodect = totals(job)
        jid = trunc(f"{job['id']}.{ctx.server}", wid)
        user, queue, name = trunc(job["owner"], wuser), trunc(job["queue"], wqueue), trunc(job["name"], wname)
        nds = trunc(str(nodect), wnds) if nodect else BLANK
        tsk = trunc(str(ncpus), wtsk) if ncpus else BLANK
        rqmem = cnv_size(mem, gb) if mem else BLANK
        rqtime = hms(float(job.get("walltime_s") or 0.0))
        if est:
            when = est_start(job.get("planned_start"), now) if st in "QSB" else "--"
        elif job.get("start_time") and not is_parent(job["id"]):
            when = hms((job.get("end_time") or now) - job["start_time"])
        else:
            when = BLANK
        if wide:
            row = (f"{jid:<{wid}.{wid}} {user:<{wuser}.{wuser}} {queue:<{wqueue}.{wqueue}} {name:<{wname}.{wname}} "
                   f"{BLANK:>{wsess}.{wsess}} {nds:>{wnds}.{wnds}} {tsk:>{wtsk}.{wtsk}} "
                   f"{rqmem:>6.6} {rqtime:>5.5} {st} {when:>5.5}")
        else:
            row = (f"{jid:<15.15} {user:<8.8} {queue:<8.8} {name:<10.10} {BLANK:>6.6} {nds:>3.3} {tsk:>3.3} "
                   f"{rqmem:>6.6} {rqtime:>5.5} {st} {when:>5.5}")
        out.append(row + (" " if one_line else "\n"))
        if nodes:
            out.append(_nodes_lines(exec_host(job) or BLANK, one_line))
        if comments:
            text = comment(job, ctx) or BLANK
            limit, keep = (114, 110) if wide else (74, 70)
            if len(text) > limit:
                text = text[:keep] + "..."
            out.append(f"   {text}\n")
        elif one_line and not nodes:
            out.append("\n")
    return "".join(out)


# ---------------------------------------------------------------- queues and server


def _counts(jobs: dict[str, int]) -> tuple[int, int, int, int, int, int]:
    """(total, queued, running, held, waiting, exiting): finished jobs are history, not counted."""
    q, r, h, w, e = (jobs.get(s, 0) for s in ("queued", "running", "held", "waiting", "exiting"))
    return q + r + h + w + e, q, r, h, w, e


def queue_table(queues: dict[str, Any]) -> str:
    """qstat -Q: ``%-16s %5s %5s %3s %3s %5s %5s %5s %5s %5s %5s %-4s``."""
    out = ["Queue              Max   Tot Ena Str   Que   Run   Hld   Wat   Trn   Ext Type\n",
           "---------------- ----- ----- --- --- ----- ----- ----- ----- ----- ----- ----\n"]
    for name, q in queues.items():
        tot, que, run, hld, wat, ext = _counts(q.get("jobs") or {})
        out.append(f"{trunc(name, 16):<16} {0:>5} {tot:>5} {'yes':>3} {'yes':>3} {que:>5} {run:>5} {hld:>5} "
                   f"{wat:>5} {0:>5} {ext:>5} {'Exe*':<4}\n")
    return "".join(out)


def queue_alt_table(server: str, queues: dict[str, Any]) -> str:
    """qstat -q: limits per queue and the run/queued totals."""
    out = [f"\nserver: {server}\n\n",
           "Queue            Memory CPU Time Walltime Node   Run   Que   Lm  State\n",
           "---------------- ------ -------- -------- ---- ----- ----- ----  -----\n"]
    trun = tque = 0
    for name, q in queues.items():
        settings = q.get("settings") or {}
        _, que, run, hld, wat, _ = _counts(q.get("jobs") or {})
        jque = que + hld + wat
        trun, tque = trun + run, tque + jque
        wall = settings.get("max_walltime_s")
        wallt = hms(wall) if wall else "  --   "
        out.append(f"{name:<16.16} {'--  ':>6.6} {'  --   ':>8.8} {wallt:>8.8} {'-- ':>4.4} {run:5d} {jque:5d} "
                   f"{'  --   ':>4.4}   E R\n")
    out.append("                                               ----- -----\n")
    out.append(f"                                               {trun:5d} {tque:5d}\n")
    return "".join(out)


def server_table(srv: dict[str, Any]) -> str:
    """qstat -B: ``%-16s %5s %5s %5s %5s %5s %5s %5s %5s %-10s``."""
    tot, que, run, hld, wat, ext = _counts(srv.get("jobs") or {})
    status = "Active" if srv.get("scheduling", True) else "Idle"
    return ("Server             Max   Tot   Que   Run   Hld   Wat   Trn   Ext Status\n"
            "---------------- ----- ----- ----- ----- ----- ----- ----- ----- -----------\n"
            f"{trunc(srv['server_name'], 16):<16} {0:>5} {tot:>5} {que:>5} {run:>5} {hld:>5} {wat:>5} {0:>5} "
            f"{ext:>5} {status:<10}\n")
