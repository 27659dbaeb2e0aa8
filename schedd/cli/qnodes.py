"""qnodes: the virtual nodes, like PBS's ``pbsnodes`` (layouts from ``src/cmds/pbsnodes.c``).

A node of ``GET /api/v1/nodes`` maps onto PBS's vocabulary: ``up`` is
``free`` (``job-busy`` once its GPUs or CPUs are all taken), ``down``,
``offline`` and schedd's ``draining`` and ``reserving`` (a Kubernetes pod not
running yet, its comment Kubernetes' reason) stay as they are (``,job-busy`` is added
when a node out of service is still full). Resources are
``resources_available.*`` / ``resources_assigned.*``; each GPU is one line
with its model, memory, utilisation and job, and GPUs that an agent only
pretends to have (no NVML on the machine) say ``fake=True``. ``enforcement``
says how the node's agent keeps limits and kills jobs: ``cgroup2`` (a group
per job rank; ``+memory-v1`` etc. when a controller comes from a cgroup v1
hierarchy) or ``proctree`` (RSS sampling and the process tree).
"""

from __future__ import annotations

import sys

from schedd.cli import command

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import Any

    from schedd.cli.client import Client
    from schedd.cli.pbsfmt import Attr

    Node = dict[str, Any]

__all__ = ["main"]


USAGE = """usage:\tqnodes [-{o|r}][-C comment] node node ...
\tqnodes -l
\tqnodes -a[S[j][L]][-F format][-D delim]
\tqnodes [S[j][L]][-F format][-D delim] node node ...
\tqnodes --help
"""

HELP = USAGE + """
Show the nodes of schedd, or take them out of service and back (operators).

  (none), -a      every node with all its attributes (pbsnodes -a)
  NODE ...        only these nodes
  -S              one line per node: vnode state OS hardware host queue mem
                  ncpus nmics ngpus comment (totals)
  -Sj             one line per node with jobs and free/total resources:
                  vnode state njobs run susp mem f/t ncpus f/t nmics f/t ngpus f/t jobs
  -L              with -S: do not truncate fields
  -l              nodes that are down, offline, draining or reserving: name state comment
  -o NODE ...     mark offline (running jobs go on, nothing new starts)
  -r NODE ...     clear offline (or draining)
  -C COMMENT      with -o / -r: the node's comment
  -F json|dsv     machine-readable output (-D DELIM for dsv, default |)

Each GPU is listed as gpu.N = model=..,uuid=..,mem=..,mem_used=..,util=..%,job=..
and GPUs simulated by an agent on a machine without NVML carry fake=True
(the node then also says fake_gpus = True). enforcement = cgroup2 (one
cgroup per job: memory limit kept by the kernel, kill by cgroup.kill;
+memory-v1/+cpu-v1 where those controllers are cgroup v1) or proctree
(memory sampled, processes found through the process tree).

Exit status: 0 ok, 2 usage, 153 unknown node, 159 not an operator (-o/-r),
186 no server.

Examples:
  qnodes -Sj                       who runs where, free/total GPUs per node
  qnodes -a node03                 everything about node03, GPU by GPU
  qnodes -o -C "bad GPU 2" node03  take node03 out of service
  qnodes -r node03                 and back
  qnodes -l                        what is out of service, and why
"""


def pbs_state(n: Node) -> str:
    """PBS's node state: free, job-busy, down, offline (schedd adds draining)."""
    busy = bool(n.get("jobs")) and ((n["ngpus"] > 0 and n["ngpus_free"] == 0) or n["cpus_assigned"] >= n["cpus"])
    if n["state"] == "up":
        return "job-busy" if busy else "free"
    return f"{n['state']},job-busy" if busy else n["state"]


def _gpu(g: dict[str, Any], fake: bool, server: str) -> str:
    from schedd.cli.pbsfmt import mem_str

    util = "--" if g.get("util_pct") is None else f"{g['util_pct']:.0f}%"
    used = "--" if g.get("mem_used_mb") is None else mem_str(int(g["mem_used_mb"]))
    text = (f"model={g.get('model', '')},uuid={g.get('uuid', '')},mem={mem_str(int(g.get('mem_mb') or 0))},"
            f"mem_used={used},util={util},job={g['job'] + '.' + server if g.get('job') else '--'}")
    return text + (",fake=True" if fake else "")


def node_attrs(n: Node, server: str) -> list[Attr]:
    """``pbsnodes -a`` attributes of one node, then schedd's GPU and telemetry lines."""
    from schedd.cli.pbsfmt import ctime, mem_kb

    name = n["name"]
    a: list[Attr] = [("Mom", None, n.get("address") or name), ("ntype", None, "PBS"),
                     ("state", None, pbs_state(n)), ("pcpus", None, str(n["cpus"]))]
    if n.get("jobs"):
        a.append(("jobs", None, ", ".join(f"{j}.{server}" for j in n["jobs"])))
    a += [
        ("resources_available", "arch", "linux"),
        ("resources_available", "host", name),
        ("resources_available", "mem", mem_kb(n["mem_mb"])),
        ("resources_available", "ncpus", str(n["cpus"])),
        ("resources_available", "ngpus", str(n["ngpus"])),
        ("resources_available", "vnode", name),
        ("resources_assigned", "mem", mem_kb(n.get("mem_assigned_mb") or 0)),
        ("resources_assigned", "ncpus", str(n.get("cpus_assigned") or 0)),
        ("resources_assigned", "ngpus", str(n["ngpus"] - n["ngpus_free"])),
        ("resv_enable", None, "True"),
        ("sharing", None, "default_shared"),
    ]
    if n.get("comment"):
        a.append(("comment", None, n["comment"]))
    fake = bool(n.get("fake_gpus"))
    if n["ngpus"]:
        a.append(("fake_gpus", None, "True" if fake else "False"))
    a += [("gpu", str(g["index"]), _gpu(g, fake, server)) for g in n.get("gpus") or ()]
    if n.get("cpu_pct") is not None:
        a.append(("cpupercent", None, f"{n['cpu_pct']:.0f}"))
    if n.get("mem_used_mb") is not None:
        a.append(("mem_used", None, mem_kb(n["mem_used_mb"])))
    if n.get("last_seen"):
        a.append(("last_seen", None, ctime(n["last_seen"])))
    if n.get("enforcement"):  # how the agent keeps limits and kills: cgroup2[+memory-v1...] or proctree
        a.append(("enforcement", None, n["enforcement"]))
    return a


def _full_text(n: Node, server: str) -> str:
    lines = [n["name"]]
    for name, res, value in node_attrs(n, server):
        lines.append(f"     {name}.{res} = {value}" if res else f"     {name} = {value}")
    return "\n".join(lines) + "\n\n"


def _full_json(n: Node, server: str) -> dict[str, Any]:
    """encode_to_json: resources nest; resources_assigned keeps non-zero values; jobs is a list."""
    from schedd.cli.pbsfmt import attrs_json

    attrs = [a for a in node_attrs(n, server) if a[0] not in ("jobs", "gpu")
             and not (a[0] == "resources_assigned" and a[2].startswith("0"))]
    obj = attrs_json(attrs)
    obj["jobs"] = [f"{j}.{server}" for j in n.get("jobs") or ()]
    obj["gpus"] = [dict(g, fake=bool(n.get("fake_gpus"))) for g in n.get("gpus") or ()]
    return obj


def _kb_scaled(kb: int) -> tuple[int, int]:
    """pbsnodes -S: divide by 1024 (rounding PBS's way) until at most 3 digits; (value, magnitude)."""
    prefix = 1
    while kb > 999:
        kb = ((kb % 1024) + kb) >> 10
        prefix += 1
    return kb, prefix


def _summary_fields(n: Node, server: str, long: bool) -> dict[str, Any]:
    total_kb = int(n["mem_mb"]) * 1024
    assigned_kb = int(n.get("mem_assigned_mb") or 0) * 1024
    t, tp = _kb_scaled(total_kb)
    f, fp = _kb_scaled(total_kb - assigned_kb)
    letters = " kmgtp?"
    jobs = [j.removesuffix(f".{server}") for j in n.get("jobs") or ()]
    return {
        "state": pbs_state(n) if long else pbs_state(n).split(",")[0],
        "mem": f"{t}{letters[tp]}b", "mem_ft": f"{f}{letters[fp]}b/{t}{letters[tp]}b",
        "ncpus": str(n["cpus"]), "ncpus_ft": f"{n['cpus'] - (n.get('cpus_assigned') or 0)}/{n['cpus']}",
        "ngpus": str(n["ngpus"]), "ngpus_ft": f"{n['ngpus_free']}/{n['ngpus']}",
        "jobs": jobs, "comment": n.get("comment") or "--",
    }


def _summary(nodes: list[Node], server: str, jobs_view: bool, long: bool, fmt: str, delim: str) -> str:
    out: list[str] = []
    if fmt == "default":
        if jobs_view:
            out += ["                                                        mem       ncpus   nmics   ngpus\n",
                    "vnode           state           njobs   run   susp      f/t        f/t     f/t     f/t   jobs\n",
                    "--------------- --------------- ------ ----- ------ ------------ ------- ------- ------- -------\n"]
        else:
            out += ["vnode           state           OS       hardware host            queue        mem     ncpus   "
                    "nmics   ngpus  comment\n",
                    "--------------- --------------- -------- -------- --------------- ---------- -------- ------- "
                    "------- ------- ---------\n"]
    body: dict[str, Any] = {}
    for n in nodes:
        s = _summary_fields(n, server, long)
        name, njobs = n["name"], len(s["jobs"])
        jobs = ",".join(s["jobs"]) or "--"
        if fmt == "json":
            if jobs_view:
                body[name] = {"State": s["state"], "Total Jobs": njobs, "Running Jobs": njobs, "Suspended Jobs": 0,
                              "mem f/t": s["mem_ft"], "ncpus f/t": s["ncpus_ft"], "nmics f/t": "0/0",
                              "ngpus f/t": s["ngpus_ft"], "jobs": s["jobs"]}
            else:
                body[name] = {"State": s["state"], "OS": "--", "hardware": "--", "host": name, "queue": "--",
                              "Memory": s["mem"], "ncpus": int(s["ncpus"]), "nmics": 0, "ngpus": int(s["ngpus"]),
                              "comment": s["comment"]}
        elif fmt == "dsv":
            if jobs_view:
                out.append(delim.join([f"vnode={name}", f"state={s['state']}", f"njobs={njobs}", f"run={njobs}",
                                       "susp=0", f"mem(f/t)={s['mem_ft']}", f"ncpus(f/t)={s['ncpus_ft']}",
                                       "nmics(f/t)=0/0", f"ngpus(f/t)={s['ngpus_ft']}", f"jobs={jobs}"]) + "\n")
            else:
                out.append(delim.join([f"vnode={name}", f"state={s['state']}", "OS=--", "hardware=--",
                                       f"host={name}", "queue=--", f"mem={s['mem']}", f"ncpus={s['ncpus']}",
                                       "nmics=0", f"ngpus={s['ngpus']}", f"comment={s['comment']}"]) + "\n")
        elif jobs_view:
            if long:
                out.append(f"{name:<15} {s['state']:<15} {njobs:6d} {njobs:5d} {0:6d} {s['mem_ft']:>12} "
                           f"{s['ncpus_ft']:>7} {'0/0':>7} {s['ngpus_ft']:>7} {jobs}\n")
            else:
                out.append(f"{name:<15.15} {s['state']:<15.15} {njobs:6d} {njobs:5d} {0:6d} {s['mem_ft']:>12.12} "
                           f"{s['ncpus_ft']:>7.7} {'0/0':>7.7} {s['ngpus_ft']:>7.7} {jobs}\n")
        elif long:
            out.append(f"{name:<15} {s['state']:<15} {'--':<8} {'--':<8} {name:<15} {'--':<10} {s['mem']:>8} "
                       f"{s['ncpus']:>7} {'0':>7} {s['ngpus']:>7} {s['comment']}\n")
        else:
            out.append(f"{name:<15.15} {s['state']:<15.15} {'--':<8.8} {'--':<8.8} {name:<15.15} {'--':<10.10} "
                       f"{s['mem']:>8.8} {s['ncpus']:>7.7} {'0':>7.7} {s['ngpus']:>7.7} {s['comment']}\n")
    if fmt == "json":
        from schedd.cli.pbsfmt import json_document

        return json_document(server, "nodes", body)
    return "".join(out)


class _Opts:
    __slots__ = ("all", "comment", "delim", "fmt", "jobs", "list_marked", "long", "offline", "quiet", "reset",
                 "summary")

    def __init__(self) -> None:
        self.all = self.jobs = self.list_marked = self.long = self.offline = False
        self.quiet = self.reset = self.summary = False
        self.comment: str | None = None
        self.delim = "|"
        self.fmt = "default"


def _parse(args: list[str]) -> tuple[_Opts, list[str]] | str:
    from schedd.cli.getopts import GetoptError, getopt

    try:
        pairs, names = getopt(args, "aC:D:F:jlLoqrS")
    except GetoptError as e:
        return f"qnodes: {e.msg}"
    o = _Opts()
    for flag, value in pairs:
        c = flag[1]
        if c == "C":
            o.comment = value
        elif c == "D":
            o.delim = value
        elif c == "F":
            if value.lower() not in ("default", "json", "dsv"):
                return f"qnodes: -F {value}: expected json or dsv"
            o.fmt = value.lower()
        else:
            setattr(o, {"a": "all", "j": "jobs", "l": "list_marked", "L": "long", "o": "offline", "q": "quiet",
                        "r": "reset", "S": "summary"}[c], True)
    changes = o.offline or o.reset
    if o.offline and o.reset:
        return "qnodes: -o and -r exclude each other"
    if changes and (not names or o.all or o.list_marked or o.summary):
        return "qnodes: -o and -r need node names and no listing option"
    if o.list_marked and (names or o.all or o.summary):
        return "qnodes: -l takes no node names"
    if o.comment is not None and not changes:
        return "qnodes: -C goes with -o or -r (schedd cannot set a comment alone)"
    if (o.jobs or o.long) and not o.summary:
        return "qnodes: -j and -L go with -S"
    return o, names


@command
def main(args: list[str]) -> int:
    if "--help" in args:
        sys.stdout.write(HELP)
        return 0
    parsed = _parse(args)
    if isinstance(parsed, str):
        sys.stderr.write(f"{parsed}\n{USAGE}")
        return 2
    o, names = parsed
    from schedd.cli.common import run

    try:
        return run("qnodes", lambda client: _qnodes(client, o, names))
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def _server_name(client: Client) -> str:
    return str(client.call("GET", "/api/v1/server")["server_name"])


def _qnodes(client: Client, o: _Opts, names: list[str]) -> int:
    from schedd.cli.client import ApiError
    from schedd.cli.common import EXIT_OF, USAGE as USAGE_EXIT

    if o.offline or o.reset:
        return _mark(client, o, names)
    rc = 0
    if names:
        nodes = []
        for name in names:
            try:
                nodes.append(client.call("GET", f"/api/v1/nodes/{_quote(name)}")["node"])
            except ApiError as e:
                sys.stderr.write(f"Node: {name},  Error: {e.message}\n")
                rc = EXIT_OF.get(e.code, USAGE_EXIT)
    else:
        nodes = client.call("GET", "/api/v1/nodes")["nodes"]
    if o.list_marked:
        text = "".join(f"{n['name']:<20} {pbs_state(n)} {n.get('comment') or ''}\n" for n in nodes
                       if n["state"] in ("down", "offline", "draining", "reserving"))
        sys.stdout.write(text)
        return rc
    server = _server_name(client)
    if o.summary:
        text = _summary(nodes, server, o.jobs, o.long, o.fmt, o.delim)
    elif o.fmt == "json":
        from schedd.cli.pbsfmt import json_document

        text = json_document(server, "nodes", {n["name"]: _full_json(n, server) for n in nodes})
    elif o.fmt == "dsv":
        from schedd.cli.pbsfmt import attrs_dsv

        text = "".join(attrs_dsv(f"Name={n['name']}", node_attrs(n, server), o.delim) for n in nodes)
    else:
        text = "".join(_full_text(n, server) for n in nodes)
    sys.stdout.write(text)
    return rc


def _mark(client: Client, o: _Opts, names: list[str]) -> int:
    """-o / -r: every node is tried; the last failure is the exit status."""
    from schedd.cli.client import ApiError
    from schedd.cli.common import EXIT_OF, USAGE as USAGE_EXIT

    rc = 0
    for name in names:
        try:
            if o.reset:
                node = client.call("GET", f"/api/v1/nodes/{_quote(name)}")["node"]
                if node["state"] not in ("offline", "draining"):
                    continue  # like pbsnodes -r on a node that is not offline: nothing to clear
            action = "offline" if o.offline else "resume"
            client.call("POST", f"/api/v1/nodes/{_quote(name)}/{action}", {"comment": o.comment or ""})
        except ApiError as e:
            if not o.quiet:
                sys.stderr.write(f"qnodes: Error marking node {name} - {e.message}\n")
            rc = EXIT_OF.get(e.code, USAGE_EXIT)
    return rc


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


if __name__ == "__main__":
    sys.exit(main())
