"""deploy/docker/Dockerfile builds with the local engine, offline, and its image works.

The base is made from this machine's files (:mod:`tests.kube.imagebuild`); the
recipe itself is the shipped one, with only its build arguments set. Skipped
without an engine, a failure under ``CI=true`` (the docker tests' fixture).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.docker.conftest import docker_client
from tests.kube import imagebuild

__all__ = ["docker_client"]  # the fixture, imported to be found here

POOL_YAML = imagebuild.ROOT / "deploy" / "kubernetes" / "pool.yaml"
CONF_DIR_IN_IMAGE = "$(python -c 'from schedd.config import CONF_DIR; print(CONF_DIR)')"


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both targets of the Dockerfile, built from the working tree; removed afterwards."""
    base = imagebuild.deps_image(docker_client)
    wheel = imagebuild.project_wheel(tmp_path_factory.mktemp("dist"))
    args = {"BASE": base, "PIP_OPTS": "--no-index --no-deps", "WHEEL": f"dist/{wheel.name}"}
    tags: dict[str, str] = {}
    try:
        for target in ("nodeagent", "schedd"):
            started = time.monotonic()
            with imagebuild.context_tar(wheel) as context:
                tag = f"schedd-test/schedd-{target}:pid{os.getpid()}"
                tags[target] = imagebuild.build(docker_client, context, tag, target=target, buildargs=args)
            print(f"built {tag} in {time.monotonic() - started:.1f} s")
        yield tags
    finally:
        for tag in tags.values():
            docker_client.images.remove(tag, force=True)


def _run(client: docker.DockerClient, image: str, script: str, user: str | None = None) -> str:
    """``sh -c script`` in a fresh container without network; its stdout (an error names stderr)."""
    out = client.containers.run(image, ["sh", "-c", script], remove=True, network_mode="none", user=user,
                                stdout=True, stderr=False)
    return bytes(out).decode()


def test_default_image_runs_both_commands_as_root(docker_client: docker.DockerClient, images: dict[str, str]) -> None:
    image = images["nodeagent"]
    assert _run(docker_client, image, "id -u").strip() == "0", "the agent must be root to start jobs as their owners"
    assert "pool" in _run(docker_client, image, "schedd --help")
    usage = _run(docker_client, image, "nodeagent --help")
    assert "--fake-gpus" in usage and "--token-file" in usage
    env = _run(docker_client, image, "env")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "the device plugin sets it; an image value could expose every GPU"


def test_image_renders_the_committed_manifests(docker_client: docker.DockerClient, images: dict[str, str]) -> None:
    """The shipped conf/ is where schedd looks for it, and the image renders deploy/kubernetes/pool.yaml byte for byte."""
    rendered = _run(docker_client, images["nodeagent"], f'schedd pool render --pool "{CONF_DIR_IN_IMAGE}/pool.kubernetes.toml"')
    assert rendered == Path(POOL_YAML).read_text()


def test_schedd_target_is_unprivileged(docker_client: docker.DockerClient, images: dict[str, str]) -> None:
    image = images["schedd"]
    assert _run(docker_client, image, "id -u; id -g").split() == ["10001", "10001"]
    assert _run(docker_client, image, "touch /var/lib/schedd/probe && echo writable").strip() == "writable"
    token = _run(docker_client, image, "schedd token create agents --role agent --state-dir /var/lib/schedd").strip()
    assert len(token) >= 32, token
