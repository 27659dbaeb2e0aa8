"""A job as PBS attributes: ``qstat -f`` / ``-F json`` lines and the scheduler comment.

A job here is the JSON of ``GET /api/v1/jobs`` (schedd's JobRecord), read as a
plain dict: no msgspec, no schedd.daemon.records on the command path. The mapping:

- states: held H, queued Q, waiting W, running R (B for an array parent with
  subjobs running), exiting E, finished F (X for a finished subjob);
- resources: the chunks are ``Resource_List.select`` (``N:ncpus=..:mem=..:ngpus=..``
  joined by ``+``) and their sums ``ncpus``, ``ngpus``, ``mem``, ``nodect``;
- ``comment``: PBS's scheduler comment for the pending reason (Slurm-named in
  schedd), e.g. ``Not Running: Insufficient amount of resource: ngpus (R: 2
  A: 0 T: 8)`` where R is the job's request, A what the up nodes have free and
  T what all nodes have (from ``GET /api/v1/nodes``); ``Job run at ... on
  (...)`` once it runs.
"""

from __future__ import annotations

import math
import time

from schedd.cli.pbsfmt import ctime, hms, mem_kb, mem_str, pbs_version, run_at
from schedd.cli.qstat_default import LETTERS
from schedd.cli.qstat_default import letter as state_letter

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import Any

    from schedd.cli.pbsfmt import Attr

    Job = dict[str, Any]

__all__ = [
    "LETTERS",
    "Context",
    "comment",
    "exec_host",
    "exec_vnode",
    "is_parent",
    "is_subjob",
    "job_attrs",
    "letter",
    "metric_attrs",
    "metric_lasts",
    "metric_value",
    "queue_attrs",
    "ranges",
    "server_attrs",
    "totals",
]


_PENDING = ("held", "queued", "waiting")


class Context:
    """What rendering needs beyond the job: server name, nodes, subjobs, the clock."""

    __slots__ = ("client", "nodes", "now", "server", "subjobs")

    def __init__(self, server: str, nodes: list[dict[str, Any]] | None = None,
                 subjobs: dict[str, list[Job]] | None = None) -> None:
        self.server = server
        self.nodes = nodes
        self.subjobs = subjobs if subjobs is not None else {}
        self.now = time.time()
        self.client: Any = None  # set by qstat -f: metric_lasts asks it for the jobs' metrics


def is_parent(jid: str) -> bool:
    return jid.endswith("[]")


def is_subjob(jid: str) -> bool:
    return jid.endswith("]") and not jid.endswith("[]")


def letter(job: Job) -> str:
    """The PBS ``job_state`` letter (B: array begun, X: subjob finished)."""
    return state_letter(job["state"], job["id"])


def totals(job: Job) -> tuple[int, int, int, int]:
    """(ncpus, ngpus, mem_mb, nodect) summed over the chunks."""
    ncpus = ngpus = mem = nodes = 0
    for c in job.get("chunks") or ():
        n = c.get("count", 1)
        ncpus += c.get("ncpus", 0) * n
        ngpus += c.get("ngpus", 0) * n
        mem += c.get("mem_mb", 0) * n
        nodes += n
    return ncpus, ngpus, mem, nodes


def _select(job: Job) -> str:
    terms = []
    for c in job.get("chunks") or ():
        t = f"{c.get('count', 1)}:ncpus={c.get('ncpus', 0)}"
        if c.get("mem_mb"):
            t += f":mem={mem_str(c['mem_mb'])}"
        if c.get("ngpus"):
            t += f":ngpus={c['ngpus']}"
        terms.append(t)
    return "+".join(terms)


def exec_host(job: Job) -> str:
    """``node01/0*2+node02/0*2`` (host/slot*ncpus), or "" before the job runs."""
    return "+".join(f"{e['node']}/0*{e['ncpus']}" for e in job.get("exec_nodes") or ())


def exec_vnode(job: Job) -> str:
    """``(node01:ncpus=2:mem=4194304kb:ngpus=4)+(...)``."""
    parts = []
    for e in job.get("exec_nodes") or ():
        p = f"({e['node']}:ncpus={e['ncpus']}"
        if e.get("mem_mb"):
            p += f":mem={mem_kb(e['mem_mb'])}"
        if e.get("gpus"):
            p += f":ngpus={len(e['gpus'])}"
        parts.append(p + ")")
    return "+".join(parts)


def ranges(indices: list[int]) -> str:
    """PBS's index list: ``1-3,5,7-9``.

    >>> ranges([1, 2, 3, 5, 7, 8, 9])
    '1-3,5,7-9'
    """
    out: list[str] = []
    start = prev = None
    for i in sorted(indices):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(out)


# ---------------------------------------------------------------- the comment


def _insufficient(job: Job, nodes: list[dict[str, Any]], never: bool) -> str | None:
    """PBS's ``Insufficient amount of resource: RES (R: .. A: .. T: ..)``, or a node-fit message."""
    ncpus, ngpus, mem, _ = totals(job)
    up = [n for n in nodes if n.get("state") == "up"]
    checks = (
        ("ngpus", ngpus, sum(n["ngpus_free"] for n in up), sum(n["ngpus"] for n in nodes), str),
        ("ncpus", ncpus, sum(n["cpus"] - n["cpus_assigned"] for n in up), sum(n["cpus"] for n in nodes), str),
        ("mem", mem, sum(n["mem_mb"] - n["mem_assigned_mb"] for n in up), sum(n["mem_mb"] for n in nodes), mem_str),
    )
    for res, req, avail, total, fmt in checks:
        if req and req > (total if never else avail):
            return f"Insufficient amount of resource: {res} (R: {fmt(req)} A: {fmt(avail)} T: {fmt(total)})"
    # The totals would do; does every chunk find a node of its own?
    if never:
        free = sorted(((n["ngpus"], n["cpus"], n["mem_mb"]) for n in nodes), reverse=True)
    else:
        free = sorted(((n["ngpus_free"], n["cpus"] - n["cpus_assigned"], n["mem_mb"] - n["mem_assigned_mb"])
                       for n in up), reverse=True)
    for c in sorted(job.get("chunks") or (), key=lambda c: (c.get("ngpus", 0), c.get("ncpus", 0)), reverse=True):
        for _ in range(c.get("count", 1)):
            want = (c.get("ngpus", 0), c.get("ncpus", 0), c.get("mem_mb", 0))
            fit = next((i for i, f in enumerate(free) if all(f[k] >= want[k] for k in range(3))), None)
            if fit is None:
                return "Not enough total nodes available" if never else "Not enough free nodes available"
            free.pop(fit)
    return None


def comment(job: Job, ctx: Context) -> str:
    """The ``comment`` attribute as PBS's scheduler and server would write it."""
    state, reason = job["state"], job.get("reason")
    said = job.get("comment") or ""
    queue, owner = job.get("queue", ""), job.get("owner", "")
    if state in ("running", "exiting"):
        if said or is_parent(job["id"]) or not job.get("start_time"):
            return said
        return f"Job run at {run_at(job['start_time'])} on {exec_vnode(job)}"
    if state == "finished":
        extra = said or (job.get("finish_reason") or "")
        if extra in ("completed", "failed"):
            extra = ""
        if job.get("start_time") and job.get("exec_nodes"):
            text = f"Job run at {run_at(job['start_time'])} on {exec_vnode(job)} and finished"
            return f"{text}: {extra}" if extra else text
        return extra or "Job finished"
    if reason in ("Priority", "Resources", "Can never run"):
        never = reason == "Can never run"
        prefix = "Can Never Run: " if never else "Not Running: "
        if ctx.nodes is not None:
            why = _insufficient(job, ctx.nodes, never)
            if why:
                return prefix + why
        if never:
            return prefix + "Insufficient amount of resource"
        return prefix + "Job would conflict with reservation or top job"
    fixed = {
        "QueueLimit": f"Not Running: Queue {queue} job limit has been reached.",
        "QOSMaxJobsPerUserLimit": f"Not Running: User has reached queue {queue} running job limit.",
        "QOSMaxGRESPerUser": f"Not Running: would exceed user {owner}'s limit on resource ngpus in queue {queue}",
        "JobArrayTaskLimit": "Not Running: Array job has reached its max_run_subjobs limit",
        "Preempting": "Not Running: Waiting for preempted jobs to exit",
    }
    if reason in fixed:
        return fixed[reason]
    if said:
        return said
    if reason == "JobHeldUser" or state == "held":
        holds = job.get("holds") or "u"
        who = owner if "u" in holds else ("an operator" if "o" in holds else "the system")
        return f"Job held by {who}"
    if reason == "Dependency":
        return "Not Running: Job has an unsatisfied dependency"
    if reason == "BeginTime" and job.get("eligible_time"):
        return f"Not Running: Job is not eligible before {ctime(job['eligible_time'])}"
    return ""


# ---------------------------------------------------------------- -f attributes


def _run_count(job: Job) -> int:
    """Times the job was started: attempt + 1 once it has run (PBS's run_count)."""
    attempt = int(job.get("attempt") or 0)
    ran = job["state"] in ("running", "exiting") or (job["state"] == "finished" and bool(job.get("start_time")))
    return attempt + 1 if ran else attempt


def _used(job: Job, ctx: Context) -> list[Attr]:
    start = job.get("start_time")
    if not start or is_parent(job["id"]):
        return []
    used = job.get("used") or {}
    end = job.get("end_time") or ctx.now
    wall = max(0.0, end - start)
    cpu = float(used.get("cpu_s") or 0.0)
    ncpus, ngpus, _, _ = totals(job)
    out: list[Attr] = [
        ("resources_used", "cpupercent", str(int(100 * cpu / wall)) if wall > 0 and math.isfinite(cpu / wall) else "0"),
        ("resources_used", "cput", hms(cpu)),
    ]
    if ngpus:
        out.append(("resources_used", "gpu_util", f"{float(used.get('gpu_util_pct') or 0.0):.0f}"))
    out += [
        ("resources_used", "mem", mem_kb(used.get("peak_rss_mb") or 0)),
        ("resources_used", "ncpus", str(ncpus)),
        ("resources_used", "ngpus", str(ngpus)),
        ("resources_used", "walltime", hms(wall)),
    ]
    return out


def metric_value(last: dict[str, Any]) -> str:
    """``0.31 (step 120)``: a custom metric's last value as ``qstat -f`` shows it.

    >>> metric_value({"value": 0.3100004, "step": 120}), metric_value({"value": 2.0, "step": None})
    ('0.31 (step 120)', '2')
    """
    text = f"{float(last['value']):.6g}"
    return f"{text} (step {last['step']})" if last.get("step") is not None else text


#: Job ids per ``GET /metrics/last`` (the request line stays a few KB).
LAST_CHUNK = 200


def _quoted(jid: str) -> str:
    return jid.replace("[", "%5B").replace("]", "%5D")


def metric_lasts(client: Any, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """Each job's last metric values, for the jobs that ran: ``GET /metrics/last``
    for LAST_CHUNK jobs at a time, or one ``GET .../metrics?series=0`` per job
    from a server without it."""
    ids = [j["id"] for j in jobs if j.get("start_time") and not is_parent(j["id"])]
    out: dict[str, dict[str, Any]] = {}
    try:
        for i in range(0, len(ids), LAST_CHUNK):
            chunk = ",".join(_quoted(jid) for jid in ids[i:i + LAST_CHUNK])
            out.update(client.call("GET", f"/api/v1/metrics/last?jobs={chunk}").get("jobs", {}))
        return out
    except Exception:  # an older server: one request a job
        pass
    for jid in ids:
        try:
            out[jid] = client.call("GET", f"/api/v1/jobs/{_quoted(jid)}/metrics?series=0").get("last", {})
        except Exception:  # the job was purged meanwhile: no lines
            continue
    return out


def metric_attrs(last: dict[str, Any]) -> list[Attr]:
    """``resources_used.metric.NAME = VALUE (step N)`` for each custom metric in a
    job's ``last`` values (:func:`metric_lasts`)."""
    return [("resources_used", f"metric.{k}", metric_value(v))
            for k, v in sorted(last.items()) if v.get("kind", "custom") == "custom"]


def _array(job: Job, ctx: Context) -> list[Attr]:
    jid, server = job["id"], ctx.server
    if is_subjob(jid):
        return [("array_id", None, f"{job.get('parent') or jid.split('[')[0] + '[]'}.{server}"),
                ("array_index", None, str(job.get("array_index", jid.split("[")[1][:-1])))]
    spec = job.get("array")
    if not spec:
        return []
    step = spec.get("step", 1)
    submitted = f"{spec['start']}-{spec['end']}" + (f":{step}" if step != 1 else "")
    out: list[Attr] = [("array", None, "True"), ("array_indices_submitted", None, submitted)]
    subs = ctx.subjobs.get(jid)
    if subs is not None:
        total = len(range(spec["start"], spec["end"] + 1, step))
        queued = [s for s in subs if s["state"] in _PENDING]
        running = sum(s["state"] == "running" for s in subs)
        exiting = sum(s["state"] == "exiting" for s in subs)
        remaining = ranges([int(s["array_index"]) for s in queued if s.get("array_index") is not None])
        if remaining:
            out.append(("array_indices_remaining", None, remaining))
        done = total - len(queued) - running - exiting
        out.append(("array_state_count", None,
                    f"Queued:{len(queued)} Running:{running} Exiting:{exiting} Expired:{done}"))
    if spec.get("max_running"):
        out.append(("max_run_subjobs", None, str(spec["max_running"])))
    return out


def job_attrs(job: Job, ctx: Context) -> list[Attr]:
    """Every attribute ``qstat -f`` prints for one job, in PBS's order."""
    server = ctx.server
    ncpus, ngpus, mem, nodect = totals(job)
    submit = float(job.get("submit_time") or 0.0)
    start, end = job.get("start_time"), job.get("end_time")
    a: list[Attr] = [("Job_Name", None, job.get("name", "")), ("Job_Owner", None, f"{job.get('owner', '')}@{server}")]
    a += _used(job, ctx)
    a += [("job_state", None, letter(job)), ("queue", None, job.get("queue", "")), ("server", None, server)]
    if job.get("account"):
        a.append(("Account_Name", None, job["account"]))
    a += [("Checkpoint", None, "u"), ("ctime", None, ctime(submit))]
    deps = [f"{d['kind']}:" + ":".join(f"{i}.{server}" for i in d.get("ids", ())) for d in job.get("depend") or ()]
    if deps:
        a.append(("depend", None, ",".join(deps)))
    a.append(("Error_Path", None, f"{server}:{job.get('stderr_path', '')}"))
    if job.get("env_hash"):  # qsub --env: the captured environment's content address
        a.append(("env_hash", None, job["env_hash"]))
    if job.get("exec_nodes"):
        a += [("exec_host", None, exec_host(job)), ("exec_vnode", None, exec_vnode(job))]
    if job.get("eligible_time"):
        a.append(("Execution_Time", None, ctime(job["eligible_time"])))
    mtime = max(t for t in (submit, start or 0.0, end or 0.0))
    a += [
        ("Hold_Types", None, job.get("holds") or "n"),
        ("Join_Path", None, job.get("join") or "n"),
        ("Keep_Files", None, "n"),
        ("Mail_Points", None, "a"),
        ("mtime", None, ctime(mtime)),
        ("Output_Path", None, f"{server}:{job.get('stdout_path', '')}"),
        ("Priority", None, str(job.get("priority", 0))),
        ("qtime", None, ctime(submit)),
        ("Rerunable", None, "True" if job.get("rerunnable", True) else "False"),
    ]
    if job.get("container"):
        a.append(("Resource_List", "container", job["container"]))
    if mem:
        a.append(("Resource_List", "mem", mem_str(mem)))
    a += [
        ("Resource_List", "ncpus", str(ncpus)),
        ("Resource_List", "ngpus", str(ngpus)),
        ("Resource_List", "nodect", str(nodect)),
        ("Resource_List", "select", _select(job)),
        ("Resource_List", "walltime", hms(float(job.get("walltime_s") or 0.0))),
    ]
    if start:
        a.append(("stime", None, ctime(start)))
    env = dict(job.get("env") or {})
    env.setdefault("PBS_O_WORKDIR", job.get("workdir", ""))
    env.setdefault("PBS_O_QUEUE", job.get("queue", ""))
    a.append(("Variable_List", None, ",".join(f"{k}={str(v).replace(',', chr(92) + ',')}" for k, v in env.items())))
    text = comment(job, ctx)
    if text:
        a.append(("comment", None, text))
    a.append(("etime", None, ctime(job.get("eligible_time") or submit)))
    if job.get("planned_start") and job["state"] in _PENDING:
        a.append(("estimated", "start_time", ctime(job["planned_start"])))
    a.append(("run_count", None, str(_run_count(job))))
    if job.get("exit_status") is not None:
        a.append(("Exit_status", None, str(job["exit_status"])))
    a += _array(job, ctx)
    if job["state"] == "finished" and end:
        a.append(("history_timestamp", None, str(int(end)) if math.isfinite(end) else str(end)))
    return a


# ---------------------------------------------------------------- queues and the server (-Qf, -Bf)


def _state_count(jobs: dict[str, int]) -> tuple[int, str]:
    """(total, PBS's state_count): finished jobs are history and count in neither."""
    c = {k: jobs.get(k, 0) for k in ("queued", "held", "waiting", "running", "exiting")}
    return sum(c.values()), ("Transit:0 Queued:{queued} Held:{held} Waiting:{waiting} Running:{running} "
                             "Exiting:{exiting} Begun:0 ".format(**c))


def queue_attrs(q: dict[str, Any]) -> list[Attr]:
    """``qstat -Qf``: a queue of ``GET /api/v1/queues`` as PBS queue attributes."""
    s = q.get("settings") or {}
    total, counts = _state_count(q.get("jobs") or {})
    a: list[Attr] = [("queue_type", None, "Execution"), ("Priority", None, str(s.get("priority", 0))),
                     ("total_jobs", None, str(total)), ("state_count", None, counts)]
    if s.get("max_running_per_user"):
        a.append(("max_run", None, f"[u:PBS_GENERIC={s['max_running_per_user']}]"))
    if s.get("max_gpus_per_user"):
        a.append(("max_run_res", "ngpus", f"[u:PBS_GENERIC={s['max_gpus_per_user']}]"))
    if s.get("max_walltime_s"):
        a.append(("resources_max", "walltime", hms(s["max_walltime_s"])))
    if s.get("preempts"):
        a.append(("resources_default", "preempt_targets", ",".join(f"QUEUE={p}" for p in s["preempts"])))
    a.append(("resources_default", "walltime", hms(s.get("default_walltime_s") or 0)))
    chunk = s.get("default_chunk") or {}
    a.append(("default_chunk", "ncpus", str(chunk.get("ncpus", 1))))
    if chunk.get("mem_mb"):
        a.append(("default_chunk", "mem", mem_str(chunk["mem_mb"])))
    a.append(("default_chunk", "ngpus", str(chunk.get("ngpus", 0))))
    if s.get("allowed_users"):
        a += [("acl_user_enable", None, "True"), ("acl_users", None, ",".join(s["allowed_users"]))]
    return a + [("tier", None, str(s.get("tier", 1))), ("enabled", None, "True"), ("started", None, "True")]


def server_attrs(srv: dict[str, Any]) -> list[Attr]:
    """``qstat -Bf``: ``GET /api/v1/server`` as PBS server attributes."""
    total, counts = _state_count(srv.get("jobs") or {})
    active = srv.get("scheduling", True)
    return [
        ("server_state", None, "Active" if active else "Idle"),
        ("scheduling", None, "True" if active else "False"),
        ("total_jobs", None, str(total)),
        ("state_count", None, counts),
        ("default_queue", None, srv.get("default_queue", "")),
        ("resources_available", "ngpus", str(srv.get("gpus", 0))),
        ("resources_assigned", "ngpus", str(srv.get("gpus", 0) - srv.get("gpus_free", 0))),
        ("node_state_count", None, " ".join(f"{k}:{v}" for k, v in sorted((srv.get("nodes") or {}).items()))),
        ("pbs_version", None, pbs_version()),
    ]
