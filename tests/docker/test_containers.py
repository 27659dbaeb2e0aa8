"""The docker runtime's parts against a real engine: what a container is asked for
(GPUs, limits, user, mounts), the sweep of orphaned containers, and a
``-l container=IMAGE`` job on a node whose runtime is plain processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import msgspec
import pytest

from nodeagent.runtime import runner
from nodeagent.runtime.containerize import write_spec
from nodeagent.runtime.engine import ContainerSpec, container_name
from nodeagent.env.image import VENV, ensure_image, evict_images, image_tag
from nodeagent.jobdir import SupervisorSpec
from nodeagent.jobs import JobTable, Runtime
from tests.agent.conftest import launch
from tests.cli.pbs_commands import BIN, env_for, seq
from tests.docker.test_runtime import node_containers
from schedd.protocol import EnvPackage, EnvPython, EnvSpec
from tests.integration.conftest import Daemon, _kill_leftovers
from tests.pyenvs import make_wheel, offline_env


def container_spec(tmp_path: Path, image: str, gpus: list[int], real_gpus: bool) -> ContainerSpec:
    msg = launch(tmp_path, script="#!/bin/sh\nsleep 60\n", gpus=gpus, ncpus=1, mem_mb=48)
    spec = SupervisorSpec(launch=msg, cookie="c0ffee", node="nodeX", runtime="docker", docker_image=image,
                          docker_gpus=real_gpus)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "TMPDIR": str(scratch / "tmp"), "PATH": "/host/bin"}
    path = write_spec(tmp_path, spec, image, ["/bin/bash", str(scratch / "script")], env, tmp_path, scratch, None)
    return msgspec.json.decode(path.read_bytes(), type=ContainerSpec)


@pytest.fixture
def created(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for cid in ids:
        with contextlib.suppress(docker.errors.NotFound):  # the test may have had it removed
            docker_client.api.remove_container(cid, force=True)


def test_real_gpus_become_device_requests_for_exactly_the_jobs_gpus(
        tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient, created: list[str]) -> None:
    cspec = container_spec(tmp_path, busybox_image, [2, 5], real_gpus=True)
    assert cspec.gpu_ids == ["2", "5"] and cspec.env["CUDA_VISIBLE_DEVICES"] == "0,1"  # renumbered inside
    assert "PATH" not in cspec.env and cspec.env["HOME"] == str(tmp_path / "scratch" / "tmp")
    assert cspec.command == [str(tmp_path / "scratch" / "script")]  # #! script: executed as is
    created.append(runner._create(docker_client.api, cspec))  # created, not started: no nvidia runtime here
    host = docker_client.api.inspect_container(created[0])["HostConfig"]
    (request,) = host["DeviceRequests"]
    assert request["DeviceIDs"] == ["2", "5"] and request["Capabilities"] == [["gpu"]]
    assert host["Memory"] == host["MemorySwap"] == 48 << 20 and host["NanoCpus"] == 10**9
    assert host["NetworkMode"] == "host" and host["Init"] is True
    assert sorted(m["Target"] for m in host["Mounts"]) == sorted({str(tmp_path), str(tmp_path / "scratch")})
    config = docker_client.api.inspect_container(created[0])["Config"]
    assert config["User"] == f"{os.getuid()}:{os.getgid()}" and config["Labels"]["schedd.gpus"] == "2,5"
    assert any(e.startswith("PATH=/") and "/host/bin" not in e for e in config["Env"])  # the image's PATH


def test_fake_gpus_request_no_device_and_keep_the_node_indices(
        tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient, created: list[str]) -> None:
    cspec = container_spec(tmp_path, busybox_image, [2, 5], real_gpus=False)
    assert cspec.gpu_ids == [] and cspec.env["CUDA_VISIBLE_DEVICES"] == "2,5"
    created.append(runner._create(docker_client.api, cspec))
    assert not docker_client.api.inspect_container(created[0])["HostConfig"]["DeviceRequests"]


def test_an_agent_starting_removes_only_its_own_orphaned_containers(
        tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient, created: list[str]) -> None:
    state = tmp_path / "agent"
    mine = {"schedd.node": "nodeX", "schedd.jobs": str(state / "jobs")}
    other = {"schedd.node": "nodeX", "schedd.jobs": "/elsewhere/jobs"}  # another pool's node of the same name
    for name, labels in ((container_name("nodeX", "9", 0, 0), mine), ("schedd-test-other-pool", other)):
        c: Any = docker_client.containers.create(busybox_image, ["sleep", "60"], name=name, labels=labels)
        created.append(c.id)

    async def open_table() -> None:
        table = JobTable(state, node="nodeX", runtime=Runtime("docker", busybox_image))
        await table.open()
        await table.close()

    asyncio.run(open_table())
    left = {c.name for c in docker_client.containers.list(all=True, filters={"label": "schedd.node=nodeX"})}
    assert left == {"schedd-test-other-pool"}


def test_qsub_l_container_runs_in_docker_on_a_process_node(
        tmp_path: Path, busybox_image: str, docker_client: docker.DockerClient) -> None:
    daemon = Daemon(tmp_path, nodes=1).start()
    try:
        script = tmp_path / "job.sh"
        script.write_text("#!/bin/sh\n#PBS -N boxed\n[ -f /.dockerenv ] && echo in-container\n")
        out = subprocess.run([str(BIN / "qsub"), "-l", f"container={busybox_image}", str(script)], cwd=tmp_path,
                             env=env_for(daemon.url), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        jid = seq(out.stdout)
        job = daemon.wait_state(jid, "finished")
        assert job["exit_status"] == 0 and job["container"] == busybox_image, job
        assert (tmp_path / f"boxed.o{jid}").read_text() == "in-container\n"
        full = subprocess.run([str(BIN / "qstat"), "-xf", jid], env=env_for(daemon.url), capture_output=True, text=True)
        assert f"    Resource_List.container = {busybox_image}\n" in full.stdout
        assert node_containers(docker_client, daemon) == []
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_an_environment_image_has_the_exact_pins_with_either_installer(
        tmp_path: Path, python_image: str, docker_client: docker.DockerClient, installer: str) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tinypkg", "1.0")
    make_wheel(wheels, "tinypkg", "2.0")
    v = sys.version_info
    spec = EnvSpec(python=EnvPython(f"{v.major}.{v.minor}.{v.micro}"), packages=[EnvPackage("tinypkg", "1.0")])
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) if installer == "uv" else None
    assert installer == "pip" or uv is not None, "uv is a test dependency: it must be in the venv"
    api = docker_client.api
    tag = image_tag(api.inspect_image(python_image)["Id"], spec)
    with contextlib.suppress(docker.errors.ImageNotFound):
        api.remove_image(tag, force=True)
    image = ensure_image(api, python_image, spec, tmp_path / "locks", offline_env(wheels), uv=uv)
    assert image.built and image.tag == tag
    out = docker_client.containers.run(tag, [f"{VENV}/bin/python", "-c", "import tinypkg; print(tinypkg.__version__)"],
                                       remove=True)
    assert out == b"1.0\n"
    history = " ".join(str(h.get("CreatedBy")) for h in api.history(tag))
    assert "/opt/schedd/links" not in history and "COPY uv" not in history  # the build stage stayed behind
    again = ensure_image(api, python_image, spec, tmp_path / "locks", offline_env(wheels), uv=uv)
    assert not again.built and again.tag == tag


def test_environment_images_beyond_the_cap_go_least_recently_used_first(
        tmp_path: Path, python_image: str, docker_client: docker.DockerClient) -> None:
    wheels = tmp_path / "wheels"
    v = sys.version_info
    specs = []
    for version in ("1.0", "2.0", "3.0"):
        make_wheel(wheels, "tinypkg", version)
        specs.append(EnvSpec(python=EnvPython(f"{v.major}.{v.minor}.{v.micro}"), packages=[EnvPackage("tinypkg", version)]))
    api, locks, environ = docker_client.api, tmp_path / "locks", offline_env(wheels)
    for image in docker_client.images.list(name="schedd-env"):
        docker_client.images.remove(image.id, force=True)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    one, two = (ensure_image(api, python_image, s, locks, environ, uv=uv, max_bytes=None) for s in specs[:2])
    user = docker_client.containers.create(one.tag, ["true"])  # a job's container still holds image one
    try:
        ensure_image(api, python_image, specs[0], locks, environ, uv=uv)  # a hit: one is now the most recent
        three = ensure_image(api, python_image, specs[2], locks, environ, uv=uv, max_bytes=1)
        left = {t for i in docker_client.images.list(name="schedd-env") for t in i.tags}
        assert left == {one.tag, three.tag}  # two (least recent) went; one is in use; three was just built
    finally:
        user.remove()
    assert evict_images(api, locks, 1, keep=three.tag) == [one.tag]  # no container holds it any more
