"""A job's container cannot gain privileges, and mounts only what its owner reaches.

Against a real engine: the container as created (``docker inspect``) carries
``no-new-privileges``, drops every capability and is not privileged; a mount
is of the real path the owner reached, and a source that is gone is the
engine's error, not a directory it makes as root. The owner's check itself
(:func:`nodeagent.runtime.containerize.reachable`) needs root to switch to a user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import msgspec
import pytest

from nodeagent.runtime import runner
from nodeagent.runtime.containerize import Unreachable, reachable
from nodeagent.runtime.engine import ContainerSpec
from tests.docker.test_containers import container_spec

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the check switches to another user")


@pytest.fixture
def created(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for cid in ids:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(cid, force=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's tmp_path is under root's 0700 one)."""
    top = Path(tempfile.mkdtemp(prefix="schedd-hard-"))
    top.chmod(0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def as_nobody(cspec: ContainerSpec, *mounts: Path, workdir: Path) -> ContainerSpec:
    return msgspec.structs.replace(cspec, user=f"{NOBODY}:{NOBODY}", group_add=[], owner="nobody",
                                   mounts=[str(m) for m in mounts], mount_roles={str(workdir): "workdir"})


def test_a_job_container_has_no_new_privileges_and_no_capabilities(
        tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient, created: list[str]) -> None:
    cspec = container_spec(tmp_path, busybox_image, [], real_gpus=False)
    created.append(runner._create(docker_client.api, cspec))
    host = docker_client.api.inspect_container(created[0])["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["Privileged"] is False and host["Init"] is True  # docker-init stays pid 1
    assert host["ReadonlyRootfs"] is False  # nothing else about the container changes


def test_a_mount_source_that_is_gone_is_an_error_not_a_directory_the_engine_makes(
        tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient, created: list[str]) -> None:
    cspec = container_spec(tmp_path, busybox_image, [], real_gpus=False)
    gone = tmp_path / "gone" / "deeper"
    cspec = msgspec.structs.replace(cspec, mounts=[*cspec.mounts, str(gone)])
    with pytest.raises(docker.errors.APIError, match="bind source path does not exist"):
        created.append(runner._create(docker_client.api, cspec))
    assert not (tmp_path / "gone").exists()


@needs_root
def test_a_workdir_under_a_0700_root_directory_is_refused_naming_it_and_the_user(
        tmp_path: Path, open_dir: Path, busybox_image: str) -> None:
    workdir = open_dir / "root-only-0700" / "pub"
    workdir.mkdir(parents=True, mode=0o777)
    workdir.chmod(0o777)  # the directory itself is open: only its parent is not
    (open_dir / "root-only-0700").chmod(0o700)
    cspec = as_nobody(container_spec(tmp_path, busybox_image, [], real_gpus=False), workdir, workdir=workdir)
    with pytest.raises(Unreachable) as refused:
        reachable(cspec)
    assert str(refused.value) == f"workdir {workdir}: permission denied for user nobody"
    (open_dir / "root-only-0700").chmod(0o755)  # the same path, reachable now
    assert reachable(cspec) == {str(workdir): str(workdir)}


@needs_root
def test_a_mount_reached_through_a_symlink_is_mounted_from_the_real_path_the_owner_entered(
        tmp_path: Path, open_dir: Path, busybox_image: str, docker_client: docker.DockerClient,
        created: list[str]) -> None:
    real = open_dir / "real"
    real.mkdir(mode=0o755)
    link = open_dir / "link"
    link.symlink_to(real)
    cspec = as_nobody(container_spec(tmp_path, busybox_image, [], real_gpus=False), link, workdir=link)
    sources = reachable(cspec)
    assert sources == {str(link): str(real)}
    created.append(runner._create(docker_client.api, cspec, sources))
    (mount,) = docker_client.api.inspect_container(created[0])["HostConfig"]["Mounts"]
    assert (mount["Type"], mount["Source"], mount["Target"]) == ("bind", str(real), str(link))
