"""qstat: jobs, queues and the server, printed as PBS Pro prints them.

The command runs in loops and scripts, so its hot path is short: plain
``qstat`` (and ``-w``, ``-x``, ``-t``, ``-J``, ``-E``) is one request, whose
answer the server prints (``table=qstat``, :mod:`schedd.cli.qstat_default`),
and one write. The other layouts ask for the server's name and the jobs
(filtered by the server: ``state=``, ``user=``, ``finished=``) and format them
here; everything else (nodes for a pending comment, queues, the ``-f``
attributes) is fetched or imported only when the layout asks for it. Layouts
live in :mod:`schedd.cli.qstat_default`, :mod:`schedd.cli.qstat_format` and
:mod:`schedd.cli.qstat_attrs`; options are parsed with getopt like PBS's, so
``-xf``, ``-an1`` and ``-Sj``-style bundles work.
"""

import sys

from schedd.cli import command

TYPE_CHECKING = False  # not typing's: importing typing costs more than this command may spend
if TYPE_CHECKING:
    from typing import Any

    from schedd.cli.client import Client
    from schedd.cli.qstat_attrs import Context

__all__ = ["main"]

USAGE = """usage:
qstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]
qstat [-a|-i|-r|-H|-T] [-J] [-t] [-u user] [-n] [-s] [-G] [-1] [-w]
\t[ job_identifier... | destination... ]
qstat -Q [-f] [-F format] [-D delim] [ destination... ]
qstat -q [-G] [ destination... ]
qstat -B [-f] [-F format] [-D delim] [ server_name... ]
qstat --help
"""

HELP = USAGE + """
Show jobs (default), queues (-Q, -q) or the server (-B) of schedd, in OpenPBS's layouts.

Job selection:
  (none)        every job not finished; array subjobs are hidden unless -t
  ID ...        those jobs: 17, 17.SERVER, 17[] (array), 17[3] (subjob), 17[2-5]
  QUEUE ...     the jobs of a queue (also QUEUE@SERVER)
  -x            include finished jobs (history); -H: only finished jobs
  -u USER[,USER] jobs of these users      -J  arrays only       -t  with subjobs
  -i            jobs not running (E H Q W)  -r  running jobs     -E  sort by id
Layouts:
  default       Job id  Name  User  Time Use S Queue   (-w: wide, -p: % done)
  -a            Req'd Memory/Time, NDS (chunks), TSK (cpus), Elap Time
  -T            like -a, with the Est Start Time of queued jobs (the backfill
                reservation's planned start): HH:MM today, "Tu 14" this week,
                then month or year; "--" when the scheduler has no estimate
  -n / -s       exec hosts / the scheduler's comment under each job (-1: same line)
  -f            every attribute (PBS long format; -w: one line each)
  -F json|dsv   -f as JSON ({"timestamp", "pbs_version", "pbs_server", "Jobs": ...})
                or as delimiter-separated values (-D DELIM, default |)
  -Q / -q       queues: counts per state / limits;   -B  server summary
States: Q queued, H held, W waiting (dependency or -a time), R running,
  B array with running subjobs, E exiting, F finished, X finished subjob.
Exit status: 0 ok (no job: nothing printed), 1 malformed id, 2 usage,
  35 finished job without -x, 153 unknown job, 170 unknown queue,
  186 no server; with several operands, the status of the last failure.

Examples:
  qstat                      my cluster's queue, PBS default layout
  qstat -u alice -T          alice's jobs with their estimated start times
  qstat -s 17                why job 17 is not running (its comment)
  qstat -xf 17               everything about job 17, even once finished
  qstat -t '42[]'            array 42 and its subjobs
  qstat -f -F json | jq '.Jobs[] | .job_state'
  qstat -Q                   queues;   qstat -B   server
"""

_OPTS = "ainpqrstwxu:fGHJQEBT1F:D:"
_ALT = set("aiurnsHTG")  # options that switch to the alternate layout
_PENDING = "held,queued,waiting,exiting"


class Options:
    """What the command line asked for (PBS's getopt letters as attributes)."""

    __slots__ = ("alt", "arrays", "by_id", "delim", "fmt", "full", "gb", "history", "mode", "nodes", "not_running",
                 "comments", "one_line", "percent", "running", "subjobs", "users", "wide", "with_history", "est",
                 "flags")

    def __init__(self) -> None:
        self.mode = "jobs"  # jobs | Q | q | B
        self.flags: set[str] = set()
        self.alt = self.arrays = self.by_id = self.full = self.gb = self.history = False
        self.nodes = self.not_running = self.comments = self.one_line = self.percent = False
        self.running = self.subjobs = self.wide = self.with_history = self.est = False
        self.delim = "|"
        self.fmt = "default"
        self.users: list[str] = []


def _parse(args: list[str]) -> tuple[Options, list[str]] | str:
    """(options, operands), or the message of a usage error (PBS's conflict rules)."""
    if not args:  # plain qstat: the defaults, without importing the option parser
        return Options(), []
    from schedd.cli.getopts import GetoptError, getopt

    try:
        pairs, operands = getopt(args, _OPTS)
    except GetoptError as e:
        return f"qstat: {e.msg}"
    o = Options()
    for flag, value in pairs:
        c = flag[1]
        o.flags.add(c)
        if c == "u":
            o.users += [u for u in value.split(",") if u]
        elif c == "F":
            if value.lower() not in ("default", "json", "dsv"):
                return f"qstat: -F {value}: expected json or dsv"
            o.fmt = value.lower()
        elif c == "D":
            o.delim = value
    f = o.flags
    conflict = "qstat: conflicting options."
    narrow_alt = bool(f & (_ALT | set("q1"))) and "w" not in f
    if ("B" in f and ("Q" in f or narrow_alt)) or ("Q" in f and narrow_alt):
        return conflict
    if len(f & set("airqH")) > 1 or ("1" in f and not f & set("ns")) or ("q" in f and "f" in f):
        return conflict
    if "w" in f and o.fmt != "default":
        return "qstat: option w cannot be used with -F"
    if "D" in f and o.fmt != "dsv":
        return conflict
    o.mode = "B" if "B" in f else "Q" if "Q" in f else "q" if "q" in f else "jobs"
    o.full = "f" in f or o.fmt != "default"  # PBS wants -f with -F; schedd implies it
    # -u -i -r -H select jobs and switch to the alternate layout, unless -f asks for every attribute
    o.alt = bool(f & set("anTsG")) or (bool(f & set("uirH")) and not o.full)
    o.wide, o.est, o.nodes, o.comments, o.one_line = "w" in f, "T" in f, "n" in f, "s" in f, "1" in f
    o.history, o.with_history = "H" in f, "x" in f or "H" in f
    o.running, o.not_running = "r" in f, "i" in f
    o.subjobs, o.arrays, o.percent, o.by_id, o.gb = "t" in f, "J" in f, "p" in f, "E" in f, "G" in f
    return o, operands


@command
def main(args: list[str]) -> int:
    """Show what the command line asks."""
    if "--help" in args:
        sys.stdout.write(HELP)
        return 0
    parsed = _parse(args)
    if isinstance(parsed, str):
        sys.stderr.write(f"{parsed}\n{USAGE}")
        return 2
    o, operands = parsed
    try:
        if o.mode == "jobs" and not (operands or o.alt or o.full or o.percent):
            code = _quick(o)
            if code is not None:
                return code
        from schedd.cli.common import run

        return run("qstat", lambda client: _qstat(client, o, operands))
    except BrokenPipeError:  # qstat | head
        sys.stderr.close()
        return 0


# ---------------------------------------------------------------- fetching


def _quick(o: Options) -> int | None:
    """Plain ``qstat`` (the default layout of every job): the server prints the
    lines (``table=qstat``, :mod:`schedd.cli.qstat_default`). Without -x, -J or
    -E it also selects the jobs (``subjobs=0`` unless -t) and answers the very
    text to print (``text/plain``), written as it came; otherwise the command
    picks among the lines. None when the server cannot answer that way (an
    older one, or none at all): the ordinary path then runs and reports any
    failure as usual.
    """
    from schedd.cli.client import ApiError, Client, Unreachable

    client = Client()
    table = "qstat-wide" if o.wide else "qstat"
    try:
        if o.with_history or o.arrays or o.by_id:
            printed = _printed(client, _jobs_path(o, table=table))
        else:
            answer = client.text(_jobs_path(o, table=table) + ("" if o.subjobs else "&subjobs=0"))
            if isinstance(answer, (bytes, bytearray)):
                return _write(answer)
            printed = _printed(client, _jobs_path(o, table=table), answer)  # an older server: every line
    except (ApiError, Unreachable):
        return None
    finally:
        client.close()
    text = None if printed is None else _select_lines(*printed, o)
    if text is None:
        return None
    if text:
        from schedd.cli.qstat_default import header

        sys.stdout.write(header(o.wide) + text)
        sys.stdout.flush()
    return 0


def _write(data: bytes | bytearray) -> int:
    """Write ``data`` (UTF-8) to stdout as it is when stdout encodes as UTF-8
    (no decoding and encoding again of a listing that can be MBs), else as text."""
    out = sys.stdout
    raw = getattr(out, "buffer", None)
    if raw is not None and out.encoding.lower().replace("-", "").replace("_", "") == "utf8":
        out.flush()
        raw.write(data)
        raw.flush()
    else:
        out.write(data.decode())
        out.flush()
    return 0


def _printed(client: "Client", path: str, answer: "Any" = None) -> tuple[str, str] | None:
    """The ids and the text of ``GET path`` (a ``table=``; ``answer``, its
    first page if already asked) and of every further page (``next``: history
    is paged); None if the server answered records."""
    if answer is None:
        answer = client.call("GET", path)
    if "text" not in answer:
        return None
    ids, text = [answer["ids"]], [answer["text"]]
    while answer.get("next") is not None:
        answer = client.call("GET", f"{path}&after={answer['next']}")
        ids.append(answer["ids"])
        text.append(answer["text"])
    return " ".join(ids), "".join(text)


def _select_lines(ids: str, text: str, o: Options) -> str | None:
    """What the command still selects among the server's lines (the n-th id is
    the job of the n-th line): subjobs only with -t, arrays only with -J, by id
    with -E. None if a line holds a newline of its own (a name the server took
    as is): the ordinary path, from records, then prints it."""
    if not (o.subjobs or o.arrays or o.by_id) and "]" not in ids:  # no array listed: nothing to hide
        return text
    pairs = list(zip(ids.split(), text.split("\n")))
    if len(pairs) != text.count("\n"):
        return None
    kept = [(jid, line) for jid, line in pairs
            if (o.subjobs or jid[-1] != "]" or jid[-2] == "[") and (not o.arrays or jid[-1] == "]")]
    if o.by_id:
        kept.sort(key=lambda p: _id_key(p[0]))
    return "".join([line + "\n" for _, line in kept])


def _jobs_path(o: Options, queue: str | None = None, table: str | None = None) -> str:
    params = [f"table={table}"] if table else []
    if o.with_history:
        params.append("finished=1")
    if o.history:
        params.append("state=finished")
    elif o.running:
        params.append("state=running")
    elif o.not_running:
        params.append(f"state={_PENDING}")
    if len(o.users) == 1:
        params.append(f"user={_quote(o.users[0])}")
    if queue:
        params.append(f"queue={_quote(queue)}")
    return "/api/v1/jobs" + ("?" + "&".join(params) if params else "")


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _keep(o: Options, users: set[str] | None, jid: str, owner: str, state: str) -> bool:
    """The client-side part of the selection: subjobs, arrays, several users, running only."""
    sub = jid[-1] == "]" and jid[-2] != "["
    if sub and not o.subjobs:
        return False
    if o.arrays and not (sub or jid.endswith("[]")):
        return False
    if users is not None and owner not in users:
        return False
    return not o.running or state in "RS"


def _select(jobs: "list[dict[str, Any]]", o: Options) -> "list[dict[str, Any]]":
    from schedd.cli.qstat_attrs import letter

    users = set(o.users) if len(o.users) > 1 else None
    out = [j for j in jobs if _keep(o, users, j["id"], j["owner"], letter(j))]
    if o.by_id:
        out.sort(key=lambda j: _id_key(j["id"]))
    return out


def _id_key(jid: str) -> tuple[int, int]:
    number, _, rest = jid.partition("[")
    index = rest[:-1]
    return int(number), int(index) if index.isdigit() else -1


class _Failures:
    """PBS's any_failed: every failure is reported, the last one is the exit status."""

    def __init__(self) -> None:
        self.code = 0

    def __call__(self, message: str, code: int) -> None:
        sys.stderr.write(f"qstat: {message}\n")
        self.code = code


def _by_operands(client: "Client", o: Options, server: str, operands: list[str],
                 failed: _Failures) -> "list[dict[str, Any]]":
    from schedd.cli.client import ApiError
    from schedd.cli.common import BAD_ID, EXIT_OF, FINISHED, UNKNOWN_JOB, UNKNOWN_QUEUE, USAGE, parse_job_id

    out: list[dict[str, Any]] = []
    queues: dict[str, Any] | None = None
    live_arrays: dict[str, bool] = {}
    for op in operands:
        try:
            target = parse_job_id(op).target
        except ValueError:
            target = ""
        if not target:  # a destination: QUEUE, QUEUE@SERVER or @SERVER (schedd's queues may start with a digit)
            queue = op.partition("@")[0]
            if queue:
                if queues is None:
                    queues = client.call("GET", "/api/v1/queues")["queues"]
                if queue not in queues:
                    if op[:1].isdigit():
                        failed(f"illegally formed job identifier: {op}", BAD_ID)
                    else:
                        failed(f"Unknown queue {queue}", UNKNOWN_QUEUE)
                    continue
            out += _select(client.pages(_jobs_path(o, queue or None))["jobs"], o)
            continue
        try:  # a range is one request: the server answers with the subjobs that exist
            answer = client.call("GET", f"/api/v1/jobs/{_quote(target)}")
        except ApiError as e:
            if e.code == "unknown_job":
                failed(f"Unknown Job Id {target}.{server}", UNKNOWN_JOB)
            else:
                failed(f"{e.message} {target}.{server}", EXIT_OF.get(e.code, USAGE))
            continue
        for job in answer["jobs"] if "jobs" in answer else [answer["job"]]:
            if job["state"] == "finished" and not o.with_history and not _subjob_of_live_array(client, job, live_arrays):
                failed(f"{job['id']}.{server} Job has finished, use -x or -H to obtain historical job information",
                       FINISHED)
                continue
            out.append(job)
            if o.subjobs and job["id"].endswith("[]"):
                every = client.pages(_jobs_path(_all_states(o)))["jobs"]
                out += [s for s in every if s.get("parent") == job["id"]]
    return out


def _all_states(o: Options) -> Options:
    """The same options without a state filter (to list an array's subjobs)."""
    copy = Options()
    copy.with_history = o.with_history
    return copy


def _subjob_of_live_array(client: "Client", job: "dict[str, Any]", live: dict[str, bool]) -> bool:
    """A finished subjob stays visible (state X) while its array runs (``live``:
    the answer per array, asked once)."""
    parent = job.get("parent")
    if not parent:
        return False
    if parent not in live:
        live[parent] = client.call("GET", f"/api/v1/jobs/{_quote(parent)}")["job"]["state"] != "finished"
    return live[parent]


def _context(client: "Client", o: Options, server: str, shown: "list[dict[str, Any]]",
             fetched: "list[dict[str, Any]] | None") -> "Context":
    """What the chosen layout needs beyond the jobs: nodes (pending comments), subjobs (arrays)."""
    from schedd.cli.qstat_attrs import Context

    nodes = None
    if o.full or o.comments:
        if any(j["state"] in ("queued", "held", "waiting") and j.get("reason") in ("Priority", "Resources",
                                                                                   "Can never run") for j in shown):
            nodes = client.call("GET", "/api/v1/nodes")["nodes"]
    subjobs: dict[str, list[dict[str, Any]]] = {}
    if o.full or o.percent:
        parents = [j for j in shown if j["id"].endswith("[]")]
        if parents:
            pool = fetched if not (o.running or o.not_running or o.history) else None  # every state needed
            if pool is None:
                pool = client.call("GET", "/api/v1/jobs")["jobs"]
            ids = {p["id"] for p in parents}
            for j in pool:
                if j.get("parent") in ids:
                    subjobs.setdefault(j["parent"], []).append(j)
            for p in parents:
                subjobs.setdefault(p["id"], [])
    return Context(server, nodes, subjobs)


# ---------------------------------------------------------------- the command


def _qstat(client: "Client", o: Options, operands: list[str]) -> int:
    srv = client.call("GET", "/api/v1/server")
    server = srv["server_name"]
    if o.mode == "B":
        return _server(srv, o)
    if o.mode in ("Q", "q"):
        return _queues(client, o, server, operands)
    failed = _Failures()
    fetched = None
    if operands:
        shown = _by_operands(client, o, server, operands, failed)
    else:
        fetched = client.pages(_jobs_path(o))["jobs"]
        shown = _select(fetched, o)
    ctx = _context(client, o, server, shown, fetched)
    ctx.client = client
    if o.alt:
        from schedd.cli.qstat_format import alt_table

        text = alt_table(shown, ctx, wide=o.wide, est=o.est, nodes=o.nodes, comments=o.comments,
                         one_line=o.one_line, gb=o.gb)
    elif o.full:
        text = _full(shown, ctx, o)
    else:
        from schedd.cli.qstat_format import default_table, rows

        text = default_table(rows(shown, ctx, o.percent), server, wide=o.wide, percent=o.percent)
    sys.stdout.write(text)
    sys.stdout.flush()
    return failed.code


def _full(jobs: "list[dict[str, Any]]", ctx: "Context", o: Options) -> str:
    from schedd.cli.pbsfmt import render
    from schedd.cli.qstat_attrs import job_attrs

    objects = {f"{j['id']}.{ctx.server}": job_attrs(j, ctx) for j in jobs}
    if ctx.client is not None:  # each custom metric's last value (GET /metrics/last)
        from schedd.cli.qstat_attrs import metric_attrs, metric_lasts

        lasts = metric_lasts(ctx.client, jobs)
        for j in jobs:
            objects[f"{j['id']}.{ctx.server}"] += metric_attrs(lasts.get(j["id"], {}))
    return render("Job Id", "Jobs", objects, ctx.server, o.fmt, o.delim, one_line=o.wide)


def _queues(client: "Client", o: Options, server: str, operands: list[str]) -> int:
    from schedd.cli.common import UNKNOWN_QUEUE

    data = client.call("GET", "/api/v1/queues")["queues"]
    failed = _Failures()
    chosen = data
    if operands:
        chosen = {}
        for op in operands:
            name = op.partition("@")[0]
            if not name:
                chosen.update(data)
            elif name in data:
                chosen[name] = data[name]
            else:
                failed(f"Unknown queue {name}", UNKNOWN_QUEUE)
    if o.mode == "q":
        from schedd.cli.qstat_format import queue_alt_table

        text = queue_alt_table(server, chosen) if chosen else ""
    elif o.full:
        from schedd.cli.pbsfmt import render
        from schedd.cli.qstat_attrs import queue_attrs

        objects = {name: queue_attrs(q) for name, q in chosen.items()}
        text = render("Queue", "Queue", objects, server, o.fmt, o.delim, one_line=o.wide)
    else:
        from schedd.cli.qstat_format import queue_table

        text = queue_table(chosen) if chosen else ""
    sys.stdout.write(text)
    return failed.code


def _server(srv: "dict[str, Any]", o: Options) -> int:
    if o.full:
        from schedd.cli.pbsfmt import render
        from schedd.cli.qstat_attrs import server_attrs

        name = srv["server_name"]
        sys.stdout.write(render("Server", "Server", {name: server_attrs(srv)}, name, o.fmt, o.delim, o.wide))
    else:
        from schedd.cli.qstat_format import server_table

        sys.stdout.write(server_table(srv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
