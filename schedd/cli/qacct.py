"""qacct: job history and usage, like Slurm's ``sacct`` (per job) and ``sreport`` (-s).

Reads ``GET /api/v1/jobs?finished=1`` (the store's history) and, for the
summary, ``GET /api/v1/usage`` (decayed usage and fair-share factors). Array
parents are not accounted: their subjobs are. GPU-hours are the job's
``used.gpu_s`` (GPUs held x elapsed) / 3600.
"""

from __future__ import annotations

import sys
import time

from schedd.cli import command

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import Any

    from schedd.cli.client import Client

    Job = dict[str, Any]

__all__ = ["main"]


USAGE = """usage: qacct [-a] [-u USER] [-A ACCOUNT] [-q QUEUE] [-S START] [-E END] [-j ID[,ID...]]
             [-s | --summary] [-p | -F json]
       qacct --help
"""

HELP = USAGE + """
Accounting for schedd jobs: one line per job (like sacct), or per account and
user (-s, like sreport), over finished jobs (-a: also queued and running ones).

Filters:
  -u USER        jobs of USER               -A ACCOUNT   jobs charged to ACCOUNT
  -q QUEUE       jobs of QUEUE              -j ID,...    these jobs (17, 17.SERVER, 17[] = its subjobs)
  -S START       jobs still running or ended at or after START
  -E END         jobs submitted before END
                 dates: YYYY-MM-DD[THH:MM[:SS]], local time (a bare date is midnight)
Output:
  (default)      a table, one job per line:
    JobID     job id (ID.SERVER)          User, Account, Queue
    Submit, Start, End    YYYY-MM-DDTHH:MM:SS ("--" not yet)
    Wait      Start - Submit               Elapsed   End (or now) - Start, [D-]HH:MM:SS
    State     completed, failed, cancelled, timeout, out_of_memory, node_fail,
              preempted; or queued, held, waiting, running, exiting with -a
    Exit      the exit status (PBS: 256+N when killed by signal N)
    NCPU NGPU ReqMem ReqTime   requested: CPUs, GPUs, memory, walltime
    CPUTime   CPU time used                MaxRSS    peak memory used
    GPUh      GPU-hours held (GPUs x elapsed)   GPU%  mean utilisation of its GPUs
  -s, --summary  per account and user:
    Jobs      jobs in the selection        GPUHours, CPUHours, WallHours  summed
    Usage     the decayed usage fair-share sees now (GET /api/v1/usage, its unit)
    FairShare the fair-share factor, 0..1 (1 = has used nothing, higher runs first)
  -p             the same columns separated by "|" (no padding, no truncation)
  -F json        {"jobs": [...]} or {"summary": [...], "unit": ...}
Fields too long for their column end in "*" (as in qstat).

Exit status: 0 ok (no job: only the header), 2 usage, 153 unknown job, 186 no server.

Examples:
  qacct -u alice -S 2026-11-01              alice's jobs since November 1st
  qacct -s -S 2026-11-01 -E 2026-12-01      GPU-hours per user for November
  qacct -j 17                               one job, requested vs used
  qacct -A vision -p | cut -d'|' -f1,17     GPU-hours of the vision account's jobs
"""

# (title, width, right-aligned); the widths of the default table.
JOB_COLUMNS = (("JobID", 17, False), ("User", 8, False), ("Account", 8, False), ("Queue", 8, False),
               ("Submit", 19, False), ("Start", 19, False), ("End", 19, False), ("Wait", 10, True),
               ("Elapsed", 10, True), ("State", 13, False), ("Exit", 4, True), ("NCPU", 4, True),
               ("NGPU", 4, True), ("ReqMem", 6, True), ("ReqTime", 10, True), ("CPUTime", 10, True),
               ("MaxRSS", 7, True), ("GPUh", 8, True), ("GPU%", 4, True))
SUMMARY_COLUMNS = (("Account", 16, False), ("User", 16, False), ("Jobs", 6, True), ("GPUHours", 10, True),
                   ("CPUHours", 10, True), ("WallHours", 10, True), ("Usage", 12, True), ("FairShare", 9, True))


class _Opts:
    __slots__ = ("account", "active", "end", "fmt", "ids", "parsable", "queue", "start", "summary", "user")

    def __init__(self) -> None:
        self.account: str | None = None
        self.queue: str | None = None
        self.user: str | None = None
        self.active = self.parsable = self.summary = False
        self.start: float | None = None
        self.end: float | None = None
        self.ids: list[str] = []
        self.fmt = "default"


def parse_date(text: str) -> float:
    """``YYYY-MM-DD[THH:MM[:SS]]`` in local time -> epoch seconds; ValueError otherwise."""
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, fmt))
        except ValueError:
            continue
    raise ValueError(f"invalid date {text!r}: expected YYYY-MM-DD[THH:MM[:SS]]")


def _parse(args: list[str]) -> _Opts | str:
    from schedd.cli.getopts import GetoptError, getopt

    try:
        pairs, rest = getopt(args, "au:A:q:S:E:j:spF:", ["summary"])
    except GetoptError as e:
        return f"qacct: {e.msg}"
    if rest:
        return f"qacct: unexpected operand {rest[0]!r} (use -j ID)"
    o = _Opts()
    for flag, value in pairs:
        try:
            if flag == "-a":
                o.active = True
            elif flag == "-u":
                o.user = value
            elif flag == "-A":
                o.account = value
            elif flag == "-q":
                o.queue = value
            elif flag == "-S":
                o.start = parse_date(value)
            elif flag == "-E":
                o.end = parse_date(value)
            elif flag == "-j":
                o.ids += [i for i in value.split(",") if i]
            elif flag in ("-s", "--summary"):
                o.summary = True
            elif flag == "-p":
                o.parsable = True
            elif flag == "-F":
                if value.lower() != "json":
                    return f"qacct: -F {value}: expected json"
                o.fmt = "json"
        except ValueError as e:
            return f"qacct: {e}"
    if o.parsable and o.fmt == "json":
        return "qacct: -p and -F json exclude each other"
    return o


@command
def main(args: list[str]) -> int:
    if "--help" in args:
        sys.stdout.write(HELP)
        return 0
    o = _parse(args)
    if isinstance(o, str):
        sys.stderr.write(f"{o}\n{USAGE}")
        return 2
    from schedd.cli.common import run

    opts = o
    try:
        return run("qacct", lambda client: _qacct(client, opts))
    except BrokenPipeError:
        sys.stderr.close()
        return 0


# ---------------------------------------------------------------- selection


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _fetch(client: Client, o: _Opts, server: str) -> tuple[list[Job], int]:
    """The jobs to account, and the exit status of any operand that failed."""
    from schedd.cli.client import ApiError
    from schedd.cli.common import BAD_ID, EXIT_OF, UNKNOWN_JOB, USAGE as USAGE_EXIT, parse_job_id

    if not o.ids:
        params = ["finished=1"] + ([] if o.active else ["state=finished"])
        if o.user:
            params.append(f"user={_quote(o.user)}")
        if o.queue:
            params.append(f"queue={_quote(o.queue)}")
        return client.pages("/api/v1/jobs?" + "&".join(params))["jobs"], 0
    rc = 0
    jobs: list[Job] = []
    history: list[Job] | None = None
    for text in o.ids:
        try:
            jid = parse_job_id(text).target
        except ValueError as e:
            sys.stderr.write(f"qacct: {e}\n")
            rc = BAD_ID
            continue
        try:  # a range is one request: the server answers with the subjobs that exist
            answer = client.call("GET", f"/api/v1/jobs/{_quote(jid)}")
        except ApiError as e:
            msg = f"Unknown Job Id {jid}.{server}" if e.code == "unknown_job" else f"{e.message} {jid}.{server}"
            sys.stderr.write(f"qacct: {msg}\n")
            rc = UNKNOWN_JOB if e.code == "unknown_job" else EXIT_OF.get(e.code, USAGE_EXIT)
            continue
        for job in answer["jobs"] if "jobs" in answer else [answer["job"]]:
            if job.get("array"):
                if history is None:
                    history = client.pages("/api/v1/jobs?finished=1")["jobs"]
                jobs += [j for j in history if j.get("parent") == job["id"]]
            else:
                jobs.append(job)
    return jobs, rc


def _keep(job: Job, o: _Opts, now: float) -> bool:
    if job.get("array"):
        return False  # an array parent: its subjobs are accounted
    if not o.active and job["state"] != "finished" and not o.ids:
        return False
    if o.user and job.get("owner") != o.user:
        return False
    if o.account and job.get("account") != o.account:
        return False
    if o.queue and job.get("queue") != o.queue:
        return False
    if o.start is not None and float(job.get("end_time") or now) < o.start:
        return False
    if o.end is not None and float(job.get("submit_time") or 0.0) >= o.end:
        return False
    return True


# ---------------------------------------------------------------- per job


def _iso(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch)) if epoch else "--"


def job_row(job: Job, server: str, now: float) -> dict[str, Any]:
    """The accounting record of one job (also the JSON shape of ``-F json``)."""
    chunks = job.get("chunks") or ()
    ncpus = sum(c.get("ncpus", 0) * c.get("count", 1) for c in chunks)
    ngpus = sum(c.get("ngpus", 0) * c.get("count", 1) for c in chunks)
    mem = sum(c.get("mem_mb", 0) * c.get("count", 1) for c in chunks)
    used = job.get("used") or {}
    submit, start, end = job.get("submit_time"), job.get("start_time"), job.get("end_time")
    elapsed = (float(end or now) - float(start)) if start else None
    gpu_s = float(used.get("gpu_s") or 0.0)
    if not gpu_s and elapsed:
        gpu_s = ngpus * elapsed  # a running job's GPU time is only reported when it ends
    return {
        "id": f"{job['id']}.{server}", "user": job.get("owner", ""), "account": job.get("account", ""),
        "queue": job.get("queue", ""), "name": job.get("name", ""),
        "submit_time": submit, "start_time": start, "end_time": end,
        "wait_s": (float(start) - float(submit)) if start and submit else None, "elapsed_s": elapsed,
        "state": job.get("finish_reason") or job["state"] if job["state"] == "finished" else job["state"],
        "exit_status": job.get("exit_status"),
        "req_ncpus": ncpus, "req_ngpus": ngpus, "req_mem_mb": mem, "req_walltime_s": job.get("walltime_s"),
        "cpu_s": float(used.get("cpu_s") or 0.0), "peak_rss_mb": int(used.get("peak_rss_mb") or 0),
        "gpu_hours": gpu_s / 3600.0,
        "gpu_util_pct": float(used.get("gpu_util_pct") or 0.0) if ngpus and start else None,
        "attempt": job.get("attempt", 0),
    }


def _job_cells(r: dict[str, Any]) -> list[str]:
    from schedd.cli.pbsfmt import duration, hms, mem_str

    def dur(v: float | None) -> str:
        return duration(v) if v is not None else "--"

    return [
        r["id"], r["user"], r["account"], r["queue"], _iso(r["submit_time"]), _iso(r["start_time"]),
        _iso(r["end_time"]), dur(r["wait_s"]), dur(r["elapsed_s"]), r["state"],
        "--" if r["exit_status"] is None else str(r["exit_status"]), str(r["req_ncpus"]), str(r["req_ngpus"]),
        mem_str(r["req_mem_mb"]) if r["req_mem_mb"] else "--",
        hms(r["req_walltime_s"]) if r["req_walltime_s"] else "--",
        hms(r["cpu_s"]) if r["start_time"] else "--", f"{r['peak_rss_mb']}mb" if r["start_time"] else "--",
        f"{r['gpu_hours']:.2f}", "--" if r["gpu_util_pct"] is None else f"{r['gpu_util_pct']:.0f}",
    ]


def _table(columns: tuple[tuple[str, int, bool], ...], rows: list[list[str]], parsable: bool) -> str:
    from schedd.cli.pbsfmt import trunc

    if parsable:
        return "".join("|".join(cells) + "\n" for cells in [[c[0] for c in columns], *rows])
    out = [" ".join(f"{t:>{w}}" if right else f"{t:<{w}}" for t, w, right in columns).rstrip() + "\n",
           " ".join("-" * w for _, w, _ in columns) + "\n"]
    for cells in rows:
        out.append(" ".join(f"{trunc(v, w):>{w}}" if right else f"{trunc(v, w):<{w}}"
                            for v, (_, w, right) in zip(cells, columns)).rstrip() + "\n")
    return "".join(out)


# ---------------------------------------------------------------- summary


def summary_rows(records: list[dict[str, Any]], usage: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (account, user): jobs, GPU/CPU/wall hours in the selection, decayed usage, fair-share factor."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(account: str, user: str) -> dict[str, Any]:
        return rows.setdefault((account, user), {"account": account, "user": user, "jobs": 0, "gpu_hours": 0.0,
                                                 "cpu_hours": 0.0, "wall_hours": 0.0, "usage": 0.0,
                                                 "fairshare": None})

    for r in records:
        s = row(r["account"], r["user"])
        s["jobs"] += 1
        s["gpu_hours"] += r["gpu_hours"]
        s["cpu_hours"] += r["cpu_s"] / 3600.0
        s["wall_hours"] += (r["elapsed_s"] or 0.0) / 3600.0
    for u in usage.get("usage") or ():
        row(u["account"], u["user"])["usage"] = float(u.get("usage") or 0.0)
    for key, factor in (usage.get("fairshare") or {}).items():
        account, _, user = key.partition("/")
        row(account, user)["fairshare"] = float(factor)
    return [rows[k] for k in sorted(rows)]


def _summary_cells(s: dict[str, Any]) -> list[str]:
    return [s["account"], s["user"], str(s["jobs"]), f"{s['gpu_hours']:.2f}", f"{s['cpu_hours']:.2f}",
            f"{s['wall_hours']:.2f}", f"{s['usage']:.1f}", "--" if s["fairshare"] is None else f"{s['fairshare']:.3f}"]


# ---------------------------------------------------------------- the command


def _qacct(client: Client, o: _Opts) -> int:
    import json

    server = str(client.call("GET", "/api/v1/server")["server_name"])
    jobs, rc = _fetch(client, o, server)
    now = time.time()
    records = [job_row(j, server, now) for j in jobs if _keep(j, o, now)]
    if o.summary:
        usage = client.call("GET", "/api/v1/usage")
        rows = summary_rows(records, usage)
        if o.user:
            rows = [r for r in rows if r["user"] == o.user]
        if o.account:
            rows = [r for r in rows if r["account"] == o.account]
        if o.fmt == "json":
            text = json.dumps({"summary": rows, "unit": usage.get("unit")}, indent=4) + "\n"
        else:
            text = _table(SUMMARY_COLUMNS, [_summary_cells(r) for r in rows], o.parsable)
    elif o.fmt == "json":
        text = json.dumps({"jobs": records}, indent=4) + "\n"
    else:
        text = _table(JOB_COLUMNS, [_job_cells(r) for r in records], o.parsable)
    sys.stdout.write(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
