"""Fixtures: a stand-in API server on loopback with the pool's namespace, and its kubeconfig."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.apiserver import ApiServer

NS = "schedd"


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer(log_size=200, bookmark_interval_s=0.2)
    server.start()
    server.store.create("namespaces", "", {"metadata": {"name": NS}})
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: ApiServer, tmp_path: Path) -> Path:
    return apiserver.kubeconfig(tmp_path / "kubeconfig", NS)
