"""The locally built base images run: a shell in one, the host's Python in the other."""

from __future__ import annotations

import platform
import sys

import docker


def test_busybox_runs_a_shell(docker_client: docker.DockerClient, busybox_image: str) -> None:
    out = docker_client.containers.run(busybox_image, ["sh", "-c", "echo hi; id -u"], remove=True)
    assert out.decode().split() == ["hi", "0"]


def test_busybox_has_nobody(docker_client: docker.DockerClient, busybox_image: str) -> None:
    out = docker_client.containers.run(busybox_image, ["id", "-un"], user="65534", remove=True)
    assert out.decode().strip() == "nobody"


def test_python_is_the_hosts_base_interpreter(docker_client: docker.DockerClient, python_image: str) -> None:
    code = "import platform, ssl, sqlite3, ctypes, json, sys; print(platform.python_version(), sys.prefix)"
    out = docker_client.containers.run(python_image, ["python3", "-c", code], remove=True)
    assert out.decode().split() == [platform.python_version(), sys.base_prefix]
    assert python_image.endswith(":" + platform.python_version())


def test_python_makes_a_venv(docker_client: docker.DockerClient, python_image: str) -> None:
    script = "python3 -m venv /tmp/v && /tmp/v/bin/python -m pip --version"
    out = docker_client.containers.run(python_image, ["sh", "-c", script], remove=True)
    assert out.decode().startswith("pip ")
