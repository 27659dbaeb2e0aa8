"""The state of the stand-in Kubernetes API server: objects, versions, history.

One global monotonic ``resourceVersion`` stamps every write, as etcd's revision
does; every write also goes into a bounded event log from which watches are
replayed. A watch from a version older than the log's floor is answered
``410 Gone``, which is exactly what a real server does after compaction and
what a driver's relist logic must survive. Thread-safe: the HTTP server runs
on its own loop and thread while tests and the simulator mutate from theirs;
watchers are fed through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

__all__ = ["ApiError", "Entry", "Kind", "KINDS", "Selector", "Store", "Watcher", "merge_patch", "now_rfc3339"]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: dict[str, Kind] = {
    "namespaces": Kind("", "v1", "Namespace", namespaced=False),
    "pods": Kind("", "v1", "Pod", subresources=("status",)),
    "services": Kind("", "v1", "Service"),
    "events": Kind("", "v1", "Event"),
    "configmaps": Kind("", "v1", "ConfigMap"),
    "secrets": Kind("", "v1", "Secret"),
    "serviceaccounts": Kind("", "v1", "ServiceAccount"),
    "statefulsets": Kind("apps", "v1", "StatefulSet", subresources=("status", "scale")),
    "poddisruptionbudgets": Kind("policy", "v1", "PodDisruptionBudget", subresources=("status",)),
    "roles": Kind("rbac.authorization.k8s.io", "v1", "Role"),
    "rolebindings": Kind("rbac.authorization.k8s.io", "v1", "RoleBinding"),
}


class ApiError(Exception):
    """Becomes a ``Status`` object with this HTTP code, as the real server answers."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def now_rfc3339(offset_s: float = 0) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes; lists are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


_REQ = re.compile(r"\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


class Selector:
    """A label selector: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``.

    >>> Selector("app=x,tier in (a, b),!gone").matches({"app": "x", "tier": "b"})
    True
    >>> Selector("app!=x").matches({"app": "x"}), Selector("").matches({})
    (False, True)
    """

    def __init__(self, text: str) -> None:
        self.reqs: list[Callable[[dict[str, str]], bool]] = []
        for part in re.split(r",(?![^()]*\))", text or ""):
            if not part.strip():
                continue
            m = _REQ.fullmatch(part)
            if m is None:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            neg, key, op, value, setop, values = m.groups()
            self.reqs.append(self._req(neg == "!", key, op or setop or "", value or "",
                                       {v.strip() for v in (values or "").split(",") if v.strip()}))

    @staticmethod
    def _req(neg: bool, key: str, op: str, value: str, values: set[str]) -> Callable[[dict[str, str]], bool]:
        if neg:
            return lambda labels: key not in labels
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        if op == "in":
            return lambda labels: labels.get(key) in values
        if op == "notin":
            return lambda labels: labels.get(key) not in values
        return lambda labels: key in labels

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r(labels) for r in self.reqs)


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


@dataclass(frozen=True)
class Entry:
    """One write, as a watch sees it."""

    rv: int
    resource: str
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    resource: str
    namespace: str  # "" = all namespaces
    labels: Selector
    fields: list[tuple[str, str, bool]]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Entry | None] = field(default_factory=asyncio.Queue)
    seen_rv: int = 0  # the version up to which this watcher has been given every event

    def match(self, obj: Obj | None) -> bool:
        return obj is not None and matches(obj, self.labels, self.fields)


def matches(obj: Obj, labels: Selector, fields: list[tuple[str, str, bool]]) -> bool:
    return labels.matches(obj["metadata"].get("labels") or {}) and all((_field(obj, p) == v) == eq for p, v, eq in fields)


def parse_fields(text: str) -> list[tuple[str, str, bool]]:
    out = []
    for part in filter(None, (text or "").split(",")):
        if "!=" in part:
            path, value = part.split("!=", 1)
            out.append((path.strip(), value.strip(), False))
        else:
            path, value = part.replace("==", "=").split("=", 1)
            out.append((path.strip(), value.strip(), True))
    return out


class Store:
    """Objects by (resource, namespace, name), a version counter and the event log."""

    def __init__(self, log_size: int = 1000) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.log: deque[Entry] = deque()
        self.log_size = log_size
        self.floor = 0  # every write with rv > floor is still in the log
        self.watchers: set[Watcher] = set()
        self.kubelet_finalizes = False  # set by the simulator: it removes terminating pods itself
        self._names = itertools.count()

    # -- writes -------------------------------------------------------------------

    def _record(self, resource: str, ns: str, type_: str, obj: Obj, old: Obj | None) -> None:
        entry = Entry(self.rv, resource, ns, type_, copy.deepcopy(obj), old)
        self.log.append(entry)
        while len(self.log) > self.log_size:
            self.floor = self.log.popleft().rv
        for w in list(self.watchers):
            if w.resource in (resource, "*") and (not w.namespace or w.namespace == ns):
                w.loop.call_soon_threadsafe(w.queue.put_nowait, entry)

    def _stamp(self, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def create(self, resource: str, ns: str, obj: Obj) -> Obj:
        kind = KINDS[resource]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        with self.lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._names):05x}"
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
            if kind.namespaced:
                meta["namespace"] = ns
                if ("namespaces", "", ns) not in self.objects:
                    raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
            key = (resource, ns if kind.namespaced else "", name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(k, None)
            if resource == "pods":
                obj.setdefault("status", {}).setdefault("phase", "Pending")
            self._stamp(obj)
            self.objects[key] = obj
            self._record(resource, key[1], "ADDED", obj, None)
            return copy.deepcopy(obj)

    def get(self, resource: str, ns: str, name: str) -> Obj:
        with self.lock:
            return copy.deepcopy(self._get(resource, ns, name))

    def _get(self, resource: str, ns: str, name: str) -> Obj:
        key = (resource, ns if KINDS[resource].namespaced else "", name)
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        return self.objects[key]

    def replace(self, resource: str, ns: str, name: str, new: Obj, *, check_rv: bool = True, status_only: bool = False) -> Obj:
        """PUT semantics: optimistic concurrency on ``resourceVersion``; generation follows spec."""
        with self.lock:
            old = self._get(resource, ns, name)
            given = (new.get("metadata") or {}).get("resourceVersion")
            if check_rv and given and given != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": '
                               "the object has been modified; please apply your changes to the latest version and try again")
            obj = copy.deepcopy(old)
            if status_only:
                obj["status"] = copy.deepcopy(new.get("status") or {})
            else:
                keep = {k: old["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "namespace", "name",
                                                        "deletionTimestamp", "deletionGracePeriodSeconds")
                        if k in old["metadata"]}
                obj = copy.deepcopy(new)
                obj["metadata"] = dict(new.get("metadata") or {}) | keep
                obj["apiVersion"], obj["kind"] = old["apiVersion"], old["kind"]
                if "status" in old and "status" not in new:
                    obj["status"] = old["status"]
                if obj.get("spec") != old.get("spec"):
                    obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if obj == old:
                return copy.deepcopy(old)  # a no-op write does not bump the version, as on a real server
            self._stamp(obj)
            self.objects[(resource, obj["metadata"].get("namespace", ""), name)] = obj
            self._record(resource, obj["metadata"].get("namespace", ""), "MODIFIED", obj, old)
            return copy.deepcopy(obj)

    def patch(self, resource: str, ns: str, name: str, patch: Obj, *, status_only: bool = False) -> Obj:
        with self.lock:
            old = self._get(resource, ns, name)
            if status_only:
                patch = {"status": patch.get("status") or {}}
            new = merge_patch(old, patch)
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.replace(resource, ns, name, new, status_only=status_only)

    def apply(self, resource: str, ns: str, name: str, applied: Obj, manager: str, force: bool) -> tuple[Obj, bool]:
        """Server-side apply, simplified: the applied fields are merged over the live object
        and ``manager`` is recorded in managedFields. Returns (object, created)."""
        entry = {"manager": manager, "operation": "Apply", "apiVersion": applied.get("apiVersion", ""),
                 "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {}}
        with self.lock:
            try:
                old = self._get(resource, ns, name)
            except ApiError:
                obj = copy.deepcopy(applied)
                obj.setdefault("metadata", {})["managedFields"] = [entry]
                return self.create(resource, ns, obj), True
            managers = [m for m in old["metadata"].get("managedFields", []) if m.get("manager") != manager]
            new = merge_patch(old, {k: v for k, v in applied.items() if k != "metadata"})
            new["metadata"] = merge_patch(old["metadata"], {k: v for k, v in applied.get("metadata", {}).items()
                                                            if k in ("labels", "annotations")})
            new["metadata"]["managedFields"] = managers + [entry]
            return self.replace(resource, ns, name, new, check_rv=False), False

    def delete(self, resource: str, ns: str, name: str, grace_s: int | None = None, orphan: bool = False) -> Obj:
        """Pods bound to a node and given a grace period get a deletionTimestamp and
        stay until the kubelet (the simulator) removes them; everything else goes now.
        Dependents (ownerReferences) are deleted in the background unless orphaned."""
        with self.lock:
            obj = self._get(resource, ns, name)
            if resource == "pods":
                grace = grace_s if grace_s is not None else obj["spec"].get("terminationGracePeriodSeconds", 30)
                if grace > 0 and obj["spec"].get("nodeName") and self.kubelet_finalizes:
                    if "deletionTimestamp" in obj["metadata"]:
                        return copy.deepcopy(obj)
                    new = copy.deepcopy(obj)
                    new["metadata"].update(deletionTimestamp=now_rfc3339(grace), deletionGracePeriodSeconds=grace)
                    return self.replace(resource, ns, name, new, check_rv=False)
            return self.remove(resource, ns, name, orphan=orphan)

    def remove(self, resource: str, ns: str, name: str, orphan: bool = False) -> Obj:
        """The object is gone for good (the kubelet confirmed, or it never needed one)."""
        with self.lock:
            obj = self._get(resource, ns, name)
            del self.objects[(resource, obj["metadata"].get("namespace", ""), name)]
            self.rv += 1
            gone = copy.deepcopy(obj)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(resource, obj["metadata"].get("namespace", ""), "DELETED", gone, obj)
            if not orphan:
                uid = obj["metadata"]["uid"]
                for (r, n, nm), child in list(self.objects.items()):
                    if any(o.get("uid") == uid for o in child["metadata"].get("ownerReferences", [])):
                        self.delete(r, n, nm)
            return gone

    # -- reads and watches -------------------------------------------------------------

    def list(self, resource: str, ns: str, labels: str = "", fields: str = "") -> tuple[list[Obj], int]:
        selector, wanted = Selector(labels), parse_fields(fields)
        with self.lock:
            items = [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                     if r == resource and (not ns or n == ns) and matches(o, selector, wanted)]
            return items, self.rv

    def watch(self, resource: str, ns: str, labels: str, fields: str, since: str,
              loop: asyncio.AbstractEventLoop) -> Watcher:
        """Register a watcher and queue what it must see first: the current objects as
        ADDED (no version given, or "0"), or the log after ``since``; 410 if compacted."""
        w = Watcher(resource, ns, Selector(labels), parse_fields(fields), loop)
        with self.lock:
            if since in ("", "0"):
                items, _ = self.list(resource, ns, labels, fields)
                for o in items:
                    w.queue.put_nowait(Entry(int(o["metadata"]["resourceVersion"]), resource, ns, "ADDED", o, None))
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resource version {since!r}") from None
                if start < self.floor:
                    raise ApiError(410, "Expired", f"too old resource version: {start} ({self.floor + 1})")
                for e in self.log:
                    if e.rv > start and e.resource == resource and (not ns or e.namespace == ns):
                        w.queue.put_nowait(e)
            w.seen_rv = self.rv
            self.watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            self.watchers.discard(w)

    def changes(self, loop: asyncio.AbstractEventLoop) -> Watcher:
        """A watcher of every write to every resource, for controllers and test waits."""
        w = Watcher("*", "", Selector(""), [], loop)
        with self.lock:
            self.watchers.add(w)
        return w

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Return once ``predicate()`` holds, re-checking after each write; TimeoutError past the deadline."""
        w = self.changes(asyncio.get_running_loop())
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    await w.queue.get()
        finally:
            self.unwatch(w)

    def compact(self) -> int:
        """Forget the whole event log (etcd compaction): any watch from an older version gets 410."""
        with self.lock:
            self.log.clear()
            self.floor = self.rv
            return self.floor
