"""A stand-in Kubernetes API server for tests: real HTTP on loopback, the REST
and watch protocol as the official clients (sync and ``kubernetes.aio``) and
``kubectl`` use them, over :class:`~tests.kube.store.Store`.

What it does like the real one: discovery (``/version``, ``/api``, ``/apis``,
the group versions), CRUD with 404/409/422 ``Status`` bodies, label and field
selectors, one global ``resourceVersion``, uid, creationTimestamp, generation,
merge and (simplified) strategic-merge patch, server-side apply (the applied
object is merged over the live one; ``fieldManager`` recorded), ``/scale`` and
``/status`` subresources, graceful pod deletion, background cascade through
ownerReferences, and watches (``?watch=1``, chunked JSON lines, bookmarks,
``timeoutSeconds``, replay from a bounded log, an ``ERROR`` event with a 410
``Status`` once the version is compacted away).

What it adds for tests: ``calls``, every (verb, resource, namespace) as RBAC
would see it; fault knobs (:meth:`ApiServer.compact`, :meth:`drop_watches`,
:meth:`fail_next`); :meth:`kubeconfig` for the clients. No authentication,
admission, defaulting or validation beyond the above. Runs in a thread
(:class:`ApiServer`) or as ``python -m tests.kube.apiserver --kubeconfig F``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from tests.kube.store import KINDS, ApiError, Entry, Obj, Store

__all__ = ["ApiServer", "write_kubeconfig"]

T = TypeVar("T")
GROUPS = sorted({k.api_version for k in KINDS.values() if k.group})


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig for the clients: plain HTTP on loopback, a dummy bearer token."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {"token": "standin-token"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin", "namespace": namespace}}],
    }))
    return path


def _resources(api_version: str) -> list[Obj]:
    out: list[Obj] = []
    for name, k in sorted(KINDS.items()):
        if k.api_version != api_version:
            continue
        out.append({"name": name, "singularName": k.kind.lower(), "namespaced": k.namespaced, "kind": k.kind,
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]})
        for sub in k.subresources:
            out.append({"name": f"{name}/{sub}", "singularName": "", "namespaced": k.namespaced,
                        "kind": "Scale" if sub == "scale" else k.kind, "verbs": ["get", "patch", "update"]}
                       | ({"group": "autoscaling", "version": "v1"} if sub == "scale" else {}))
    return out


class ApiServer:
    """The HTTP front of a :class:`Store`, on its own thread and event loop."""

    def __init__(self, log_size: int = 1000, bookmark_interval_s: float = 1.0) -> None:
        self.store = Store(log_size)
        self.bookmark_interval_s = bookmark_interval_s
        self.calls: list[tuple[str, str, str]] = []
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self._fail: tuple[int, int] = (0, 500)
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._streams: set[web.StreamResponse] = set()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> str:
        ready: Future[str] = Future()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._serve(ready))
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, name="kube-apiserver", daemon=True)
        self._thread.start()
        self.url = ready.result(timeout=10)
        return self.url

    async def _serve(self, ready: Future[str]) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)  # its lines outlived pytest's capture
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set_result(f"http://127.0.0.1:{port}")

    def stop(self) -> None:
        if self._thread is None:
            return
        self.drop_watches()
        if self._runner is not None:
            self.call(self._runner.cleanup()).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def call(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the server's loop (the simulator lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        return write_kubeconfig(path, self.url, namespace)

    # -- fault knobs ---------------------------------------------------------------

    def compact(self) -> int:
        """Forget the event log: every watch from an older version is answered 410."""
        return self.store.compact()

    def drop_watches(self) -> None:
        """Cut every open watch stream, as a load balancer or an apiserver restart does."""
        with self.store.lock:
            for w in list(self.store.watchers):
                w.loop.call_soon_threadsafe(w.queue.put_nowait, None)

    def fail_next(self, count: int, code: int = 500) -> None:
        """Answer the next ``count`` resource requests with ``code`` (500, 429 with Retry-After)."""
        self._fail = (count, code)

    def verbs(self) -> set[tuple[str, str]]:
        return {(v, r) for v, r, _ in self.calls}

    # -- HTTP ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as e:
            return web.json_response(e.status(), status=e.code)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts or parts == ["version"]:
            return web.json_response({"major": "1", "minor": "37", "gitVersion": "v1.37.0-standin", "platform": "linux/amd64"})
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})
        if parts == ["apis"]:
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g.split("/")[0], "versions": [{"groupVersion": g, "version": g.split("/")[1]}],
                 "preferredVersion": {"groupVersion": g, "version": g.split("/")[1]}} for g in GROUPS]})
        if parts[0] == "api" and len(parts) >= 2:
            api_version, rest = parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version,
                                      "resources": _resources(api_version)})
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        resource, name, sub = rest[0], (rest[1] if len(rest) > 1 else ""), (rest[2] if len(rest) > 2 else "")
        kind = KINDS.get(resource)
        if kind is None or kind.api_version != api_version or (sub and sub not in kind.subresources):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._resource(request, resource, ns, name, sub)

    def _verb(self, request: web.Request, name: str) -> str:
        q = request.query
        if request.method == "GET":
            return "get" if name else ("watch" if q.get("watch") in ("1", "true") else "list")
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}.get(request.method, request.method.lower())

    async def _resource(self, request: web.Request, resource: str, ns: str, name: str, sub: str) -> web.StreamResponse:
        verb = self._verb(request, name)
        self.calls.append((verb, f"{resource}/{sub}" if sub else resource, ns))
        count, code = self._fail
        if count > 0:
            self._fail = (count - 1, code)
            err = ApiError(code, "TooManyRequests" if code == 429 else "InternalError", f"injected fault ({code})")
            return web.json_response(err.status(), status=code, headers={"Retry-After": "0"} if code == 429 else None)
        store, q = self.store, request.query
        if verb == "watch":
            return await self._watch(request, resource, ns)
        if verb == "list":
            items, rv = store.list(resource, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
            kind = KINDS[resource]
            return web.json_response({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                                      "metadata": {"resourceVersion": str(rv)}, "items": items})
        if sub == "scale":
            return web.json_response(await self._scale(request, verb, ns, name))
        if verb == "get":
            return web.json_response(store.get(resource, ns, name))
        body = await self._body(request) if request.can_read_body else {}
        if verb == "create":
            return web.json_response(store.create(resource, ns, body), status=201)
        if verb == "update":
            return web.json_response(store.replace(resource, ns, name, body, status_only=sub == "status"))
        if verb == "patch":
            ctype = request.content_type
            if ctype == "application/apply-patch+yaml":
                manager = q.get("fieldManager", "")
                if not manager:
                    raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value")
                obj, created = store.apply(resource, ns, name, body, manager, q.get("force") in ("1", "true"))
                if created:
                    self.calls.append(("create", resource, ns))  # an apply that creates is also authorized as create
                return web.json_response(obj, status=201 if created else 200)
            if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")
            return web.json_response(store.patch(resource, ns, name, body, status_only=sub == "status"))
        if verb == "delete":
            grace = q.get("gracePeriodSeconds")
            grace_s = int(grace) if grace is not None else body.get("gracePeriodSeconds")
            orphan = (q.get("propagationPolicy") or body.get("propagationPolicy")) == "Orphan"
            return web.json_response(store.delete(resource, ns, name, grace_s, orphan))
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported here")

    async def _body(self, request: web.Request) -> Obj:
        text = await request.text()
        try:
            data = yaml.safe_load(text) if request.content_type.endswith("yaml") else json.loads(text or "{}")
        except (ValueError, yaml.YAMLError) as e:
            raise ApiError(400, "BadRequest", f"cannot decode the body: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        return data

    async def _scale(self, request: web.Request, verb: str, ns: str, name: str) -> Obj:
        if verb in ("patch", "update"):
            body = await self._body(request)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "Invalid", "Scale.autoscaling is invalid: spec.replicas: Invalid value")
            self.store.patch("statefulsets", ns, name, {"spec": {"replicas": replicas}})
        sts = self.store.get("statefulsets", ns, name)
        labels = sts["spec"].get("selector", {}).get("matchLabels", {})
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: sts["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
                "spec": {"replicas": sts["spec"].get("replicas", 1)},
                "status": {"replicas": sts.get("status", {}).get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}

    async def _watch(self, request: web.Request, resource: str, ns: str) -> web.StreamResponse:
        q = request.query
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            w = self.store.watch(resource, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""),
                                 q.get("resourceVersion", ""), asyncio.get_running_loop())
        except ApiError as e:  # a real server answers 200 and one ERROR event carrying the Status
            await resp.write(json.dumps({"type": "ERROR", "object": e.status()}).encode() + b"\n")
            await resp.write_eof()
            return resp
        kind = KINDS[resource]
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(q.get("timeoutSeconds") or 1800)
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    entry = await asyncio.wait_for(w.queue.get(), min(left, self.bookmark_interval_s))
                except asyncio.TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        mark = {"kind": kind.kind, "apiVersion": kind.api_version,
                                "metadata": {"resourceVersion": str(w.seen_rv)}}
                        await resp.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                    continue
                if entry is None:  # dropped: cut the connection without ending the chunked body
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                w.seen_rv = max(w.seen_rv, entry.rv)
                if (line := _event_for(w.match, entry)) is not None:
                    await resp.write(line)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(w)
        return resp


def _event_for(match: Any, e: Entry) -> bytes | None:
    """What a watcher with this selector sees of a write: an object that starts or
    stops matching is ADDED or DELETED for it, as on a real server."""
    now, was = match(e.obj) and e.type != "DELETED", match(e.old) if e.old is not None else False
    if e.type == "DELETED":
        type_ = "DELETED" if was else None
    elif now and was:
        type_ = "MODIFIED"
    elif now:
        type_ = "ADDED"
    elif was:
        type_ = "DELETED"
    else:
        type_ = None
    return None if type_ is None else json.dumps({"type": type_, "object": e.obj}).encode() + b"\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="a stand-in Kubernetes API server on loopback")
    ap.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig for clients")
    ap.add_argument("--namespace", default="default")
    args = ap.parse_args()
    server = ApiServer()
    url = server.start()
    server.store.create("namespaces", "", {"metadata": {"name": args.namespace}})
    server.kubeconfig(args.kubeconfig, args.namespace)
    print(url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.stop()


if __name__ == "__main__":
    main()
