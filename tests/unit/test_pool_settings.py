"""``conf/pool.toml``: the shipped file loads, node group runtimes become agent
flags, and a bad runtime setting is an error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedd.errors import ConfigError
from schedd.config import NodeGroup, load_pool


def test_the_shipped_pool_runs_processes() -> None:
    (group,) = load_pool().groups
    assert group.runtime == "process" and group.agent_args() == []


def test_a_docker_group_passes_its_runtime_to_its_agents(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('[[groups]]\nruntime = "docker"\ndocker_image = "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"\n'
                    'docker_host = "unix:///run/docker.sock"\n')
    (group,) = load_pool(path).groups
    assert group.agent_args() == ["--runtime", "docker", "--docker-image", "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
                                  "--docker-host", "unix:///run/docker.sock"]
    assert NodeGroup(docker_image="img:1").agent_args() == ["--docker-image", "img:1"]


@pytest.mark.parametrize(("toml", "where", "message"), [
    ('runtime = "docker"', "groups[0].docker_image", "needs the image of jobs that name none"),
    ('runtime = "podman"', "groups[0].runtime", "Invalid enum value 'podman'"),
    ('docker_image = "Not An Image"', "groups[0].docker_image", "not a docker image reference"),
])
def test_bad_runtime_settings_name_the_key(tmp_path: Path, toml: str, where: str, message: str) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(f"[[groups]]\n{toml}\n")
    with pytest.raises(ConfigError) as e:
        load_pool(path)
    assert where in str(e.value) and message in str(e.value), str(e.value)
