"""The ``driver = "kubernetes"`` keys of ``conf/pool.toml``, and their checks.

TOML keys are snake_case like every other schedd file; :mod:`.manifests`
turns them into the camelCase of a pod spec. The pieces with small schemas
(tolerations, volumes, mounts) are typed here so that a wrong key is caught
when the file is read; ``affinity`` is the one pass-through (its schema is too
large to mirror), written as in a pod spec and checked for its top-level keys.
Everything Kubernetes would reject later (a name that is not a DNS label, a GPU
resource that is not ``vendor/name``) is rejected here, naming the key.

This module imports nothing but msgspec, so reading ``pool.toml`` stays cheap.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from schedd.errors import ConfigError, InputError

if TYPE_CHECKING:
    from schedd.config import NodeGroup, PoolSettings

__all__ = ["KubeSettings", "NfsVolume", "NonNegative", "PullPolicy", "Toleration", "Volume", "VolumeMount", "check_kube_pool", "is_dns_label"]

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_RESOURCE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A StatefulSet's pods carry ``controller-revision-hash: <name>-<10 chars>``,
#: a label value of at most 63 characters; hence 52 for a group's name.
MAX_GROUP_NAME = 52
#: Set by the manifests from the downward API; a group may not override them.
RESERVED_ENV = frozenset({"SCHEDD_NODE_NAME", "SCHEDD_NODE_UID", "SCHEDD_K8S_NODE", "SCHEDD_URL"})
#: Counts and sizes: msgspec rejects a negative one, naming the key.
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
PullPolicy = Literal["", "Always", "IfNotPresent", "Never"]
_AFFINITY_KEYS = frozenset({"nodeAffinity", "podAffinity", "podAntiAffinity"})


def is_dns_label(name: str, max_len: int = 63) -> bool:
    """An RFC 1123 label, as Kubernetes wants namespace, Service and StatefulSet names.

    >>> is_dns_label("gpu8"), is_dns_label("GPU8"), is_dns_label("gpu-"), is_dns_label("a" * 64)
    (True, False, False, False)
    """
    return len(name) <= max_len and _LABEL.fullmatch(name) is not None


def _is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and all(_LABEL.fullmatch(p) for p in name.split("."))


class Toleration(msgspec.Struct, forbid_unknown_fields=True):
    """A pod toleration (``tolerations = [{key = "nvidia.com/gpu", operator = "Exists"}]``)."""

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: int | None = None


class NfsVolume(msgspec.Struct, forbid_unknown_fields=True):
    server: str
    path: str


class Volume(msgspec.Struct, forbid_unknown_fields=True):
    """A volume of the agent pods: a name and exactly one source."""

    name: str
    nfs: NfsVolume | None = None
    host_path: str = ""  # a directory of the Kubernetes node (hostPath, type Directory)
    claim: str = ""  # an existing PersistentVolumeClaim (ReadWriteMany for a shared filesystem)
    config_map: str = ""
    secret: str = ""
    read_only: bool = False

    def sources(self) -> list[str]:
        return [k for k in ("nfs", "host_path", "claim", "config_map", "secret") if getattr(self, k)]


class VolumeMount(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""


class KubeSettings(msgspec.Struct, forbid_unknown_fields=True):
    """``[kubernetes]``: where the pool lives and how schedd reaches it; see conf/pool.toml."""

    namespace: str = "schedd"
    manage: bool = True
    image: str = ""
    server_url: str = ""
    token_secret: str = "schedd-agent-token"
    state_storage_gb: Annotated[int, msgspec.Meta(ge=1)] = 10
    storage_class: str = ""
    kubeconfig: str = ""
    watch_timeout_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 300
    resync_s: Annotated[float, msgspec.Meta(ge=10)] = 600.0

    def agent_server_url(self, port: int) -> str:
        """Where agents dial schedd: the Service's cluster DNS name unless set."""
        return self.server_url or f"http://schedd.{self.namespace}.svc:{port}"


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}", message)


def _check_image(source: str, key: str, ref: str) -> None:
    from schedd.daemon.records import check_image

    try:
        check_image(ref, key.rsplit(".", 1)[-1])
    except InputError as e:
        raise _fail(source, key, str(e)) from None


def _check_group(g: NodeGroup, at: str, source: str, kube: KubeSettings) -> None:
    if not is_dns_label(g.name, MAX_GROUP_NAME):
        raise _fail(source, f"{at}.name", f"{g.name!r} must be a DNS label of at most {MAX_GROUP_NAME} characters "
                    "(lower-case letters, digits, '-'): it names the StatefulSet and its pods")
    if not g.image and not kube.image:
        raise _fail(source, f"{at}.image", "the agent image is needed: set it here or in [kubernetes].image")
    if g.image:
        _check_image(source, f"{at}.image", g.image)
    if not _RESOURCE.fullmatch(g.gpu_resource):
        raise _fail(source, f"{at}.gpu_resource", f"{g.gpu_resource!r} is not an extended resource name like 'nvidia.com/gpu'")
    for key, value in (("priority_class_name", g.priority_class_name), ("runtime_class_name", g.runtime_class_name),
                       ("service_account", g.service_account)):
        if value and not _is_dns_subdomain(value):
            raise _fail(source, f"{at}.{key}", f"{value!r} is not a valid Kubernetes object name")
    for i, t in enumerate(g.tolerations):
        if t.operator == "Exists" and t.value:
            raise _fail(source, f"{at}.tolerations[{i}].value", 'must be empty with operator = "Exists"')
        if not t.key and t.operator != "Exists":
            raise _fail(source, f"{at}.tolerations[{i}].operator", 'an empty key tolerates every taint only with "Exists"')
        if t.toleration_seconds is not None and t.effect != "NoExecute":
            raise _fail(source, f"{at}.tolerations[{i}].toleration_seconds", 'only with effect = "NoExecute"')
    names: set[str] = set()
    for i, v in enumerate(g.volumes):
        if not is_dns_label(v.name):
            raise _fail(source, f"{at}.volumes[{i}].name", f"{v.name!r} is not a DNS label")
        if v.name in names:
            raise _fail(source, f"{at}.volumes[{i}].name", f"{v.name!r} appears twice")
        names.add(v.name)
        if len(v.sources()) != 1:
            raise _fail(source, f"{at}.volumes[{i}]", "needs exactly one of nfs, host_path, claim, config_map, secret "
                        f"(has {', '.join(v.sources()) or 'none'})")
        if v.host_path and not v.host_path.startswith("/"):
            raise _fail(source, f"{at}.volumes[{i}].host_path", "must be an absolute path")
    for i, m in enumerate(g.volume_mounts):
        if m.name not in names:
            raise _fail(source, f"{at}.volume_mounts[{i}].name", f"{m.name!r} is not one of this group's volumes")
        if not m.mount_path.startswith("/"):
            raise _fail(source, f"{at}.volume_mounts[{i}].mount_path", "must be an absolute path")
    for name in g.env:
        if not _ENV.fullmatch(name):
            raise _fail(source, f"{at}.env.{name}", "not a valid environment variable name")
        if name in RESERVED_ENV:
            raise _fail(source, f"{at}.env.{name}", "set by schedd from the pod itself (downward API)")
    if extra := set(g.affinity) - _AFFINITY_KEYS:
        raise _fail(source, f"{at}.affinity.{sorted(extra)[0]}", f"not one of {', '.join(sorted(_AFFINITY_KEYS))}")


#: NodeGroup keys that only the kubernetes driver reads: set elsewhere they are an error.
KUBE_ONLY = ("gpus", "gpu_resource", "image", "image_pull_policy", "node_selector", "tolerations", "affinity",
             "priority_class_name", "runtime_class_name", "volumes", "volume_mounts", "env", "service_account",
             "termination_grace_period_s")


def check_kube_pool(pool: PoolSettings, source: str) -> None:
    """Raise :class:`ConfigError` naming the first wrong key of a pool.toml (any driver)."""
    from schedd.config import NodeGroup

    if pool.driver != "kubernetes":
        if pool.kubernetes is not None:
            raise _fail(source, "kubernetes", f'only read with driver = "kubernetes" (driver is {pool.driver!r})')
        default = NodeGroup()
        for i, g in enumerate(pool.groups):
            for key in KUBE_ONLY:
                if getattr(g, key) != getattr(default, key):
                    raise _fail(source, f"groups[{i}].{key}", f'only read with driver = "kubernetes" (driver is {pool.driver!r})')
        return
    kube = pool.kube()
    if not is_dns_label(kube.namespace):
        raise _fail(source, "kubernetes.namespace", f"{kube.namespace!r} is not a DNS label")
    if not _is_dns_subdomain(kube.token_secret):
        raise _fail(source, "kubernetes.token_secret", f"{kube.token_secret!r} is not a valid Secret name")
    if kube.image:
        _check_image(source, "kubernetes.image", kube.image)
    if kube.server_url and not kube.server_url.startswith(("http://", "https://")):
        raise _fail(source, "kubernetes.server_url", "must start with http:// or https://")
    if kube.storage_class and not _is_dns_subdomain(kube.storage_class):
        raise _fail(source, "kubernetes.storage_class", f"{kube.storage_class!r} is not a valid StorageClass name")
    if not pool.groups:
        raise _fail(source, "groups", "a kubernetes pool needs at least one [[groups]] table")
    seen: set[str] = set()
    for i, g in enumerate(pool.groups):
        _check_group(g, f"groups[{i}]", source, kube)
        if g.name in seen:
            raise _fail(source, f"groups[{i}].name", f"{g.name!r} names two groups")
        if g.name == "schedd":
            raise _fail(source, f"groups[{i}].name", "'schedd' names the daemon's own StatefulSet")
        seen.add(g.name)

