"""Fixtures of the docker tests: a real engine, and the base images built locally.

Off CI, no engine means the docker tests are skipped; on CI (``CI=true``) it is a
failure, because there they must run for real (``.ci/run`` starts the engine).
"""

from __future__ import annotations

import os

import docker
import pytest

from tests import dockerimages

ENGINE = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # any reason at all: no socket, no permission, a dead daemon
        reason = f"no Docker engine reachable at {ENGINE}: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the docker tests (.ci/run starts one with ci/dockerd.sh)")
        pytest.skip(f"{reason}; start one with `sudo bash ci/dockerd.sh`")
    return client


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    return dockerimages.busybox_image(docker_client)


@pytest.fixture(scope="session")
def python_image(docker_client: docker.DockerClient) -> str:
    return dockerimages.python_image(docker_client)
