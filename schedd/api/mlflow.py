"""An MLflow-compatible subset of the tracking REST API, so that MLflow code in a
job lands on the job: ``mlflow.log_metric("loss", l, step=i)`` just works.

The node sets, in rank 0's environment::

    MLFLOW_TRACKING_URI = <schedd>/mlflow/<job>/<attempt>/<key>
    MLFLOW_RUN_ID       = the job's run id ("17", "17-3" for subjob 17[3])

``key`` is HMAC-SHA256(the daemon's metrics secret, "<job>.<attempt>"): a
capability for that attempt of that job only (the secret reaches agents in their
Welcome; it is kept in the store's meta so it survives restarts). The client
appends ``/api/2.0/mlflow/...``. Served: experiments get-by-name/create/get,
runs create/get/update, log-metric, log-batch, log-parameter, set-tag. Every
run created through a job's URI *is* that job (MLflow's fluent API with
MLFLOW_RUN_ID only gets and updates it). Metrics go to the job's series (the
per-job cap applies), params and tags to the store, shown by the metrics API.
Errors are MLflow's ``{"error_code", "message"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import msgspec
from aiohttp import web

from schedd.api.keys import STATE
from schedd.api.metrics_api import SERIES
from schedd.store.series import NO_STEP, ParamRow

__all__ = ["MLFLOW", "Tracking", "add_routes", "capability", "from_run_id", "run_id"]

_SECRET_KEY = "metrics_secret"
_EXPERIMENT_KEY = "mlflow_experiment:"


def run_id(job_id: str) -> str:
    """MLflow run ids are ``[A-Za-z0-9][\\w-]*``: ``17[3]`` becomes ``17-3``.

    >>> run_id("17"), run_id("17[3]"), from_run_id("17-3")
    ('17', '17-3', '17[3]')
    """
    return job_id.replace("[", "-").replace("]", "")


def from_run_id(rid: str) -> str:
    num, sep, idx = rid.partition("-")
    return f"{num}[{idx}]" if sep else num


def capability(secret: str, job_id: str, attempt: int) -> str:
    return hmac.new(secret.encode(), f"{job_id}.{attempt}".encode(), hashlib.sha256).hexdigest()[:32]


class Tracking:
    """The secret, the daemon's public base URL (set once its TCP site listens) and experiments."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.base_url = ""
        self.experiments: dict[str, str] = {"Default": "0"}


MLFLOW = web.AppKey("mlflow", Tracking)


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


async def handle(request: web.Request) -> web.Response:
    try:
        return await _handle(request)
    except _Error as e:
        return _reply({"error_code": e.code, "message": str(e)}, e.status)
    except (msgspec.DecodeError, ValueError, TypeError, KeyError, AttributeError) as e:  # a body of the wrong shape
        return _reply({"error_code": "INVALID_PARAMETER_VALUE", "message": f"bad request: {e}"}, 400)


async def _handle(request: web.Request) -> web.Response:
    state, tracking, series = request.app[STATE], request.app[MLFLOW], request.app[SERIES]
    job_id, attempt, key = request.match_info["job"], request.match_info["attempt"], request.match_info["key"]
    rec = state.jobs.get(job_id)
    if rec is None or str(rec.attempt) != attempt or not hmac.compare_digest(
            key, capability(tracking.secret, job_id, rec.attempt)):
        raise _Error(403, "PERMISSION_DENIED", "not a tracking URI of a job attempt schedd runs")
    op = request.match_info["op"]
    body: dict[str, Any] = dict(request.query)
    if request.method == "POST":
        raw = await request.read()
        body = msgspec.json.decode(raw) if raw else {}
    if op == "experiments/get-by-name":
        name = str(body.get("experiment_name", ""))
        eid = _experiment(state, tracking, name)
        if eid is None:
            raise _Error(404, "RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name}'")
        return _reply({"experiment": _exp(eid, name)})
    if op == "experiments/get":
        eid = str(body.get("experiment_id", "0"))
        names = {v: k for k, v in tracking.experiments.items()}
        return _reply({"experiment": _exp(eid, names.get(eid, eid))})
    if op == "experiments/create":
        name = str(body["name"])
        eid = _experiment(state, tracking, name) or _new_experiment(state, tracking, name)
        return _reply({"experiment_id": eid})
    if op in ("runs/create", "runs/get", "runs/update"):
        if op == "runs/create":
            _put(state, job_id, "tag", {"mlflow.runName": str(body.get("run_name") or rec.name)})
            _put(state, job_id, "tag", {t["key"]: str(t["value"]) for t in body.get("tags", [])})
            if body.get("experiment_id") is not None:
                _put(state, job_id, "tag", {"schedd.experiment_id": str(body["experiment_id"])})
        return _reply({"run": await _run(request, rec, body.get("status")), "run_info": {}} if op != "runs/update"
                      else {"run_info": (await _run(request, rec, body.get("status")))["info"]})
    if op == "runs/log-metric":
        _metrics(series, job_id, [body])
        return _reply({})
    if op == "runs/log-batch":
        _metrics(series, job_id, body.get("metrics", []))
        _put(state, job_id, "param", {p["key"]: str(p["value"]) for p in body.get("params", [])})
        _put(state, job_id, "tag", {t["key"]: str(t["value"]) for t in body.get("tags", [])})
        return _reply({})
    if op == "runs/log-parameter":
        _put(state, job_id, "param", {str(body["key"]): str(body["value"])})
        return _reply({})
    if op == "runs/set-tag":
        _put(state, job_id, "tag", {str(body["key"]): str(body["value"])})
        return _reply({})
    raise _Error(404, "ENDPOINT_NOT_FOUND", f"schedd serves a subset of the MLflow API; not {op}")


def _metrics(series: Any, job_id: str, metrics: list[dict[str, Any]]) -> None:
    pts: dict[str, list[tuple[float, int, float]]] = {}
    for m in metrics:
        step = m.get("step")
        pts.setdefault(str(m["key"]), []).append(
            (float(m.get("timestamp", 0)) / 1000.0, int(step) if step is not None else NO_STEP, float(m["value"])))
    series.add(job_id, pts)


def _put(state: Any, job_id: str, kind: str, values: dict[str, str]) -> None:
    if state.store is not None and values:
        now = state.clock()
        state.store.put_params([ParamRow(job_id, kind, k, v, now) for k, v in values.items()])


async def _run(request: web.Request, rec: Any, status: Any) -> dict[str, Any]:
    state, series = request.app[STATE], request.app[SERIES]
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    if state.store is not None:
        await state.store.flush()
        for p in state.store.params(rec.id):
            (params if p.kind == "param" else tags)[p.key] = p.value
    metrics = [{"key": k, "value": p[2], "timestamp": int(p[0] * 1000), "step": max(p[1], 0)}
               for k, (kind, _, p) in series.keys(rec.id).items() if kind == "custom" and p is not None]
    start = int((rec.start_time or rec.submit_time) * 1000)
    info = {"run_id": run_id(rec.id), "run_uuid": run_id(rec.id), "run_name": tags.get("mlflow.runName", rec.name),
            "experiment_id": tags.get("schedd.experiment_id", "0"), "user_id": rec.owner,
            "status": str(status or ("FINISHED" if rec.state == "finished" else "RUNNING")),
            "start_time": start, "artifact_uri": "", "lifecycle_stage": "active"}
    return {"info": info, "data": {"metrics": metrics, "params": [{"key": k, "value": v} for k, v in params.items()],
                                   "tags": [{"key": k, "value": v} for k, v in tags.items()]}}


def _exp(eid: str, name: str) -> dict[str, Any]:
    return {"experiment_id": eid, "name": name, "artifact_location": "", "lifecycle_stage": "active"}


def _experiment(state: Any, tracking: Tracking, name: str) -> str | None:
    if name in tracking.experiments:
        return tracking.experiments[name]
    value = state.store.get_meta(_EXPERIMENT_KEY + name) if state.store is not None else None
    if value is not None:
        tracking.experiments[name] = value
    return value


def _new_experiment(state: Any, tracking: Tracking, name: str) -> str:
    """An id derived from the name: the same on every daemon, no counter to keep."""
    eid = str(int(hashlib.sha256(name.encode()).hexdigest()[:12], 16))
    tracking.experiments[name] = eid
    if state.store is not None:
        state.store.put_meta(_EXPERIMENT_KEY + name, eid)
    return eid


def add_routes(app: web.Application) -> None:
    store = app[STATE].store
    secret = store.get_meta(_SECRET_KEY) if store is not None else None
    if secret is None:
        secret = secrets.token_hex(32)
        if store is not None:
            store.put_meta(_SECRET_KEY, secret)
    app[MLFLOW] = Tracking(secret)
    path = "/mlflow/{job}/{attempt}/{key}/{prefix:(ajax-)?api}/2.0/mlflow/{op:.+}"
    app.router.add_get(path, handle)
    app.router.add_post(path, handle)
    app.router.add_patch(path, handle)
