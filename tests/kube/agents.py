"""The simulator's container runtime: a real ``nodeagent`` process per Running pod.

:class:`Kubelet` supplies :class:`~tests.kube.cluster.Cluster`'s hooks. For
each pod that becomes Running it does what a kubelet and container runtime do
with the pod spec that ``schedd pool render`` (or the driver's apply) wrote,
and nothing test-specific beyond what is listed below:

- the container's ``env``: plain values, the downward API (``fieldRef``:
  ``metadata.name``, ``metadata.uid``, ``spec.nodeName``, ``status.podIP``...)
  and ``secretKeyRef``, then ``$(VAR)`` expansion in ``env``, ``command`` and
  ``args`` (``$$`` escapes), as Kubernetes does;
- volumes: a ``secret`` or ``configMap`` is read from the stand-in API server
  and written as files, an ``emptyDir`` is a fresh directory per pod incarnation
  (pod UID); a mount path in an argument or a value is rewritten to that
  directory (there is no mount namespace of the image's filesystem here);
- the image is this checkout's venv: ``command[0]`` is looked up in its bin/;
- the GPUs the pod requests (``limits[gpu_resource]``) become ``--fake-gpus N``:
  the stand-in for the device plugin's devices read through NVML;
- networking: with a :class:`~tests.kube.netns.PodNetwork`, each incarnation
  runs in its own network namespace (``ip netns exec``) with its own address,
  written back as the pod's ``status.podIP`` as a CNI plugin would, and its
  ``/etc/hosts`` maps the Service's name to the daemon. Without one (no root),
  agents run in this namespace and the Service name is rewritten to the
  daemon's address in their arguments.

Deletion (:meth:`Kubelet.on_deleted`) follows the kubelet: the ``preStop``
handler (``sleep``, optionally capped for test speed, or ``exec`` in the pod),
then SIGTERM, then SIGKILL once ``deletionGracePeriodSeconds`` (counted from
the start of the deletion) has run out; then every process left in the pod is
killed (the runtime ends the container's whole process tree) and its network
namespace removed. How each agent ended is kept in :attr:`Agent.ended`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.kube.apiserver import ApiServer
from tests.kube.netns import PodNet, PodNetwork
from tests.kube.store import Obj

__all__ = ["Agent", "Kubelet", "expand"]

VENV_BIN = Path(sys.executable).parent
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, others kept, ``$$`` is ``$``.

    >>> expand("--name $(POD) $(NOPE) $$(POD)", {"POD": "gpu8-0"})
    '--name gpu8-0 $(NOPE) $(POD)'
    """
    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])

    return _REF.sub(one, text)


def _field(pod: Obj, path: str) -> str:
    """A downward API ``fieldPath`` of the pod (the ones a container may ask for)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    fields = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", ""),
              "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
              "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.podIP": status.get("podIP", ""), "status.hostIP": status.get("hostIP", "")}
    if path not in fields:
        raise ValueError(f"downward API field {path!r} is not simulated")
    return str(fields[path])


@dataclass
class Agent:
    """One pod incarnation's agent process."""

    name: str
    uid: str
    argv: list[str]
    env: dict[str, str]
    directory: Path
    proc: subprocess.Popen[bytes]
    net: PodNet | None
    started: float = field(default_factory=time.monotonic)
    ended: str = ""  # "SIGTERM" (it exited within the grace period) or "SIGKILL"

    @property
    def log(self) -> Path:
        return self.directory / "agent.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Kubelet:
    """``on_running`` / ``on_deleted`` for the simulator: real agents for pods.

    ``root`` holds one directory per pod incarnation (volumes, the agent's log).
    ``daemon_host`` is where the Service names in ``services`` lead.
    Hooks run on the API server's loop; :meth:`close` may be called from any thread.
    """

    def __init__(self, server: ApiServer, root: Path, *, network: PodNetwork | None, daemon_host: str,
                 services: list[str], gpu_resource: str = "nvidia.com/gpu", prestop_cap_s: float | None = None,
                 bin_dir: Path = VENV_BIN) -> None:
        self.server, self.store = server, server.store
        self.root, self.network, self.daemon_host = root, network, daemon_host
        self.services, self.gpu_resource = services, gpu_resource
        self.prestop_cap_s, self.bin_dir = prestop_cap_s, bin_dir
        self.agents: dict[str, Agent] = {}  # by pod UID, every incarnation ever started
        self.errors: list[str] = []  # pods whose agent could not be started, and why

    # -- the hooks -------------------------------------------------------------------

    async def on_running(self, pod: Obj) -> None:
        try:
            self._start(pod)
        except Exception as e:  # the simulator would swallow it: keep it for the test to show
            self.errors.append(f"{pod['metadata']['name']}: {e!r}")
            raise

    async def on_deleted(self, pod: Obj) -> None:
        agent = self.agents.get(pod["metadata"]["uid"])
        if agent is None:
            return
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds", pod["spec"].get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + float(grace)
        await self._prestop(agent, pod, deadline)
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(agent.proc.wait, max(0.0, deadline - time.monotonic()))
            agent.ended = "SIGTERM"
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            await asyncio.to_thread(agent.proc.wait)
            agent.ended = "SIGKILL"
        self._end_pod(agent)

    # -- starting ------------------------------------------------------------------------

    def _start(self, pod: Obj) -> Agent:
        meta = pod["metadata"]
        name, uid, ns = meta["name"], meta["uid"], meta.get("namespace", "")
        directory = self.root / f"{name}-{uid[:8]}"
        directory.mkdir(parents=True)
        net = self.network.add(uid, {svc: self.daemon_host for svc in self.services}) if self.network else None
        if net is not None:  # the CNI's part: the pod's real address
            pod = self.store.patch("pods", ns, name, {"status": {"podIP": net.address, "podIPs": [{"ip": net.address}]}},
                                   status_only=True)
        (container,) = pod["spec"]["containers"]
        mounts = self._volumes(pod, container, directory)
        env = self._env(pod, container)
        command = [expand(word, env) for word in container.get("command") or []]
        args = [expand(word, env) for word in container.get("args") or []]
        if not command:
            raise ValueError(f"pod {name}: no command (the image's entrypoint is not simulated)")
        program = shutil.which(command[0], path=str(self.bin_dir))
        if program is None:
            raise ValueError(f"pod {name}: {command[0]!r} is not in the image ({self.bin_dir})")
        argv = [program, *command[1:], *args, "--fake-gpus", str(self._gpus(container))]
        argv = [self._localise(word, mounts) for word in argv]
        env = {k: self._localise(v, mounts) for k, v in env.items()}
        base = {"PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        full = base | env
        prefix = net.exec_prefix() if net is not None else []
        log: IO[bytes] = (directory / "agent.log").open("ab")
        with log:
            proc = subprocess.Popen([*prefix, *argv], env=full, cwd=directory, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        agent = Agent(name, uid, argv, full, directory, proc, net)
        self.agents[uid] = agent
        return agent

    def _env(self, pod: Obj, container: Obj) -> dict[str, str]:
        ns = pod["metadata"].get("namespace", "")
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = expand(str(item.get("value", "")), env)
            elif "fieldRef" in source:
                env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = self._secret(ns, ref["name"])[ref["key"]].decode()
            else:
                raise ValueError(f"env {item['name']}: {sorted(source)} is not simulated")
        return env

    def _secret(self, ns: str, name: str) -> dict[str, bytes]:
        data = self.store.get("secrets", ns, name).get("data") or {}
        return {k: base64.b64decode(v) for k, v in data.items()}

    def _volumes(self, pod: Obj, container: Obj, directory: Path) -> dict[str, Path]:
        """Each mounted volume made as a directory of this pod: mount path -> directory."""
        ns = pod["metadata"].get("namespace", "")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            host = directory / "volumes" / mount["name"]
            if "emptyDir" in volume:
                host.mkdir(parents=True, exist_ok=True)
            elif "secret" in volume or "configMap" in volume:
                if "secret" in volume:
                    files = self._secret(ns, volume["secret"]["secretName"])
                    items = volume["secret"].get("items")
                else:
                    cm = self.store.get("configmaps", ns, volume["configMap"]["name"])
                    files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                    items = volume["configMap"].get("items")
                host.mkdir(parents=True, exist_ok=True)
                for key, path in ([(i["key"], i["path"]) for i in items] if items else [(k, k) for k in files]):
                    target = host / path
                    target.write_bytes(files[key])
                    target.chmod(0o400)
            else:
                raise ValueError(f"volume {mount['name']}: {sorted(set(volume) - {'name'})} is not simulated")
            out[mount["mountPath"].rstrip("/")] = host / mount.get("subPath", "")
        return out

    def _localise(self, text: str, mounts: dict[str, Path]) -> str:
        """A path under a mount path, moved to the volume's directory; the Service's name
        replaced by the daemon's address when there is no network namespace for /etc/hosts."""
        for mount_path, host in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if text == mount_path or text.startswith(mount_path + "/"):
                return str(host) + text[len(mount_path):]
        if self.network is None:
            for service in self.services:
                text = text.replace(f"//{service}:", f"//{self.daemon_host}:")
        return text

    def _gpus(self, container: Obj) -> int:
        res = container.get("resources") or {}
        return int((res.get("limits") or res.get("requests") or {}).get(self.gpu_resource, 0))

    # -- stopping ------------------------------------------------------------------------

    async def _prestop(self, agent: Agent, pod: Obj, deadline: float) -> None:
        (container,) = pod["spec"]["containers"]
        handler = (container.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in handler:
            seconds = float(handler["sleep"]["seconds"])
            if self.prestop_cap_s is not None:
                seconds = min(seconds, self.prestop_cap_s)
            # the handler's own duration (the pod asked for it), cut short if the agent dies meanwhile
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(agent.proc.wait, min(seconds, max(0.0, deadline - time.monotonic())))
        elif "exec" in handler:
            prefix = agent.net.exec_prefix() if agent.net is not None else []
            argv = [*prefix, *handler["exec"]["command"]]
            await asyncio.to_thread(subprocess.run, argv, env=agent.env, cwd=agent.directory, capture_output=True,
                                    timeout=max(0.1, deadline - time.monotonic()))
        elif handler:
            raise ValueError(f"preStop {sorted(handler)} is not simulated")

    def _end_pod(self, agent: Agent) -> None:
        """What the runtime does when the container's main process is gone: nothing of the pod survives."""
        if agent.net is not None and self.network is not None:
            self.network.remove(agent.uid)  # kills every process in the namespace first
            return
        from nodeagent.jobs import stop_supervisors

        stop_supervisors(agent.directory, signal.SIGKILL)
        out = subprocess.run(["pgrep", "-f", str(agent.directory)], capture_output=True, text=True).stdout.split()
        for pid in out:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    def close(self) -> None:
        """Kill every agent still running and remove their pods' traces (test teardown)."""
        for agent in self.agents.values():
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
                agent.ended = agent.ended or "SIGKILL"
            self._end_pod(agent)

    # -- reading -------------------------------------------------------------------------

    def running(self) -> dict[str, Agent]:
        """Live agents by pod name."""
        return {a.name: a for a in self.agents.values() if a.proc.poll() is None}

    def of(self, name: str) -> list[Agent]:
        """Every incarnation of the pod ``name``, oldest first."""
        return sorted((a for a in self.agents.values() if a.name == name), key=lambda a: a.started)

    def logs(self, pick: Callable[[Agent], bool] = lambda a: True) -> str:
        return "\n".join(f"--- {a.name} ({a.uid[:8]}) ---\n{a.log_tail()}" for a in self.agents.values() if pick(a))

