"""The environment image build runs nothing of the user's as root (security issue #17)."""

from __future__ import annotations

import io
from pathlib import Path

import docker
import pytest

from nodeagent.env.cache import EnvError
from nodeagent.env.image import BUILD_UID, VENV, _dockerfile, ensure_image
from schedd.protocol import EnvPython, EnvSpec


def test_every_build_step_runs_as_the_unprivileged_build_user() -> None:
    text = _dockerfile("base:1", EnvSpec(python=EnvPython("3.11.7"), requirements=["x==1"], source="requirements"),
                       [], links=True, uv=True)
    lines = text.splitlines()
    user = lines.index(f"USER {BUILD_UID}:{BUILD_UID}")
    runs = [i for i, line in enumerate(lines) if line.startswith("RUN")]
    assert runs and min(runs) > user  # no RUN before the drop: no user-controlled binary runs as root
    assert f"COPY --from=build --chown=0:0 {VENV} {VENV}" in lines  # the job cannot change its venv


def test_a_built_venv_belongs_to_root(python_image: str, docker_client: docker.DockerClient,
                                                             tmp_path: Path) -> None:
    spec = EnvSpec(python=EnvPython(_python_version(docker_client, python_image)), source="requirements")
    image = ensure_image(docker_client.api, python_image, spec, tmp_path, {})
    try:
        out = docker_client.containers.run(image.tag, ["sh", "-c", f"stat -c '%u %U' {VENV}/bin/python {VENV}"],
                                           remove=True).decode()
        assert out.split() == ["0", "root", "0", "root"], out
    finally:
        docker_client.images.remove(image.tag, force=True)


def test_a_base_with_onbuild_triggers_is_refused(python_image: str, docker_client: docker.DockerClient,
                                                  tmp_path: Path) -> None:
    dockerfile = f"FROM {python_image}\nONBUILD RUN id -u > /proof\n".encode()
    tag = "schedd-test/onbuild:1"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    try:
        spec = EnvSpec(python=EnvPython(_python_version(docker_client, python_image)), source="requirements")
        with pytest.raises(EnvError, match="ONBUILD triggers"):
            ensure_image(docker_client.api, tag, spec, tmp_path, {})
    finally:
        docker_client.images.remove(tag, force=True)


def _python_version(client: docker.DockerClient, image: str) -> str:
    out = client.containers.run(image, ["python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                remove=True)
    return out.decode().strip()
