"""``schedd pool render``: every Kubernetes object of a pool, as dicts, then YAML.

Pure: settings in, dicts out; no client, no clock, no cluster. The same
:func:`agent_statefulset` is what :mod:`.apply` sends with server-side apply,
so GitOps (``manage = false``) and schedd itself (``manage = true``) create
identical objects.

Choices that matter in production (see the reference notes of issue #9):

- one StatefulSet per group, ``podManagementPolicy: Parallel`` (with the default
  OrderedReady one Pending pod blocks every later ordinal) and ``updateStrategy:
  OnDelete`` (a template change never kills a running job; schedd replaces idle
  pods itself);
- pod name = node name, pod UID = the node's incarnation, both given to the
  agent through the downward API;
- GPU request = limit (Kubernetes does not overcommit extended resources);
- a PodDisruptionBudget that matches only pods labelled ``schedd.io/busy=true``,
  so ``kubectl drain`` waits for running jobs while idle pods may move;
- a preStop sleep that keeps the agent connected while schedd, which saw the
  deletion on its watch, warns and requeues the pod's jobs; the grace period
  covers that sleep and the kill delay;
- the Role grants only what the driver calls, only in its namespace; agents
  mount no service-account token.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from schedd.errors import ConfigError
from schedd.pool.kube.config import KubeSettings
from schedd.config import NodeGroup, PoolSettings, Settings, load_pool, load_settings

__all__ = [
    "BUSY_LABEL", "GROUP_LABEL", "MANAGED_BY", "agent_statefulset", "group_selector", "render", "render_files",
    "role_rules", "to_yaml",
]

Obj = dict[str, Any]

MANAGED_BY = ("app.kubernetes.io/managed-by", "schedd")
GROUP_LABEL = "schedd.io/group"
BUSY_LABEL = "schedd.io/busy"  # "true" while the node runs jobs; the PDB protects those pods
AGENT_NAME = "nodeagent"
AGENT_SA = "schedd-agent"
TOKEN_DIR = "/var/run/schedd"
AGENT_STATE = "/var/lib/nodeagent"
STATE_DIR = "/var/lib/schedd"
CONFIG_DIR = "/etc/schedd"


def _labels(name: str, group: str = "") -> dict[str, str]:
    labels = {MANAGED_BY[0]: MANAGED_BY[1], "app.kubernetes.io/part-of": "schedd", "app.kubernetes.io/name": name}
    return labels | ({GROUP_LABEL: group} if group else {})


def _meta(name: str, kube: KubeSettings, labels: dict[str, str]) -> Obj:
    return {"name": name, "namespace": kube.namespace, "labels": labels}


def group_selector(groups: list[str]) -> str:
    """The label selector of every agent pod of these groups (what the watcher lists).

    >>> group_selector(["gpu8", "gpu1"])
    'app.kubernetes.io/managed-by=schedd,schedd.io/group in (gpu1,gpu8)'
    """
    return f"{MANAGED_BY[0]}={MANAGED_BY[1]},{GROUP_LABEL} in ({','.join(sorted(groups))})"


def role_rules(manage: bool) -> list[Obj]:
    """Least privilege: the verbs the driver calls, nothing cluster-wide.

    Pods: list/watch (the watcher), get, patch (the busy label the PDB
    matches) and delete (replacing an idle pod after a template change, reaping
    Failed pods). StatefulSets: read always; with ``manage``, server-side apply,
    which is a PATCH that also needs ``create`` the first time, and the scale
    subresource for resizing.
    """
    sts = ["get", "list", "watch"] + (["create", "patch"] if manage else [])
    rules: list[Obj] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch", "delete"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": sts},
    ]
    if manage:
        rules.append({"apiGroups": ["apps"], "resources": ["statefulsets/scale"], "verbs": ["get", "patch"]})
    return rules


def _port(settings: Settings) -> int:
    return int(settings.listen.rsplit(":", 1)[1])


def _prestop_s(settings: Settings) -> int:
    """How long preStop keeps the agent up: schedd's kill delay plus a margin to see the deletion."""
    return int(settings.kill_delay_s) + 5


def _token_volume(secret: str, switch_user: bool) -> Obj:
    """The agent token's Secret volume. An agent that switches to each job's owner
    runs as root, and its jobs run as users in the same pod: the file is then
    root's alone (0400), or any job could read the token and speak for the node.
    An agent that runs every job as itself may be any user: Kubernetes' 0644."""
    volume: Obj = {"secretName": secret, "items": [{"key": "token", "path": "token"}]}
    if switch_user:
        volume["defaultMode"] = 0o400
    return volume


def _volume(v: Any) -> Obj:
    if v.nfs is not None:
        return {"name": v.name, "nfs": {"server": v.nfs.server, "path": v.nfs.path, "readOnly": v.read_only}}
    if v.host_path:
        return {"name": v.name, "hostPath": {"path": v.host_path, "type": "Directory"}}
    if v.claim:
        return {"name": v.name, "persistentVolumeClaim": {"claimName": v.claim, "readOnly": v.read_only}}
    if v.config_map:
        return {"name": v.name, "configMap": {"name": v.config_map}}
    return {"name": v.name, "secret": {"secretName": v.secret}}


def _resources(g: NodeGroup) -> Obj:
    amounts: dict[str, str] = {}
    if g.cpus:
        amounts["cpu"] = str(g.cpus)
    if g.mem_mb:
        amounts["memory"] = f"{g.mem_mb}Mi"
    if g.gpus:
        amounts[g.gpu_resource] = str(g.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _agent_args(g: NodeGroup, url: str) -> list[str]:
    args = ["--server", url, "--name", "$(SCHEDD_NODE_NAME)", "--token-file", f"{TOKEN_DIR}/token",
            "--state-dir", AGENT_STATE]
    args += ["--cpus", str(g.cpus)] if g.cpus else []
    args += ["--mem-mb", str(g.mem_mb)] if g.mem_mb else []
    args += [] if g.switch_user else ["--no-switch-user"]
    return args + g.agent_args()


def _agent_env(g: NodeGroup, url: str) -> list[Obj]:
    def field(name: str, path: str) -> Obj:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [field("SCHEDD_NODE_NAME", "metadata.name"), field("SCHEDD_NODE_UID", "metadata.uid"),
           field("SCHEDD_K8S_NODE", "spec.nodeName"), {"name": "SCHEDD_URL", "value": url}]
    return env + [{"name": k, "value": v} for k, v in sorted(g.env.items())]


def _agent_pod(g: NodeGroup, pool: PoolSettings, settings: Settings) -> Obj:
    kube = pool.kube()
    url = kube.agent_server_url(_port(settings))
    container: Obj = {
        "name": AGENT_NAME,
        "image": g.image or kube.image,
        "command": ["nodeagent"],
        "args": _agent_args(g, url),
        "env": _agent_env(g, url),
        "lifecycle": {"preStop": {"sleep": {"seconds": _prestop_s(settings)}}},
        "volumeMounts": [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": "agent-state", "mountPath": AGENT_STATE}]
        + [{"name": m.name, "mountPath": m.mount_path, "readOnly": m.read_only} | ({"subPath": m.sub_path} if m.sub_path else {})
           for m in g.volume_mounts],
    }
    if g.image_pull_policy:
        container["imagePullPolicy"] = g.image_pull_policy
    if resources := _resources(g):
        container["resources"] = resources
    spec: Obj = {
        "serviceAccountName": g.service_account or AGENT_SA,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": g.termination_grace_period_s,
        "containers": [container],
        "volumes": [{"name": "token", "secret": _token_volume(kube.token_secret, g.switch_user)},
                    {"name": "agent-state", "emptyDir": {}}] + [_volume(v) for v in g.volumes],
    }
    for key, value in (("nodeSelector", dict(g.node_selector)), ("affinity", dict(g.affinity)),
                       ("priorityClassName", g.priority_class_name), ("runtimeClassName", g.runtime_class_name)):
        if value:
            spec[key] = value
    if g.tolerations:
        spec["tolerations"] = [_toleration(t) for t in g.tolerations]
    return {"metadata": {"labels": _labels(AGENT_NAME, g.name)}, "spec": spec}


def _toleration(t: Any) -> Obj:
    out: Obj = {"operator": t.operator}
    for key, value in (("key", t.key), ("value", t.value), ("effect", t.effect), ("tolerationSeconds", t.toleration_seconds)):
        if value:
            out[key] = value
    return out


def agent_statefulset(g: NodeGroup, pool: PoolSettings, settings: Settings) -> Obj:
    """The StatefulSet of one node group: ``count`` agent pods ``<group>-<ordinal>``."""
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(g.name, pool.kube(), _labels(AGENT_NAME, g.name)),
        "spec": {
            "replicas": g.count,
            "serviceName": g.name,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME, GROUP_LABEL: g.name}},
            "template": _agent_pod(g, pool, settings),
        },
    }


def _group_objects(g: NodeGroup, pool: PoolSettings, settings: Settings) -> list[Obj]:
    kube = pool.kube()
    labels = _labels(AGENT_NAME, g.name)
    selector = {"app.kubernetes.io/name": AGENT_NAME, GROUP_LABEL: g.name}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(g.name, kube, labels),
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector}}
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(f"{g.name}-busy", kube, labels),
           "spec": {"maxUnavailable": 0, "selector": {"matchLabels": selector | {BUSY_LABEL: "true"}}}}
    return [service, agent_statefulset(g, pool, settings), pdb]


def _daemon_objects(pool: PoolSettings, settings: Settings, files: dict[str, str]) -> list[Obj]:
    kube = pool.kube()
    port = _port(settings)
    labels = _labels("schedd")
    selector = {"app.kubernetes.io/name": "schedd"}
    digest = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:16]
    probe = {"httpGet": {"path": "/healthz", "port": "http"}}
    claim: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{kube.state_storage_gb}Gi"}}}
    if kube.storage_class:
        claim["storageClassName"] = kube.storage_class
    container = {
        "name": "schedd",
        "image": kube.image or pool.groups[0].image,
        "command": ["schedd", "serve", "--config", f"{CONFIG_DIR}/schedd.toml", "--listen", f"0.0.0.0:{port}",
                    "--state-dir", STATE_DIR],
        "env": [{"name": "SCHEDD_POOL", "value": f"{CONFIG_DIR}/pool.toml"}],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": probe | {"periodSeconds": 5},
        "livenessProbe": probe | {"initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "state", "mountPath": STATE_DIR}],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("schedd-config", kube, labels), "data": files},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("schedd", kube, labels),
         "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": "http"}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta("schedd", kube, labels), "spec": {
            "replicas": 1, "serviceName": "schedd", "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": {"schedd.io/config-sha256": digest}},
                "spec": {"serviceAccountName": "schedd", "terminationGracePeriodSeconds": 30,
                         "containers": [container],
                         "volumes": [{"name": "config", "configMap": {"name": "schedd-config"}}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "state"}, "spec": claim}],
        }},
    ]


def _check_grace(pool: PoolSettings, settings: Settings, source: str) -> None:
    need = _prestop_s(settings) + int(settings.kill_delay_s) + 5
    for i, g in enumerate(pool.groups):
        if g.termination_grace_period_s < need:
            raise ConfigError(f"{source}: groups[{i}].termination_grace_period_s",
                              f"{g.termination_grace_period_s} s is too short to warn and requeue jobs: at least {need} "
                              f"(twice schedd.toml's kill_delay_s = {settings.kill_delay_s:g}, plus 10)")


def render(pool: PoolSettings, settings: Settings, files: dict[str, str], source: str = "pool.toml") -> list[Obj]:
    """Every object of the pool, in the order ``kubectl apply`` wants them.

    ``files`` are the configuration files schedd reads in its pod (the
    ConfigMap ``schedd-config``); the agent-token Secret is referenced by
    name, never rendered (its value is created once, in the cluster).
    """
    if pool.driver != "kubernetes":
        raise ConfigError(f"{source}: driver", f'rendering manifests needs driver = "kubernetes" (is {pool.driver!r})')
    _check_grace(pool, settings, source)
    kube = pool.kube()
    ns_labels = {MANAGED_BY[0]: MANAGED_BY[1]}
    objects: list[Obj] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kube.namespace, "labels": ns_labels}}]
    objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("schedd", kube, _labels("schedd"))})
    if any(not g.service_account for g in pool.groups):
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(AGENT_SA, kube, _labels(AGENT_NAME)),
                        "automountServiceAccountToken": False})
    objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": _meta("schedd", kube, _labels("schedd")), "rules": role_rules(kube.manage)})
    objects.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": _meta("schedd", kube, _labels("schedd")),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "schedd"},
                    "subjects": [{"kind": "ServiceAccount", "name": "schedd", "namespace": kube.namespace}]})
    objects += _daemon_objects(pool, settings, files)
    for g in pool.groups:
        objects += _group_objects(g, pool, settings)
    return objects


def to_yaml(objects: list[Obj], header: str = "") -> str:
    """Multi-document YAML, keys in the order written (readable diffs in GitOps)."""
    import yaml

    return header + yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, explicit_start=True)


def _header(kube: KubeSettings) -> str:
    return (
        "# Rendered by `schedd pool render`. Apply with `kubectl apply -f`.\n"
        f"# Agents authenticate with the agent token in Secret {kube.token_secret!r} (key \"token\"), made once:\n"
        f"#   kubectl -n {kube.namespace} exec schedd-0 -- schedd token create agents --role agent "
        f"--state-dir {STATE_DIR} > token\n"
        f"#   kubectl -n {kube.namespace} create secret generic {kube.token_secret} --from-file=token=token\n"
    )


def render_files(pool_path: Path | None, config_path: Path | None) -> str:
    """``schedd pool render``: read both files, render, return the YAML."""
    from schedd.config import CONF_DIR

    pool_path = pool_path or CONF_DIR / "pool.toml"
    config_path = config_path or CONF_DIR / "schedd.toml"
    pool = load_pool(pool_path)
    settings = load_settings(config_path)
    files = {"pool.toml": pool_path.read_text(), "schedd.toml": config_path.read_text()}
    policies = settings.policies_path()
    if policies.is_file():
        files[policies.name] = policies.read_text()
    return to_yaml(render(pool, settings, files, str(pool_path)), _header(pool.kube()))
