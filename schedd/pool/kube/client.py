"""The only module that imports ``kubernetes``: the few calls the driver makes.

Objects travel as plain dicts (the JSON the API server sent), never as the
client's generated models: the watcher reads a few fields of thousands of pod
events, and model deserialisation would dominate. Watch frames are read raw so
that :class:`Gone` (410) and bookmarks reach :mod:`.watch` unfiltered — the
client's own ``Watch`` helper retries a 410 once from the same version and
deserialises every frame. Errors become :class:`KubeError` with the HTTP code
and the server's message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Gone", "KubeApi", "KubeError", "WatchEvent"]

Obj = dict[str, Any]
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
FIELD_MANAGER = "schedd"


class KubeError(Exception):
    """The API server answered an error (or an ERROR watch frame)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Gone(KubeError):
    """410: the resourceVersion fell out of the server's history; relist."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    obj: Obj

    @property
    def resource_version(self) -> str:
        return str(self.obj.get("metadata", {}).get("resourceVersion", ""))


def _error(status: int, body: Any) -> KubeError:
    message = body.get("message", "") if isinstance(body, dict) else str(body)
    return (Gone if status == 410 else KubeError)(status, message or "no message")


class KubeApi:
    """Namespaced pod and StatefulSet calls over ``kubernetes.aio``."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes.aio import client

        self.namespace = namespace
        self._api = api_client
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)

    @classmethod
    async def connect(cls, namespace: str, kubeconfig: str = "") -> KubeApi:
        """From a kubeconfig file, or (``""``) the pod's service account inside the cluster."""
        from kubernetes.aio import client, config

        if kubeconfig:
            return cls(await config.new_client_from_config(config_file=kubeconfig), namespace)  # type: ignore[no-untyped-call]
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return cls(client.ApiClient(), namespace)

    async def close(self) -> None:
        await self._api.close()

    @staticmethod
    async def _json(resp: Any) -> Obj:
        try:
            body = await resp.json(content_type=None)
        finally:
            resp.release()
        if resp.status >= 400:
            raise _error(resp.status, body)
        return body  # type: ignore[no-any-return]

    async def list_pods(self, selector: str) -> tuple[list[Obj], str]:
        """Every pod matching the selector, and the version to watch from."""
        body = await self._json(await self._core.list_namespaced_pod_without_preload_content(
            self.namespace, label_selector=selector))
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    async def watch_pods(self, selector: str, since: str, timeout_s: int) -> AsyncIterator[WatchEvent]:
        """Pod events after ``since`` until the server's timeout; :class:`Gone` on 410."""
        resp = await self._core.list_namespaced_pod_without_preload_content(
            self.namespace, label_selector=selector, watch=True, resource_version=since,
            allow_watch_bookmarks=True, timeout_seconds=timeout_s, _request_timeout=float(timeout_s + 30))
        try:
            if resp.status >= 400:
                raise _error(resp.status, await resp.json(content_type=None))
            while line := await resp.content.readline():
                if not line.strip():
                    continue
                frame = json.loads(line)
                if frame.get("type") == "ERROR":
                    obj = frame.get("object") or {}
                    raise _error(int(obj.get("code", 500)), obj)
                yield WatchEvent(frame["type"], frame["object"])
        finally:
            resp.release()

    async def get_statefulset(self, name: str) -> Obj | None:
        resp = await self._apps.read_namespaced_stateful_set_without_preload_content(name, self.namespace)
        if resp.status == 404:
            resp.release()
            return None
        return await self._json(resp)

    async def apply_statefulset(self, body: Obj) -> Obj:
        """Server-side apply as field manager ``schedd``, taking over conflicting fields (force)."""
        return await self._json(await self._apps.patch_namespaced_stateful_set_without_preload_content(
            body["metadata"]["name"], self.namespace, body, field_manager=FIELD_MANAGER, force=True,
            _content_type=APPLY))

    async def label_pod(self, name: str, labels: dict[str, str | None]) -> Obj:
        """Set (a string) or remove (None) labels of one pod by JSON merge patch.

        A merge patch, not an apply: a label is a single key that the driver
        alone writes, and an apply would make ``schedd`` the manager of a pod
        that its StatefulSet owns.
        """
        return await self._json(await self._core.patch_namespaced_pod_without_preload_content(
            name, self.namespace, {"metadata": {"labels": labels}}, _content_type=MERGE))
