"""A policy plugin in a real daemon: enabled from policies.toml, it changes which job starts."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Daemon, wait_for

SJF = ROOT / "examples" / "schedd-sjf" / "policies.toml"


def _started_first(tmp: Path, policies: Path) -> str:
    tmp.mkdir()
    d = Daemon(tmp, nodes=1, gpus=1)
    d.config.write_text(d.config.read_text().replace(f"{ROOT}/conf/policies.toml", str(policies)))
    d.start()
    try:
        blocker = d.submit(argv=["sleep", "300"], queue="1xgpu", name="blocker")
        d.wait_state(blocker, "running")
        long = d.submit(argv=["sleep", "300"], queue="1xgpu", name="long", walltime_s=3600.0)
        short = d.submit(argv=["sleep", "300"], queue="1xgpu", name="short", walltime_s=60.0)
        d.client.call("DELETE", f"/api/v1/jobs/{blocker}")
        d.wait_state(blocker, "finished")
        first = wait_for("a job running", lambda: next((j for j in (long, short) if d.job(j)["state"] == "running"), None))
        return "long" if first == long else "short"
    finally:
        d.stop()


def test_the_daemon_runs_the_shortest_job_first_with_the_plugin(tmp_path: Path) -> None:
    assert _started_first(tmp_path / "fifo", ROOT / "conf" / "policies.toml") == "long"
    assert _started_first(tmp_path / "sjf", SJF) == "short"


def test_serve_refuses_to_start_naming_the_broken_plugin_and_key(tmp_path: Path) -> None:
    (tmp_path / "policies.toml").write_text('[deadline]\npolicy = "no_such_plugin_pkg:Deadline"\n[placement]\n')
    (tmp_path / "schedd.toml").write_text(f'state_dir = "{tmp_path / "state"}"\nlisten = "127.0.0.1:0"\n'
                                          f'policies = "{tmp_path / "policies.toml"}"\n')
    out = subprocess.run([sys.executable, "-m", "schedd.main", "serve", "--config", str(tmp_path / "schedd.toml")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "deadline.policy: cannot import 'no_such_plugin_pkg'" in out.stderr


def test_a_hook_that_raises_is_counted_on_metrics_and_the_daemon_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site_boom.py").write_text(
        "from policies.base import Policy\n"
        "class Boom(Policy):\n    name = 'boom'\n"
        "    def order_key(self, job, ctx):\n        raise RuntimeError('boom')\n")
    (tmp_path / "policies.toml").write_text('[boom]\npolicy = "site_boom:Boom"\n[placement]\n')
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    d = Daemon(tmp_path, nodes=1, gpus=1)
    d.config.write_text(d.config.read_text().replace(f"{ROOT}/conf/policies.toml", str(tmp_path / "policies.toml")))
    d.start()
    try:
        jid = d.submit(argv=["true"], queue="1xgpu")
        assert d.wait_state(jid, "finished")["exit_status"] == 0
        with urllib.request.urlopen(f"{d.http_url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'schedd_policy_errors_total{hook="order_key",policy="boom"}' in metrics
        assert "policy plugin 'boom': order_key failed" in d.log.read_text()
    finally:
        d.stop()
