"""Network namespaces on a test bridge: each pod or node of a test behind its own veth.

As a CNI plugin would, each member gets its own namespace with ``eth0`` (a
veth whose other end is on a bridge) and an address from a private /24; the
bridge holds the first address, where the test's schedd listens (the
"Service"). There is no default route and no NAT: a member reaches the
bridge's subnet and nothing else. Names carry this process's id
(``sdk<pid>``), so parallel test runs do not collide and leftovers of a killed
run are recognised and removed by the next one (:func:`sweep`).

``ip netns exec`` also bind-mounts ``/etc/netns/<name>/hosts`` over
``/etc/hosts`` for the command, which is how a pod resolves the Service's DNS
name (``schedd.<namespace>.svc``) here.

A member can be cut off (:meth:`PodNet.cut`) and joined again
(:meth:`PodNet.heal`): a ``blackhole`` queueing discipline on both ends of its
veth makes every packet vanish, either way, as a dead switch or a partitioned
network would — no reset, no error, the links stay up — so both sides only
learn of it from silence (tests/integration/test_partition.py).

Used by tests/kube (pods) and tests/integration (partitioned agents). Needs
root (CAP_NET_ADMIN) and iproute2; :func:`available` says whether both work.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PodNet", "PodNetwork", "available", "can_cut", "sweep"]

PREFIX = "sdk"
NETNS_ETC = Path("/etc/netns")
#: Candidate subnets, tried in order until one overlaps nothing on this machine.
CANDIDATES = [ipaddress.IPv4Network(f"10.{second}.{third}.0/24") for second in (213, 214, 215) for third in range(0, 250, 7)]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["tc", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def can_cut() -> str:
    """Empty when :meth:`PodNet.cut` works here (tc and the blackhole qdisc), else why not."""
    if why := available():
        return why
    if shutil.which("tc") is None:
        return "no tc (iproute2)"
    probe = f"{PREFIX}{os.getpid()}q"
    _ip("link", "add", probe, "type", "veth", "peer", "name", f"{probe}p", check=False)
    try:
        done = _tc("qdisc", "add", "dev", probe, "root", "blackhole", check=False)
        return "" if done.returncode == 0 else f"tc qdisc blackhole failed: {done.stderr.strip()}"
    finally:
        _ip("link", "del", probe, check=False)


def available() -> str:
    """Empty when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no iproute2 (ip)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> int | None:
    """The test process id in a name made here (``sdk<pid>`` or ``sdk<pid>-...``)."""
    digits = name[len(PREFIX):].split("-")[0] if name.startswith(PREFIX) else ""
    return int(digits) if digits.isdigit() else None


def sweep() -> None:
    """Remove namespaces, bridges and /etc/netns entries left by test runs that are gone."""
    names = _ip("netns", "list", check=False).stdout.split()
    for name in names:
        if (pid := _owner(name)) is not None and not _alive(pid):
            _kill_all(name)
            _ip("netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0]
        if (pid := _owner(link)) is not None and not _alive(pid):
            _ip("link", "del", link, check=False)


def _kill_all(netns: str) -> list[int]:
    """SIGKILL every process in the namespace, as a container runtime does when a pod ends."""
    pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        used.append(ipaddress.IPv4Interface(line.split()[3]).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest and dest[0].isdigit():
            used.append(ipaddress.IPv4Network(dest, strict=False))
    for net in CANDIDATES:
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /24 among {CANDIDATES[0]}..{CANDIDATES[-1]} on this machine")


@dataclass
class PodNet:
    """One pod's namespace: its name (for ``ip netns exec``) and address."""

    netns: str
    address: str
    host_veth: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.netns, check=False).stdout.split()]

    def kill_all(self) -> list[int]:
        return _kill_all(self.netns)

    def cut(self) -> None:
        """Make every packet to and from this member vanish (both ends of its veth)."""
        _tc("qdisc", "replace", "dev", self.host_veth, "root", "blackhole")
        _tc("-n", self.netns, "qdisc", "replace", "dev", "eth0", "root", "blackhole")

    def heal(self) -> None:
        """Undo :meth:`cut`: the default queueing discipline again, packets flow."""
        _tc("-n", self.netns, "qdisc", "del", "dev", "eth0", "root", check=False)
        _tc("qdisc", "del", "dev", self.host_veth, "root", check=False)


@dataclass
class PodNetwork:
    """The bridge and the pods' namespaces of one test; :meth:`close` removes all of it."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    pods: dict[str, PodNet] = field(default_factory=dict)
    _next: int = 2
    _veths: int = 0

    @property
    def bridge(self) -> str:
        return self.tag  # <= 15 characters: "sdk" + a pid of at most 7 digits

    @property
    def gateway(self) -> str:
        """The bridge's address: where the test's daemon listens."""
        return str(self.subnet.network_address + 1)

    def up(self) -> PodNetwork:
        sweep()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add(self, key: str, hosts: dict[str, str]) -> PodNet:
        """A namespace for the pod incarnation ``key`` with eth0 up; ``hosts`` are its /etc/hosts names."""
        if self._next >= self.subnet.num_addresses - 1:
            raise RuntimeError(f"{self.subnet} is out of addresses")
        address = str(self.subnet.network_address + self._next)
        self._next += 1
        self._veths += 1
        netns = f"{self.tag}-{self._veths}"
        host_veth, pod_veth = f"{self.tag}v{self._veths}", f"{self.tag}p{self._veths}"
        if len(host_veth) > 15:
            raise RuntimeError(f"interface name {host_veth!r} is too long")
        _ip("netns", "add", netns)
        net = PodNet(netns, address, host_veth)
        self.pods[key] = net
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", pod_veth)
        _ip("link", "set", pod_veth, "netns", netns)
        _ip("-n", netns, "link", "set", pod_veth, "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("link", "set", host_veth, "master", self.bridge)
        _ip("link", "set", host_veth, "up")
        etc = NETNS_ETC / netns
        etc.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{ip} {name}" for name, ip in sorted(hosts.items())]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        return net

    def remove(self, key: str) -> None:
        """Tear the pod's namespace down (its processes killed first); the veth pair goes with it."""
        net = self.pods.pop(key, None)
        if net is None:
            return
        net.kill_all()
        _ip("netns", "del", net.netns, check=False)
        _ip("link", "del", net.host_veth, check=False)  # already gone with its peer, normally
        shutil.rmtree(NETNS_ETC / net.netns, ignore_errors=True)

    def close(self) -> None:
        for key in list(self.pods):
            self.remove(key)
        _ip("link", "del", self.bridge, check=False)
