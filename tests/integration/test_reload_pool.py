"""A reload resizes the local pool (``schedd up``): pool.toml's group count
2 -> 3 starts a node; 3 -> 1 drains node03 and node02, and a node running a
job goes only after the job has finished — never killing it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import ROOT, Daemon, wait_for

POOL = '[[groups]]\nname = "node"\nswitch_user = false\ncount = {count}\n'


def reload(d: Daemon) -> str:
    out = subprocess.run([sys.executable, "-m", "schedd.main", "reload"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "SCHEDD_URL": d.url}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def nodes(d: Daemon) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in d.client.call("GET", "/api/v1/nodes")["nodes"]}


def test_reload_grows_and_shrinks_the_local_pool_without_killing_a_job(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=2)
    d.pool.write_text(POOL.format(count=2))
    d.start()
    try:
        d.pool.write_text(POOL.format(count=3))
        assert "pool group node: 2 -> 3 nodes" in reload(d)
        wait_for("node03 up", lambda: len(d.up_nodes()) == 3)
        # A job on node03, the first to go (node01 and node02 offline while it starts);
        # it finishes when told to (a file appears).
        for n in ("node01", "node02"):
            d.client.call("POST", f"/api/v1/nodes/{n}/offline", {})
        go = tmp_path / "go"
        jid = d.submit(argv=["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done"], name="keeper")
        d.wait_state(jid, "running")
        assert jid in nodes(d)["node03"]["jobs"]
        for n in ("node01", "node02"):
            d.client.call("POST", f"/api/v1/nodes/{n}/resume", {})
        d.pool.write_text(POOL.format(count=1))
        out = reload(d)
        assert "pool group node: 3 -> 1 nodes" in out and "node03" in out, out
        wait_for("node02 removed", lambda: nodes(d)["node02"]["state"] == "down")
        n3 = nodes(d)["node03"]
        assert n3["state"] == "draining" and jid in n3["jobs"], n3
        assert d.job(jid)["state"] == "running"
        go.touch()
        assert d.wait_state(jid, "finished")["exit_status"] == 0  # it ran to its end
        wait_for("node03 removed", lambda: nodes(d)["node03"]["state"] == "down")
        assert nodes(d)["node03"]["comment"] == "removed by scale-down"
        assert [n for n, v in nodes(d).items() if v["state"] == "up"] == ["node01"]
    finally:
        d.stop()
