"""A reload with a lower group count in pool.toml resizes a managed Kubernetes
pool as the scale command does (drain the highest ordinal first, shrink only
once it is empty), with the stand-in API server and kubelet of test_pool_e2e;
a change beyond counts still says it needs a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.conftest import wait_for
from tests.kube.test_agents_e2e import network  # noqa: F401 (fixture)
from tests.kube.test_pool_e2e import Pool, make_pool  # noqa: F401 (fixture)


def reload(pool: Pool) -> list[str]:
    return list(pool.daemon.client.call("POST", "/api/v1/admin/reload", {})["changes"])


def test_a_reload_shrinks_the_statefulset_only_once_the_node_is_empty(tmp_path: Path, make_pool: Any) -> None:
    pool: Pool = make_pool(manage=True, capacity=[2, 2])
    pool.daemon.start()
    wait_for("3 pods -> 3 free nodes\n" + pool.kubelet.logs(), pool.free)
    jids = [pool.submit(f"while [ ! -e {tmp_path}/go-{i} ]; do sleep 0.05; done", tmp_path) for i in range(3)]
    running = wait_for("3 jobs running", lambda: all(pool.job(jid)["state"] == "running" for jid in jids)
                       and {pool.job(jid)["exec_nodes"][0]["node"]: i for i, jid in enumerate(jids)})
    conf = tmp_path / "pool.toml"
    text = conf.read_text()
    conf.write_text(text.replace("count = 3", "count = 2"))
    changes = reload(pool)
    assert any(c.startswith("pool group gpu: 3 -> 2 nodes (draining gpu-2") for c in changes), changes
    assert pool.nodes()["gpu-2"]["state"] == "draining"
    assert pool.statefulsets()[0]["spec"]["replicas"] == 3  # its job runs on
    (tmp_path / f"go-{running['gpu-2']}").touch()
    wait_for("replicas 2 once gpu-2 is empty", lambda: pool.statefulsets()[0]["spec"]["replicas"] == 2)
    wait_for("gpu-2 down, removed by scale-down",
             lambda: (n := pool.nodes()["gpu-2"])["state"] == "down" and n["comment"] == "removed by scale-down")
    for i in range(3):
        (tmp_path / f"go-{i}").touch()
    for jid in jids:  # nothing killed or requeued
        end = wait_for(f"job {jid} finished", lambda: (j := pool.job(jid))["state"] == "finished" and j)
        assert (end["exit_status"], end["attempt"]) == (0, 0), end
    # Beyond counts: kept, and said to need a restart.
    conf.write_text(text.replace("count = 3", "count = 2").replace("mem_mb = 2048", "mem_mb = 4096"))
    changes = reload(pool)
    assert any("beyond group counts; needs a restart" in c for c in changes), changes
    assert not any(c.startswith("pool group") for c in changes), changes
