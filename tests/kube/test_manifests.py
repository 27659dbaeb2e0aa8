"""``schedd pool render``: the manifests validate offline against the official
schemas of Kubernetes 1.37, 1.36 and 1.35 (strict: no unknown field), and carry
the choices a fixed pool of GPU nodes needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from schedd.errors import ConfigError
from schedd.pool.kube.manifests import BUSY_LABEL, GROUP_LABEL, render, render_files
from schedd.config import CONF_DIR, Settings, load_pool

EXAMPLE = CONF_DIR / "pool.kubernetes.toml"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(render_files(EXAMPLE, None)))


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("version", ["1.37.0", "1.36.0", "1.35.0"])
def test_every_manifest_validates_strictly(objects: list[dict[str, Any]], version: str) -> None:
    kinds = []
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
        kinds.append(obj["kind"])
    assert sorted(set(kinds)) == ["ConfigMap", "Namespace", "PodDisruptionBudget", "Role", "RoleBinding",
                                  "Service", "ServiceAccount", "StatefulSet"]


def test_the_validator_does_reject_an_unknown_field(objects: list[dict[str, Any]]) -> None:
    sts = _find(objects, "StatefulSet", "gpu8")
    bad = sts | {"spec": sts["spec"] | {"podManagmentPolicy": "Parallel"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)


def test_agent_statefulset_is_a_fixed_pool_that_never_kills_jobs_on_update(objects: list[dict[str, Any]]) -> None:
    sts = _find(objects, "StatefulSet", "gpu8")
    spec = sts["spec"]
    assert (spec["replicas"], spec["podManagementPolicy"], spec["updateStrategy"]) == (4, "Parallel", {"type": "OnDelete"})
    assert sts["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "schedd"
    assert sts["metadata"]["labels"][GROUP_LABEL] == "gpu8" and sts["metadata"]["namespace"] == "ml-pool"
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["automountServiceAccountToken"] is False and pod["terminationGracePeriodSeconds"] == 120
    (c,) = pod["containers"]
    res = c["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "96", "memory": "900000Mi", "nvidia.com/gpu": "8"}
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", e.get("value")) for e in c["env"]}
    assert env["SCHEDD_NODE_NAME"] == "metadata.name" and env["SCHEDD_NODE_UID"] == "metadata.uid"
    assert env["SCHEDD_K8S_NODE"] == "spec.nodeName" and env["HF_HOME"] == "/home/shared/hf-cache"
    assert env["SCHEDD_URL"] == "http://schedd.ml-pool.svc:8330"
    assert c["args"][c["args"].index("--name") + 1] == "$(SCHEDD_NODE_NAME)"
    token = c["args"][c["args"].index("--token-file") + 1]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert token.startswith(mounts["token"] + "/") and mounts["home"] == "/home"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["token"]["secret"]["secretName"] == "schedd-agent-token"
    assert vols["home"]["nfs"] == {"server": "nfs.example.com", "path": "/export/home", "readOnly": False}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 15  # kill_delay_s 10 + 5
    assert pod["tolerations"] == [{"operator": "Exists", "key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "schedd-pool"


def test_each_group_has_a_headless_service_and_a_pdb_on_busy_pods(objects: list[dict[str, Any]]) -> None:
    for group in ("gpu8", "gpu1"):
        svc = _find(objects, "Service", group)
        assert svc["spec"]["clusterIP"] == "None"
        assert _find(objects, "StatefulSet", group)["spec"]["serviceName"] == group
        pdb = _find(objects, "PodDisruptionBudget", f"{group}-busy")["spec"]
        assert pdb["maxUnavailable"] == 0
        assert pdb["selector"]["matchLabels"] == {"app.kubernetes.io/name": "nodeagent", GROUP_LABEL: group, BUSY_LABEL: "true"}


def test_schedd_runs_as_one_replica_with_state_volume_service_and_probes(objects: list[dict[str, Any]]) -> None:
    sts = _find(objects, "StatefulSet", "schedd")["spec"]
    assert sts["replicas"] == 1
    claim = sts["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    (c,) = sts["template"]["spec"]["containers"]
    assert {m["name"] for m in c["volumeMounts"]} == {"config", claim["metadata"]["name"]}
    assert c["readinessProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "0.0.0.0:8330" in c["command"]
    svc = _find(objects, "Service", "schedd")["spec"]
    assert svc["ports"][0]["port"] == 8330 and svc["selector"].items() <= sts["template"]["metadata"]["labels"].items()
    data = _find(objects, "ConfigMap", "schedd-config")["data"]
    assert set(data) == {"pool.toml", "schedd.toml", "policies.toml"} and 'driver = "kubernetes"' in data["pool.toml"]


def test_the_role_is_namespaced_least_privilege_and_bound_to_schedd(objects: list[dict[str, Any]]) -> None:
    role = _find(objects, "Role", "schedd")
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert all(v not in ("*", "deletecollection", "escalate", "bind") and r != "*" for _, r, v in grants)
    assert ("apps", "statefulsets", "patch") in grants and ("", "pods", "watch") in grants
    assert not any(r in ("secrets", "nodes") for _, r, _ in grants)
    binding = _find(objects, "RoleBinding", "schedd")
    assert binding["roleRef"]["name"] == "schedd" and binding["subjects"][0]["namespace"] == "ml-pool"


def test_watch_only_pools_get_no_write_access_to_statefulsets(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(EXAMPLE.read_text().replace("manage = true", "manage = false"))
    (role,) = [o for o in yaml.safe_load_all(render_files(path, None)) if o["kind"] == "Role"]
    sts_verbs = {v for rule in role["rules"] if "statefulsets" in rule["resources"] for v in rule["verbs"]}
    assert sts_verbs == {"get", "list", "watch"}


def test_a_grace_period_shorter_than_the_kill_delays_is_an_error() -> None:
    pool = load_pool(EXAMPLE)
    with pytest.raises(ConfigError, match=r"groups\[0\]\.termination_grace_period_s: 120 s is too short.*at least 130"):
        render(pool, Settings(kill_delay_s=60), {})


def test_the_cli_prints_yaml_and_refuses_a_local_pool() -> None:
    run = [sys.executable, "-m", "schedd.main", "pool", "render"]
    ok = subprocess.run(run + ["--pool", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert len(list(yaml.safe_load_all(ok.stdout))) == 14
    bad = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and 'needs driver = "kubernetes"' in bad.stderr


def _token_volume(objects: list[dict[str, Any]], group: str) -> dict[str, Any]:
    pod = _find(objects, "StatefulSet", group)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "token"]
    return dict(volume["secret"])


def test_the_agent_token_is_root_only_where_jobs_run_as_users_beside_it(tmp_path: Path,
                                                                        objects: list[dict[str, Any]]) -> None:
    """An agent that switches users runs as root, its jobs as users in the same pod:
    a 0644 token would let any job speak for the node (issue #11)."""
    assert _token_volume(objects, "gpu8")["defaultMode"] == 0o400
    path = tmp_path / "pool.toml"
    path.write_text(EXAMPLE.read_text().replace('name = "gpu8"', 'name = "gpu8"\nswitch_user = false', 1))
    mine = list(yaml.safe_load_all(render_files(path, None)))
    assert "defaultMode" not in _token_volume(mine, "gpu8")  # an agent that may be any user must read it
