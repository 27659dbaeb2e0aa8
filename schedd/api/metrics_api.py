"""A job's metrics and the tail of its output, for the CLI and the web page.

``GET /api/v1/jobs/ID/metrics?keys=a,b&since=T&max_points=N``::

    {"job": "17", "capped": false,
     "series": [{"key": "loss", "kind": "custom", "count": 120000,
                 "points": [[time, step_or_null, value], ...]}, ...],
     "last": {"loss": {"time": t, "step": s, "value": v}, ...},
     "params": {"lr": "0.1"}, "tags": {"mlflow.runName": "x"}}

Each series is downsampled to at most ``max_points`` (default 1000) by
**min/max/last per bucket** (equal point counts per bucket, the first point
always kept; :mod:`schedd.series.downsample` says why not LTTB), after the
``since`` filter. ``keys`` empty = every series. Custom metrics are keyed by
their name, the node's samples as ``gpu0.util``, ``gpu0.mem_mb``,
``gpu0.power_w``, ``cpu.pct``, ``cpu.rss_mb`` (``rank1.`` before those of rank 1…).
Readable by every identity, like the job's attributes.

``GET /api/v1/metrics/last?jobs=ID,ID`` (at most :data:`MAX_LAST_JOBS`)::

    {"jobs": {"17": {"loss": {"time": t, "step": s, "value": v, "kind": "custom"}, ...}, ...}}

the ``last`` of several jobs in one request (``qstat -f``).

``GET /api/v1/jobs/ID/log?stream=out|err&tail=N``::

    {"job": "17", "stream": "out", "lines": [...], "truncated": false}

asked of the agent on the node of the job's rank 0 over its WebSocket (a
``Tail`` with a request id, answered by a ``TailReply``): the node reads the
file as the job's owner, so it works whether or not the caller sees the node's
disk, and reads nothing the owner could not. Only the owner, operators and
admins may read it (output can hold secrets, like the script).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from schedd.api.jobs import normalize_id, who
from schedd.api.keys import STATE
from schedd.daemon.launch import output_names
from schedd.daemon.records import JobRecord, explain
from schedd.daemon.state import State
from schedd.errors import InputError, PermissionDenied, RequestError, UnknownJob, WrongState
from schedd.protocol import Tail, TailReply
from schedd.series import Series
from schedd.store.series import NO_STEP

__all__ = ["AGENT_VERSIONS", "SERIES", "TAILS", "Tails", "Unavailable", "add_routes"]

SERIES = web.AppKey("series", Series)
#: Node name -> protocol version its current session chose (set by the agents' socket).
AGENT_VERSIONS = web.AppKey("agent_versions", dict[str, int])
TAIL_TIMEOUT_S = 10.0
_encoder = msgspec.json.Encoder()


class Unavailable(RequestError):
    """What the answer needs is on a node that cannot answer now."""

    status = 503
    code = "unavailable"


class Tails:
    """Tail requests in flight: request id -> the future its TailReply resolves."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[TailReply]] = {}

    async def ask(self, send: Any, msg: Tail, timeout_s: float = TAIL_TIMEOUT_S) -> TailReply:
        msg.request = next(self._ids)
        fut: asyncio.Future[TailReply] = asyncio.get_running_loop().create_future()
        self._waiting[msg.request] = fut
        try:
            send(msg)
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise Unavailable(f"the node did not send the output within {timeout_s:g} s") from None
        finally:
            self._waiting.pop(msg.request, None)

    def answer(self, reply: TailReply) -> None:
        fut = self._waiting.get(reply.request)
        if fut is not None and not fut.done():
            fut.set_result(reply)


TAILS = web.AppKey("tails", Tails)


class MetricsQuery(msgspec.Struct):
    keys: Annotated[str, Meta(max_length=64 * 1024)] = ""
    since: float | None = None
    max_points: Annotated[int, Meta(ge=2, le=100_000)] = 1000
    #: 0: only ``last`` (and params/tags), no points — what ``qstat -f`` needs
    series: Literal[0, 1] = 1


#: Job ids one ``GET /metrics/last`` may name (a job not in memory is read from the store, on the loop).
MAX_LAST_JOBS = 1000


class LastQuery(msgspec.Struct):
    #: comma-separated job ids, at most MAX_LAST_JOBS
    jobs: Annotated[str, Meta(min_length=1, max_length=64 * 1024)]


class LogQuery(msgspec.Struct):
    stream: Literal["out", "err"] = "out"
    tail: Annotated[int, Meta(ge=1, le=100_000)] = 100


def _query(request: web.Request, kind: type[Any]) -> Any:
    names = set(kind.__struct_fields__)
    given = {k: v for k, v in request.query.items() if k in names}
    try:
        return msgspec.convert(given, kind, strict=False)
    except msgspec.ValidationError as e:
        raise InputError(f"invalid query parameter: {explain(str(e))}") from None


def _job(request: web.Request) -> tuple[State, JobRecord]:
    state = request.app[STATE]
    jid = normalize_id(request.match_info["id"], state.settings.server_name)
    rec = state.lookup(jid)
    if rec is None:
        raise UnknownJob(f"Unknown Job Id {jid}")
    return state, rec


def last_json(p: tuple[float, int, float]) -> dict[str, Any]:
    return {"time": p[0], "step": None if p[1] == NO_STEP else p[1], "value": p[2]}


async def job_metrics(request: web.Request) -> web.Response:
    """See the module docstring. Series are computed in a thread (store reads and
    downsampling), never on the loop; only the in-memory tail is copied here."""
    who(request)
    state, rec = _job(request)
    q: MetricsQuery = _query(request, MetricsQuery)
    series = request.app[SERIES]
    heads = series.keys(rec.id)
    wanted = [k for k in dict.fromkeys(q.keys.split(",")) if k in heads] if q.keys else sorted(heads)
    wanted = wanted if q.series else []
    mems = {k: series.snapshot(rec.id, k) for k in wanted}

    def compute() -> list[dict[str, Any]]:
        return [{"key": k, "kind": heads[k][0], "count": heads[k][1],
                 "points": series.compute(rec.id, k, mems[k], q.since, q.max_points)} for k in wanted]

    out = await asyncio.to_thread(compute)
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    if state.store is not None:
        for p in await asyncio.to_thread(state.store.params, rec.id):
            (params if p.kind == "param" else tags)[p.key] = p.value
    body = {"job": rec.id, "capped": series.is_capped(rec.id), "malformed": series.malformed_lines(rec.id), "series": out,
            "last": _last_of(heads),
            "params": params, "tags": tags}
    return web.Response(body=_encoder.encode(body), content_type="application/json")


def _last_of(heads: dict[str, tuple[str, int, tuple[float, int, float] | None]]) -> dict[str, Any]:
    """Each series' last point, from the job's series heads (:meth:`Series.keys`)."""
    return {k: last_json(p) | {"kind": kind} for k, (kind, _, p) in heads.items() if p is not None}


async def metrics_last(request: web.Request) -> web.Response:
    """Each job's ``last`` values at once (what ``qstat -f`` prints, one request for
    all its jobs instead of one per job); unknown ids and jobs without metrics
    are left out. No series is computed; a job no longer in memory, and series
    heads not cached yet, are read from the store on the loop (bounded by
    :data:`MAX_LAST_JOBS`)."""
    who(request)
    state = request.app[STATE]
    q: LastQuery = _query(request, LastQuery)
    series = request.app[SERIES]
    names = [j for j in dict.fromkeys(q.jobs.split(",")) if j]
    if len(names) > MAX_LAST_JOBS:
        raise InputError(f"jobs: {len(names)} ids, at most {MAX_LAST_JOBS} per request")
    found = (state.lookup(normalize_id(j, state.settings.server_name)) for j in names)
    out = {rec.id: last for rec in found if rec is not None and (last := _last_of(series.keys(rec.id)))}
    return web.Response(body=_encoder.encode({"jobs": out}), content_type="application/json")


def rank0_node(state: State, rec: JobRecord) -> str:
    act = state.active.get(rec.id)
    if act is not None and act.running.placement:
        return act.running.placement[0].node
    if rec.exec_nodes:
        return rec.exec_nodes[0].node
    raise WrongState(f"job {rec.id} has not run on any node: it has no output yet")


async def job_log(request: web.Request) -> web.Response:
    """See the module docstring."""
    ident = who(request)
    state, rec = _job(request)
    if not (ident.privileged or ident.user == rec.owner):
        raise PermissionDenied(f"only {rec.owner}, operators and admins may read the output of job {rec.id}")
    q: LogQuery = _query(request, LogQuery)
    node = rank0_node(state, rec)
    entry = state.fleet.get(node)
    if entry is None or entry.send is None:
        raise Unavailable(f"node {node}, which holds the output of job {rec.id}, is not connected")
    if request.app[AGENT_VERSIONS].get(node, 1) < 3:
        raise Unavailable(f"the agent of node {node} is too old to serve job output (protocol 3 needed)")
    out_name, err_name = output_names(rec)
    path, name = (rec.stdout_path, out_name) if q.stream == "out" else (rec.stderr_path, err_name)
    reply = await request.app[TAILS].ask(entry.send, Tail(0, rec.owner, rec.workdir, path, name, q.tail))
    if reply.error:
        raise Unavailable(f"node {node}: {reply.error}")
    body = {"job": rec.id, "stream": q.stream, "lines": reply.lines, "truncated": reply.truncated}
    return web.Response(body=_encoder.encode(body), content_type="application/json")


def add_routes(app: web.Application, series: Series) -> None:
    """The two routes, the series book (flushed by a cleanup context) and the tails."""
    app[SERIES] = series
    app[TAILS] = Tails()
    app[AGENT_VERSIONS] = {}

    async def run_series(app: web.Application) -> Any:
        async with series.running():
            yield

    app.cleanup_ctx.append(run_series)
    app.router.add_get("/api/v1/jobs/{id}/metrics", job_metrics)
    app.router.add_get("/api/v1/metrics/last", metrics_last)
    app.router.add_get("/api/v1/jobs/{id}/log", job_log)
