"""The stand-in API server speaks Kubernetes as the official clients expect:
the synchronous ``kubernetes.client`` and ``kubernetes.aio`` both create, list
with selectors, patch, apply, scale, delete and watch through it, and a watch
from a compacted version fails with 410 as on a real cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client, config, watch
from kubernetes.aio import client as aclient
from kubernetes.aio import config as aconfig
from kubernetes.aio import watch as awatch
from kubernetes.client.exceptions import ApiException

from tests.kube.apiserver import ApiServer
from tests.kube.conftest import NS



def _pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def _sts(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def test_sync_client_crud_selectors_and_conflicts(kubeconfig: Path, apiserver: ApiServer) -> None:
    v1 = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    for name, tier in (("a", "gpu"), ("b", "gpu"), ("c", "cpu")):
        v1.create_namespaced_pod(NS, _pod(name, tier=tier, team="ml"))
    got = v1.read_namespaced_pod("a", NS)
    assert got.metadata.uid and got.metadata.creation_timestamp and got.status.phase == "Pending"

    def names(sel: str) -> list[str]:
        return [p.metadata.name for p in v1.list_namespaced_pod(NS, label_selector=sel).items]

    assert names("tier=gpu") == ["a", "b"] and names("tier!=gpu") == ["c"]
    assert names("tier in (cpu, gpu),team") == ["a", "b", "c"] and names("tier notin (gpu)") == ["c"]
    assert names("!team") == [] and names("") == ["a", "b", "c"]
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(NS, _pod("a"))
    assert e.value.status == 409
    before = int(got.metadata.resource_version)
    patched = v1.patch_namespaced_pod("a", NS, {"metadata": {"labels": {"tier": None, "busy": "true"}}},
                                      _content_type="application/merge-patch+json")
    assert patched.metadata.labels == {"team": "ml", "busy": "true"} and int(patched.metadata.resource_version) > before
    v1.delete_namespaced_pod("c", NS)
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod("c", NS)
    assert e.value.status == 404
    assert ("create", "pods", NS) in apiserver.calls and ("patch", "pods", NS) in apiserver.calls


def test_sync_client_watch_replays_from_a_version_and_410_after_compaction(kubeconfig: Path, apiserver: ApiServer) -> None:
    v1 = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, _pod("x", app="a"))
    v1.create_namespaced_pod(NS, _pod("y", app="b"))
    v1.delete_namespaced_pod("x", NS)
    w = watch.Watch()
    seen = []
    for ev in w.stream(v1.list_namespaced_pod, NS, label_selector="app=a", resource_version=rv, timeout_seconds=30):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    assert seen == [("ADDED", "x"), ("DELETED", "x")]
    apiserver.compact()
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=30):
            pass
    assert e.value.status == 410


def test_sync_client_scales_and_applies_statefulsets(kubeconfig: Path, apiserver: ApiServer) -> None:
    apps = client.AppsV1Api(config.new_client_from_config(str(kubeconfig)))
    created = apps.patch_namespaced_stateful_set("g", NS, _sts("g", 2), field_manager="schedd",
                                                 _content_type="application/apply-patch+yaml")
    assert created.metadata.generation == 1 and created.metadata.managed_fields[0].manager == "schedd"
    assert {("patch", "statefulsets"), ("create", "statefulsets")} <= apiserver.verbs()
    again = apps.patch_namespaced_stateful_set("g", NS, _sts("g", 3), field_manager="schedd",
                                               _content_type="application/apply-patch+yaml")
    assert (again.spec.replicas, again.metadata.generation, again.metadata.uid) == (3, 2, created.metadata.uid)
    scale = apps.patch_namespaced_stateful_set_scale("g", NS, {"spec": {"replicas": 1}},
                                                     _content_type="application/merge-patch+json")
    assert scale.spec.replicas == 1 and apps.read_namespaced_stateful_set("g", NS).spec.replicas == 1
    assert ("patch", "statefulsets/scale", NS) in apiserver.calls


def test_a_fault_knob_answers_500_then_recovers(kubeconfig: Path, apiserver: ApiServer) -> None:
    v1 = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    apiserver.fail_next(1, 500)
    with pytest.raises(ApiException) as e:
        v1.list_namespaced_pod(NS)
    assert e.value.status == 500
    assert v1.list_namespaced_pod(NS).items == []


@pytest.mark.asyncio
async def test_aio_client_crud_watch_bookmarks_and_410(kubeconfig: Path, apiserver: ApiServer) -> None:
    api = await aconfig.new_client_from_config(str(kubeconfig))
    async with api:
        v1 = aclient.CoreV1Api(api)
        listed = await v1.list_namespaced_pod(NS, label_selector="app=w")
        rv = listed.metadata.resource_version
        await v1.create_namespaced_pod(NS, _pod("w0", app="w"))
        await v1.create_namespaced_pod(NS, _pod("other", app="x"))
        await v1.patch_namespaced_pod("w0", NS, {"metadata": {"labels": {"busy": "true"}}},
                                      _content_type="application/merge-patch+json")
        await v1.delete_namespaced_pod("w0", NS)
        events: list[tuple[str, str]] = []
        w = awatch.Watch()
        async with asyncio.timeout(20):
            async for ev in w.stream(v1.list_namespaced_pod, NS, label_selector="app=w", resource_version=rv,
                                     allow_watch_bookmarks=True, timeout_seconds=30):
                events.append((ev["type"], ev["raw_object"]["metadata"].get("name", "")))
                if ev["type"] == "BOOKMARK":
                    w.stop()
        assert events == [("ADDED", "w0"), ("MODIFIED", "w0"), ("DELETED", "w0"), ("BOOKMARK", "")]
        assert int(w.resource_version) >= int(rv) + 4  # the bookmark moved the version past the others' writes
        apiserver.compact()
        with pytest.raises(aclient.exceptions.ApiException) as e:
            async with asyncio.timeout(20):
                async for _ in awatch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=30):
                    pass
        assert e.value.status == 410


@pytest.mark.asyncio
async def test_aio_watch_ends_at_its_server_timeout_and_when_dropped(kubeconfig: Path, apiserver: ApiServer) -> None:
    api = await aconfig.new_client_from_config(str(kubeconfig))
    async with api:
        v1 = aclient.CoreV1Api(api)
        async with asyncio.timeout(20):
            async for _ in awatch.Watch().stream(v1.list_namespaced_pod, NS, timeout_seconds=1):
                pass  # nothing to see: the stream ends when the server's timeout does
        resp = await v1.list_namespaced_pod_without_preload_content(NS, watch=True)
        async with asyncio.timeout(20):
            while not apiserver.store.watchers:
                await asyncio.sleep(0.01)
            apiserver.drop_watches()
            with pytest.raises(aiohttp.ClientPayloadError):  # cut mid-body: not a clean end of stream
                while await resp.content.readline():
                    pass


@pytest.mark.asyncio
async def test_a_graceful_pod_delete_leaves_a_terminating_pod_until_the_kubelet_removes_it(
        kubeconfig: Path, apiserver: ApiServer) -> None:
    apiserver.store.kubelet_finalizes = True
    pod = _pod("t")
    pod["spec"]["nodeName"] = "k8s-node-1"
    api = await aconfig.new_client_from_config(str(kubeconfig))
    async with api:
        v1 = aclient.CoreV1Api(api)
        await v1.create_namespaced_pod(NS, pod)
        await v1.delete_namespaced_pod("t", NS, grace_period_seconds=30)
        live = await v1.read_namespaced_pod("t", NS)
        assert live.metadata.deletion_timestamp is not None and live.metadata.deletion_grace_period_seconds == 30
        apiserver.store.remove("pods", NS, "t")
        with pytest.raises(aclient.exceptions.ApiException) as e:
            await v1.read_namespaced_pod("t", NS)
        assert e.value.status == 404
