"""The REST API's OpenAPI 3.1 description, served at ``GET /api/v1/openapi.json``.

Written once, from the types the handlers decode with: each request body and
each query struct below *is* the msgspec Struct its handler decodes
(``SubmitRequest``, ``HoldBody``, ``ListQuery``...), turned into JSON Schema by
``msgspec.json.schema_components``, so a bound added to a Struct shows in the
document without anyone editing it. The answers are described by Structs here
(:class:`ErrorBody` for every 4xx); a fuzz run (tests/security/test_openapi_fuzz.py)
checks the daemon's real answers against them, and tests/unit/test_openapi.py
checks that :data:`ROUTES` and the aiohttp router name the same routes, so
neither the paths nor the shapes can drift from the code unnoticed.

The document is served with the same authentication as every ``/api/`` GET:
it holds nothing secret, but one rule without exceptions ("every /api/ request
is authenticated before its handler runs") is simpler to keep right than a
list of exempt paths, and whoever can call the API can read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from schedd.api import jobs, metrics_api, nodes
from schedd.api import pool as pool_api
from schedd.daemon.records import BatchRequest, JobRecord, SubmitRequest

__all__ = ["ROUTES", "UNDOCUMENTED", "ErrorBody", "Op", "Param", "add_routes", "document"]

PATH = "/api/v1/openapi.json"


class ErrorDetail(msgspec.Struct, forbid_unknown_fields=True):
    #: short and stable (``bad_request``, ``not_found``, ``unauthenticated``...)
    code: str
    #: for a person: names the field or parameter at fault
    message: str


class ErrorBody(msgspec.Struct, forbid_unknown_fields=True):
    """Every 4xx and 5xx answer of ``/api/``: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class Submitted(msgspec.Struct):
    job: JobRecord
    #: the id with the server's name: ``17.server``
    id: str


class SubmittedBatch(msgspec.Struct):
    ids: list[str]


class JobList(msgspec.Struct):
    """``jobs``: whole records, or only the ``fields=`` asked for; ``next``: the
    cursor of the next page (``finished=1`` only), absent on the last."""

    server_name: str
    jobs: list[dict[str, Any]]
    next: int | None = None


class JobTable(msgspec.Struct):
    """``table=qstat`` (or ``qstat-wide``): the jobs as the lines of qstat's
    default layout, printed by the server; ``next`` as in :class:`JobList`."""

    server_name: str
    table: str
    #: the jobs' ids, separated by single spaces, in the order of the lines
    ids: str
    #: the lines, without the heading, each ending in a newline
    text: str
    next: int | None = None


class OneJob(msgspec.Struct):
    job: JobRecord
    #: a running job's usage now (cpu_pct, rss_mb, gpu_util_pct, walltime_s, gpu_s)
    live: dict[str, float] | None


class Subjobs(msgspec.Struct):
    """A subjob range (``17[2-5]``): its subjobs that exist."""

    server_name: str
    jobs: list[JobRecord]


class Event(msgspec.Struct):
    time: float
    kind: str
    data: Any


class Events(msgspec.Struct):
    events: list[Event]


class Waited(msgspec.Struct):
    job: JobRecord
    finished: bool


class Ok(msgspec.Struct):
    ok: bool
    #: qdel -x of a finished job: its history was deleted
    purged: bool | None = None


class SubjobError(msgspec.Struct):
    id: str
    code: str
    message: str


class RangeDone(msgspec.Struct):
    """An action on a subjob range: each subjob's failure listed."""

    ok: bool
    ids: list[str]
    errors: list[SubjobError]


class Altered(msgspec.Struct):
    job: JobRecord


class ServerSummary(msgspec.Struct):
    server_name: str
    default_queue: str
    jobs: dict[str, int]
    total_jobs: int
    nodes: dict[str, int]
    gpus: int
    gpus_free: int
    scheduling: bool
    cycles: int
    started_at: float


class QueueView(msgspec.Struct):
    settings: dict[str, Any]
    jobs: dict[str, int]


class Queues(msgspec.Struct):
    queues: dict[str, QueueView]
    default: str


class UsageRow(msgspec.Struct):
    account: str
    user: str
    usage: float


class UsageAnswer(msgspec.Struct):
    usage: list[UsageRow]
    unit: str
    fairshare: dict[str, float]


class GpuView(msgspec.Struct):
    index: int
    uuid: str
    model: str
    mem_mb: float
    #: the job holding it
    job: str | None
    util_pct: float | None
    mem_used_mb: float | None


class NodeView(msgspec.Struct):
    """A node as schedd.api.nodes.node_view (or pod_only_view) shows it."""

    name: str
    #: up, down, offline, draining, reserving...
    state: str
    connected: bool
    fake_gpus: bool
    address: str
    comment: str
    labels: dict[str, str]
    #: its pod, in a Kubernetes pool: uid, phase, reason, code, group
    pod: dict[str, str] | None
    cpus: float
    cpus_assigned: float
    mem_mb: float
    mem_assigned_mb: float
    ngpus: int
    ngpus_free: int
    gpus: list[GpuView]
    jobs: list[str]
    cpu_pct: float | None
    mem_used_mb: float | None
    last_seen: float


class NodeList(msgspec.Struct):
    nodes: list[NodeView]


class OneNode(msgspec.Struct):
    node: NodeView


class Metrics(msgspec.Struct):
    job: str
    capped: bool
    malformed: int
    series: list[dict[str, Any]]
    last: dict[str, dict[str, Any]]
    params: dict[str, str]
    tags: dict[str, str]


class LastValues(msgspec.Struct):
    jobs: dict[str, dict[str, dict[str, Any]]]


class LogTail(msgspec.Struct):
    job: str
    stream: str
    lines: list[str]
    truncated: bool


class TokenView(msgspec.Struct):
    id: str
    user: str
    role: str
    created: str
    #: None: never expires
    expires: str | None = None


class Tokens(msgspec.Struct):
    tokens: list[TokenView]


class Revoked(msgspec.Struct):
    revoked: list[TokenView]


class Reloaded(msgspec.Struct):
    changes: list[str]


class Scaled(msgspec.Struct):
    pool: dict[str, Any]


class Health(msgspec.Struct):
    ok: bool


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter a handler reads itself (not through a query Struct)."""

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Op:
    """One route: what it takes (``body``: the Struct its handler decodes;
    ``query``: the Struct of its query parameters) and what it answers."""

    method: str
    path: str
    summary: str
    answer: type | tuple[type, ...] | None = None
    status: int = 200
    body: type | None = None
    query: type | None = None
    params: tuple[Param, ...] = ()
    #: media type of a non-JSON answer: the only one when ``answer`` is None, else a
    #: second form of the answer that a client asks for with Accept (a string)
    media: str = "application/json"
    auth: bool = True


_FLAG = {"type": "string", "enum": ["0", "1", "true", "false"]}

#: Every documented route, in the order of the document.
ROUTES: tuple[Op, ...] = (
    Op("GET", "/healthz", "Liveness: the daemon answers", Health, auth=False),
    Op("GET", "/metrics", "Prometheus metrics", media="text/plain", auth=False),
    Op("GET", PATH, "This document"),
    Op("POST", "/api/v1/jobs", "Submit a job (qsub)", Submitted, 201, body=SubmitRequest),
    Op("POST", "/api/v1/jobs/batch", "Submit several jobs, all or none", SubmittedBatch, 201, body=BatchRequest),
    Op("GET", "/api/v1/jobs", "List jobs (qstat); with table and Accept: text/plain, the very text qstat prints, "
       "heading included", (JobList, JobTable), query=jobs.ListQuery, media="text/plain", params=(
        Param("user", {"type": "string"}, "only this owner's jobs"),
        Param("queue", {"type": "string"}, "only this queue's jobs"),
        Param("state", {"type": "string"}, "comma-separated job states"),
        Param("finished", {"type": "string"}, "1, true or yes: finished jobs too (paged from the store)"),
        Param("fields", {"type": "string"}, "comma-separated JobRecord fields: only those of each job "
              "(not with table)"))),
    Op("GET", "/api/v1/jobs/{id}", "A job, or the subjobs of a range", (OneJob, Subjobs)),
    Op("GET", "/api/v1/jobs/{id}/events", "A job's history (tracejob)", Events),
    Op("GET", "/api/v1/jobs/{id}/wait", "Wait until the job has finished, or timeout_s", Waited,
       query=jobs.WaitQuery),
    Op("GET", "/api/v1/server", "The server summary (qstat -B)", ServerSummary),
    Op("DELETE", "/api/v1/jobs/{id}", "Cancel a job or range (qdel)", (Ok, RangeDone), params=(
        Param("force", _FLAG, "end it without waiting for its node (qdel -W force)"),
        Param("purge", _FLAG, "also delete a finished job's history (qdel -x)"))),
    Op("PATCH", "/api/v1/jobs/{id}", "Change a queued job (qalter)", (Altered, RangeDone), body=jobs.AlterBody),
    Op("POST", "/api/v1/jobs/{id}/hold", "Hold (qhold)", (Ok, RangeDone), body=jobs.HoldBody),
    Op("POST", "/api/v1/jobs/{id}/release", "Release a hold (qrls)", (Ok, RangeDone), body=jobs.HoldBody),
    Op("POST", "/api/v1/jobs/{id}/signal", "Signal a running job (qsig)", (Ok, RangeDone), body=jobs.SignalBody),
    Op("POST", "/api/v1/jobs/{id}/requeue", "Requeue a running job (qrerun)", (Ok, RangeDone)),
    Op("GET", "/api/v1/jobs/{id}/metrics", "A job's metric series, downsampled", Metrics,
       query=metrics_api.MetricsQuery),
    Op("GET", "/api/v1/jobs/{id}/log", "The tail of a job's output (owner, operators)", LogTail,
       query=metrics_api.LogQuery),
    Op("GET", "/api/v1/metrics/last", "The last metric values of several jobs (qstat -f)", LastValues,
       query=metrics_api.LastQuery),
    Op("GET", "/api/v1/queues", "Queues and their jobs by state (qstat -Q)", Queues),
    Op("GET", "/api/v1/usage", "Fair-share usage by account and user", UsageAnswer),
    Op("GET", "/api/v1/nodes", "Nodes (qnodes)", NodeList),
    Op("GET", "/api/v1/nodes/{name}", "A node", OneNode),
    Op("POST", "/api/v1/nodes/{name}/offline", "Take a node offline (operators)", OneNode, body=nodes.AdminBody),
    Op("POST", "/api/v1/nodes/{name}/drain", "Drain a node (operators)", OneNode, body=nodes.AdminBody),
    Op("POST", "/api/v1/nodes/{name}/resume", "Resume an offline or draining node (operators)", OneNode,
       body=nodes.AdminBody),
    Op("POST", "/api/v1/pool/{group}/scale", "Resize a node group (operators)", Scaled, body=pool_api.ScaleBody),
    Op("GET", "/api/v1/stream", "Server-sent events: job changes, a job's points", media="text/event-stream",
       params=(Param("job", {"type": "string"}, "one job's changes and points"),)),
    Op("POST", "/api/v1/admin/reload", "Re-read the configuration (operators)", Reloaded),
    Op("GET", "/api/v1/admin/tokens", "The API tokens (admins)", Tokens),
    Op("DELETE", "/api/v1/admin/tokens/{id}", "Revoke tokens by id prefix, or all of ?user= (admins)", Revoked,
       params=(Param("user", {"type": "string"}, "revoke every token of this user (the id is then ignored)"),)),
)

#: Routes of the router that are not REST answers with JSON, by path prefix, and why.
UNDOCUMENTED = {
    "/api/v1/agent": "the node agents' WebSocket (schedd.protocol), not a REST call",
    "/mlflow/": "MLflow's own tracking API (its paths and error shape), for MLflow clients in jobs",
    "/ui": "the web page and its browser login",
}

#: The path parameters, by name.
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "id": {"type": "string", "description": "a job (17, 17.server, 17[], 17[3]) or, where a range is "
           "accepted, a subjob range 17[2-5]; a token's id under /admin/tokens",
           "maxLength": 1024},
    "name": {"type": "string", "description": "a node's name"},
    "group": {"type": "string", "description": "a node group of the pool"},
}


def _ecma(node: Any) -> Any:
    """msgspec writes Python's ``\\Z`` (end of text) in patterns; JSON Schema's
    regexes are ECMA-262's, where ``$`` (not multiline) means the same."""
    if isinstance(node, dict):
        return {k: (v[:-2] + "$" if k == "pattern" and isinstance(v, str) and v.endswith("\\Z") else _ecma(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def _ref(kind: type) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


def _answer_schema(answer: type | tuple[type, ...]) -> dict[str, Any]:
    kinds = answer if isinstance(answer, tuple) else (answer,)
    return _ref(kinds[0]) if len(kinds) == 1 else {"anyOf": [_ref(k) for k in kinds]}


def _query_params(kind: type) -> list[dict[str, Any]]:
    """The fields of a query Struct as parameters (a ``None`` default: the
    parameter left out, so ``null`` is not one of its values)."""
    full = msgspec.json.schema(kind)
    struct = full["$defs"][kind.__name__]
    required = set(struct.get("required", ()))
    out = []
    for name, schema in struct["properties"].items():
        schema = dict(schema)
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s != {"type": "null"}]
            schema.pop("anyOf")
            schema.update(options[0] if len(options) == 1 else {"anyOf": options})
        if schema.get("default", 0) is None:
            schema.pop("default")
        out.append({"name": name, "in": "query", "required": name in required, "schema": schema})
    return out


def _operation(op: Op, types: list[type]) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": _PATH_PARAMS[n]}
              for n in _PATH_PARAMS if "{" + n + "}" in op.path]
    if op.query is not None:
        params += _query_params(op.query)
    params += [{"name": p.name, "in": "query", "required": False, "schema": p.schema, "description": p.description}
               for p in op.params]
    if op.answer is not None:
        types += list(op.answer) if isinstance(op.answer, tuple) else [op.answer]
        content = {"application/json": {"schema": _answer_schema(op.answer)}}
        if op.media != "application/json":  # a second form of the same answer, asked for by Accept
            content[op.media] = {"schema": {"type": "string"}}
    else:
        content = {op.media: {"schema": {"type": "string"} if op.media != "application/json" else {"type": "object"}}}
    responses: dict[str, Any] = {str(op.status): {"description": op.summary, "content": content}}
    if op.path.startswith("/api/"):
        responses["4XX"] = {"description": "refused: the error names the field, parameter or rule at fault",
                            "content": {"application/json": {"schema": _ref(ErrorBody)}}}
        responses["503"] = {"description": "not now, nothing changed: the state store is full (store_full), or "
                            "too many connections or long polls (too_many_connections, too_many_waiters; "
                            "Retry-After says when to try again)",
                            "content": {"application/json": {"schema": _ref(ErrorBody)}}}
    out: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method.lower()} {op.path}",
                           "parameters": params, "responses": responses}
    if op.body is not None:
        types.append(op.body)
        out["requestBody"] = {"required": op.method == "POST" and op.body in (SubmitRequest, BatchRequest),
                              "content": {"application/json": {"schema": _ref(op.body)}}}
    if not op.auth:
        out["security"] = []
    return out


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once: it depends on code only)."""
    paths: dict[str, dict[str, Any]] = {}
    types: list[type] = [ErrorBody]
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, types)
    _, components = msgspec.json.schema_components(list(dict.fromkeys(types)),
                                                   ref_template="#/components/schemas/{name}")
    doc: dict[str, Any] = _ecma({
        "openapi": "3.1.0",
        "info": {"title": "schedd", "version": "1",
                 "description": "The REST API of schedd, a batch scheduler. Over the Unix socket the caller is "
                                "who the kernel says (SO_PEERCRED); over TCP a bearer token is required "
                                "(schedd token create USER)."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    })
    return doc


@functools.cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


async def serve(request: web.Request) -> web.Response:
    jobs.who(request)
    return web.Response(body=_encoded(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, serve)
