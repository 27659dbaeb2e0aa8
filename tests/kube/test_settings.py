"""``driver = "kubernetes"`` in pool.toml: the example loads, every key is
documented, and each wrong key or value is an error naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schedd.errors import ConfigError
from schedd.pool.kube.config import KUBE_ONLY, KubeSettings
from schedd.config import CONF_DIR, load_pool

HEAD = 'driver = "kubernetes"\n[kubernetes]\nimage = "reg.local/schedd:1"\n'


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "pool.toml"
    path.write_text(text)
    return load_pool(path)


def test_the_example_pool_loads_with_its_groups() -> None:
    pool = load_pool(CONF_DIR / "pool.kubernetes.toml")
    assert pool.driver == "kubernetes" and pool.kube().namespace == "ml-pool" and pool.kube().manage
    gpu8, gpu1 = pool.groups
    assert (gpu8.name, gpu8.count, gpu8.gpus, gpu8.gpu_resource) == ("gpu8", 4, 8, "nvidia.com/gpu")
    assert gpu8.tolerations[0].operator == "Exists" and gpu8.volumes[0].nfs is not None
    assert gpu8.volume_mounts[0].mount_path == "/home" and gpu8.termination_grace_period_s == 120
    assert (gpu1.count, gpu1.gpus) == (8, 1)


def test_the_shipped_pool_stays_local_with_no_kubernetes_table() -> None:
    pool = load_pool()
    assert pool.driver == "local" and pool.kubernetes is None and pool.kube() == KubeSettings()


def test_every_kubernetes_key_is_documented_in_the_shipped_pool_toml() -> None:
    text = (CONF_DIR / "pool.toml").read_text()
    documented = set(re.findall(r"^#? ?([a-z_]+) = ", text, re.MULTILINE))
    keys = set(KUBE_ONLY) | set(KubeSettings.__struct_fields__)
    assert keys - documented == set()


def test_defaults_server_url_from_the_service_dns_name(tmp_path: Path) -> None:
    pool = _load(tmp_path, HEAD + 'namespace = "ml"\n[[groups]]\nname = "gpu8"\n')
    assert pool.kube().agent_server_url(8330) == "http://schedd.ml.svc:8330"
    assert KubeSettings(server_url="https://x:1").agent_server_url(8330) == "https://x:1"


@pytest.mark.parametrize(("body", "where", "message"), [
    ('[[groups]]\nname = "GPU8"\n', "groups[0].name", "must be a DNS label of at most 52"),
    ('[[groups]]\nname = "' + "g" * 53 + '"\n', "groups[0].name", "DNS label"),
    ('[[groups]]\nname = "a"\n[[groups]]\nname = "a"\n', "groups[1].name", "names two groups"),
    ('[[groups]]\nname = "schedd"\n', "groups[0].name", "daemon's own StatefulSet"),
    ('[[groups]]\ncount = -1\n', "groups[0].count", "Expected `int` >= 0"),
    ('[[groups]]\ngpus = "8"\n', "groups[0].gpus", "Expected `int`, got `str`"),
    ('[[groups]]\ngpu_resource = "gpu"\n', "groups[0].gpu_resource", "not an extended resource name"),
    ('[[groups]]\nimage = "Not An Image"\n', "groups[0].image", "not a docker image reference"),
    ('[[groups]]\nimage_pull_policy = "Sometimes"\n', "groups[0].image_pull_policy", "Invalid enum value 'Sometimes'"),
    ('[[groups]]\ntolerations = [{ key = "a", operator = "Maybe" }]\n', "groups[0].tolerations[0].operator", "Invalid enum"),
    ('[[groups]]\ntolerations = [{ key = "a", colour = "b" }]\n', "groups[0].tolerations[0]", "unknown field `colour`"),
    ('[[groups]]\ntolerations = [{ key = "a", operator = "Exists", value = "b" }]\n', "groups[0].tolerations[0].value",
     'must be empty with operator = "Exists"'),
    ('[[groups]]\ntolerations = [{ operator = "Equal" }]\n', "groups[0].tolerations[0].operator", "empty key"),
    ('[[groups]]\ntolerations = [{ key = "a", toleration_seconds = 5 }]\n', "groups[0].tolerations[0].toleration_seconds",
     "NoExecute"),
    ('[[groups]]\nvolumes = [{ name = "h" }]\n', "groups[0].volumes[0]", "needs exactly one of nfs, host_path"),
    ('[[groups]]\nvolumes = [{ name = "h", host_path = "/a", claim = "c" }]\n', "groups[0].volumes[0]", "has host_path, claim"),
    ('[[groups]]\nvolumes = [{ name = "h", host_path = "a" }]\n', "groups[0].volumes[0].host_path", "absolute"),
    ('[[groups]]\nvolumes = [{ name = "h", nfs = { server = "s" } }]\n', "groups[0].volumes[0].nfs",
     "missing required field `path`"),
    ('[[groups]]\nvolumes = [{ name = "h", claim = "c" }, { name = "h", claim = "d" }]\n', "groups[0].volumes[1].name", "twice"),
    ('[[groups]]\nvolume_mounts = [{ name = "nope", mount_path = "/x" }]\n', "groups[0].volume_mounts[0].name",
     "not one of this group's volumes"),
    ('[[groups]]\nvolumes = [{ name = "h", claim = "c" }]\nvolume_mounts = [{ name = "h", mount_path = "x" }]\n',
     "groups[0].volume_mounts[0].mount_path", "absolute"),
    ('[[groups]]\nenv = { SCHEDD_NODE_NAME = "x" }\n', "groups[0].env.SCHEDD_NODE_NAME", "downward API"),
    ('[[groups]]\nenv = { "1X" = "x" }\n', "groups[0].env.1X", "not a valid environment variable name"),
    ('[[groups]]\naffinity = { nodeAfinity = {} }\n', "groups[0].affinity.nodeAfinity", "not one of nodeAffinity"),
    ('[[groups]]\npriority_class_name = "High Prio"\n', "groups[0].priority_class_name", "not a valid Kubernetes object name"),
    ('[[groups]]\nnode_selector = { a = 1 }\n', "groups[0].node_selector", "Expected `str`, got `int`"),
])
def test_bad_group_keys_name_the_key(tmp_path: Path, body: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, HEAD + body)
    assert f"pool.toml: {where}" in str(e.value) and message in str(e.value), str(e.value)


@pytest.mark.parametrize(("table", "where", "message"), [
    ('namespace = "ML"\n', "kubernetes.namespace", "not a DNS label"),
    ('manage = "yes"\n', "kubernetes.manage", "Expected `bool`"),
    ('server_url = "schedd:8330"\n', "kubernetes.server_url", "http:// or https://"),
    ('token_secret = "Bad_Name"\n', "kubernetes.token_secret", "not a valid Secret name"),
    ('state_storage_gb = 0\n', "kubernetes.state_storage_gb", ">= 1"),
    ('watch_timeout_s = 5\n', "kubernetes.watch_timeout_s", ">= 10"),
    ('namespaces = "x"\n', "kubernetes", "unknown field `namespaces`"),
])
def test_bad_kubernetes_keys_name_the_key(tmp_path: Path, table: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, HEAD + table + '[[groups]]\nname = "g"\n')
    assert f"pool.toml: {where}" in str(e.value) and message in str(e.value), str(e.value)


def test_an_image_is_needed_somewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"groups\[0\]\.image: the agent image is needed"):
        _load(tmp_path, 'driver = "kubernetes"\n[[groups]]\nname = "g"\n')
    assert _load(tmp_path, 'driver = "kubernetes"\n[[groups]]\nname = "g"\nimage = "a/b:1"\n').groups[0].image == "a/b:1"


@pytest.mark.parametrize(("text", "where"), [
    ('[kubernetes]\nnamespace = "x"\n', "kubernetes"),
    ('[[groups]]\ngpus = 8\n', "groups[0].gpus"),
    ('[[groups]]\ntolerations = [{ key = "a" }]\n', "groups[0].tolerations"),
])
def test_kubernetes_keys_with_another_driver_are_an_error(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, 'driver = "local"\n' + text)
    assert f"pool.toml: {where}" in str(e.value) and 'only read with driver = "kubernetes"' in str(e.value)
