"""REST for nodes: list, get, and the operator's offline / drain / resume.

With a pool driver that watches pods (Kubernetes), a node exists from its
pod's creation, before any agent registered: ``reserving`` with Kubernetes'
own words (the scheduler's ``0/12 nodes are available: ...``, an image pull
error) until its agent registers; ``down`` with the reason once its pod is
going or gone. Its ``pod`` says which pod (the UID is the node's incarnation).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from schedd.api.jobs import who
from schedd.api.keys import LOOP, STATE
from schedd.errors import InputError, PermissionDenied, UnknownJob
from schedd.daemon.fleet import NodeEntry, Pod
from schedd.core.model import NodeState
from schedd.daemon.records import Comment
from schedd.daemon.state import State

__all__ = ["add_routes", "all_views", "node_view", "pod_only_view"]


class AdminBody(msgspec.Struct, forbid_unknown_fields=True):
    #: None keeps the node's comment, as pbsnodes does without -C; printable, as qnodes shows it
    comment: Comment | None = None


def node_view(state: State, e: NodeEntry) -> dict[str, Any]:
    """A node as the API shows it: totals, what is assigned, jobs, telemetry."""
    n = e.node
    used_gpus: dict[int, str] = {}
    cpus = mem = 0
    jobs = []
    for jid, act in state.active.items():
        for cp in act.running.placement:
            if cp.node == n.name:
                jobs.append(jid)
                cpus += cp.ncpus
                mem += cp.mem_mb
                used_gpus.update((g, jid) for g in cp.gpus)
    samples = {s.index: s for s in e.gpu_samples}
    gpus = [
        {"index": g.index, "uuid": g.uuid, "model": g.model, "mem_mb": g.mem_mb, "job": used_gpus.get(g.index),
         "util_pct": samples[g.index].util_pct if g.index in samples else None,
         "mem_used_mb": samples[g.index].mem_used_mb if g.index in samples else None}
        for g in n.gpus
    ]
    state_name, comment = e.shown_state.value, e.comment
    pod = _pod(state, n.name)
    if pod is not None and e.admin_state is None:
        state_name, comment = _pod_state(e, pod, state_name, comment)
    return {
        "name": n.name, "state": state_name, "connected": e.connected, "fake_gpus": e.fake_gpus,
        "address": e.address, "comment": comment, "labels": n.labels, "pod": _pod_json(pod),
        "cpus": n.cpus, "cpus_assigned": cpus, "mem_mb": n.mem_mb, "mem_assigned_mb": mem,
        "ngpus": n.ngpus, "ngpus_free": n.ngpus - len(used_gpus), "gpus": gpus, "jobs": sorted(jobs),
        "cpu_pct": e.cpu_pct, "mem_used_mb": e.mem_used_mb, "last_seen": e.last_seen,
        "enforcement": e.enforcement,
    }


def _pod(state: State, name: str) -> Pod | None:
    pool = state.fleet.pool
    return pool.pods.get(name) if pool is not None else None


def _pod_json(pod: Pod | None) -> dict[str, str] | None:
    if pod is None:
        return None
    return {"uid": pod.uid, "phase": pod.phase, "reason": pod.reason, "code": pod.code, "group": pod.group}


def _pod_state(e: NodeEntry, pod: Pod, state_name: str, comment: str) -> tuple[str, str]:
    """A registered node whose current pod is a later one than its agent's: the pod's state."""
    if e.incarnation in ("", pod.uid):
        return state_name, comment  # its agent's pod: the agent speaks for it (DOWN already if the pod is going)
    if pod.phase == "reserving":
        return "reserving", pod.reason
    if pod.phase == "ready":
        return "reserving", f"{pod.reason}; waiting for its agent to register"
    return "down", pod.reason


def pod_only_view(name: str, pod: Pod) -> dict[str, Any]:
    """A node whose pod exists but whose agent never registered: no resources yet."""
    if pod.phase == "ready":
        shown, comment = "reserving", f"{pod.reason}; waiting for its agent to register"
    else:
        shown, comment = pod.phase, pod.reason
    return {
        "name": name, "state": shown, "connected": False, "fake_gpus": False, "address": "", "comment": comment,
        "labels": {}, "pod": _pod_json(pod), "cpus": 0, "cpus_assigned": 0, "mem_mb": 0, "mem_assigned_mb": 0,
        "ngpus": 0, "ngpus_free": 0, "gpus": [], "jobs": [], "cpu_pct": None, "mem_used_mb": None, "last_seen": 0.0,
        "enforcement": "",
    }


def all_views(state: State) -> list[dict[str, Any]]:
    """Every registered node, then every pod whose agent has not registered yet, by name."""
    views = [node_view(state, e) for e in state.fleet]
    pool = state.fleet.pool
    if pool is not None:
        views += [pod_only_view(name, pod) for name, pod in sorted(pool.pods.items()) if state.fleet.get(name) is None]
    return views


def _entry(request: web.Request) -> NodeEntry:
    name = request.match_info["name"]
    e = request.app[STATE].fleet.get(name)
    if e is None:
        raise UnknownJob(f"Unknown node {name}")  # 404, like an unknown job
    return e


async def list_nodes(request: web.Request) -> web.Response:
    who(request)
    state = request.app[STATE]
    return web.json_response({"nodes": all_views(state)})


async def get_node(request: web.Request) -> web.Response:
    who(request)
    state, name = request.app[STATE], request.match_info["name"]
    if state.fleet.get(name) is None and (pod := _pod(state, name)) is not None:
        return web.json_response({"node": pod_only_view(name, pod)})
    return web.json_response({"node": node_view(state, _entry(request))})


def _admin(target: NodeState | None) -> Any:
    async def handler(request: web.Request) -> web.Response:
        if not who(request).privileged:
            raise PermissionDenied("only operators may change a node's state")
        data = await request.read()
        body = msgspec.json.decode(data or b"{}", type=AdminBody)
        state, e = request.app[STATE], _entry(request)
        if target is None and e.admin_state is None:
            raise InputError(f"node {e.node.name} is not offline or draining")
        state.fleet.set_admin(e, target, e.comment if body.comment is None else body.comment)
        request.app[LOOP].trigger()
        return web.json_response({"node": node_view(state, e)})

    return handler


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/nodes", list_nodes)
    r.add_get("/api/v1/nodes/{name}", get_node)
    r.add_post("/api/v1/nodes/{name}/offline", _admin(NodeState.OFFLINE))
    r.add_post("/api/v1/nodes/{name}/drain", _admin(NodeState.DRAINING))
    r.add_post("/api/v1/nodes/{name}/resume", _admin(None))
