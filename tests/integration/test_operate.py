"""Operating a live daemon: reload by SIGHUP and `schedd reload`, tokens listed and revoked."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schedd.cli.client import ApiError, Client
from tests.integration.conftest import ROOT, Daemon, wait_for


def schedd(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "schedd.main", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "SCHEDD_URL": d.url}, timeout=60)


def queue_names(d: Daemon) -> set[str]:
    return set(d.client.call("GET", "/api/v1/queues")["queues"])


def test_reload_changes_queues_keeps_running_jobs_and_refuses_a_bad_file(daemon: Daemon, tmp_path: Path) -> None:
    running = daemon.submit(argv=["sleep", "300"], queue="1xgpu", name="runs")
    daemon.wait_state(running, "running")
    # A queued job in a queue that goes away: hold the only slot's queue with a big job first.
    stuck = daemon.submit(argv=["true"], queue="1xgpu", name="stuck", chunks=[{"ncpus": 1, "ngpus": 4, "count": 2}])
    daemon.wait_state(stuck, "queued")
    good = daemon.config.read_text()
    text = good.replace("[queues.1xgpu]", "[queues.gpu]")  # 1xgpu renamed: removed, gpu added
    daemon.config.write_text(text)
    out = schedd(daemon, "reload")
    assert out.returncode == 0, out.stderr
    assert "queue gpu: added" in out.stdout and "queue 1xgpu: removed" in out.stdout
    assert "gpu" in queue_names(daemon) and "1xgpu" not in queue_names(daemon)
    assert daemon.job(running)["state"] == "running"  # untouched
    job = daemon.job(stuck)
    assert job["state"] == "queued" and "no longer configured" in job["comment"]
    wait_for("QueueLimit", lambda: daemon.job(stuck).get("reason") == "QueueLimit")
    with pytest.raises(ApiError, match="unknown queue"):
        daemon.submit(argv=["true"], queue="1xgpu")
    # A bad file: refused, named, the old configuration kept.
    daemon.config.write_text(text + "\n[queues.extra]\npriorty = 1\n")
    out = schedd(daemon, "reload")
    assert out.returncode == 2 and "priorty" in out.stderr and "kept" in out.stderr
    assert "gpu" in queue_names(daemon) and "extra" not in queue_names(daemon)
    # SIGHUP, with the original file back: 1xgpu again, and the stuck job may run.
    daemon.config.write_text(good)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("1xgpu back", lambda: "1xgpu" in queue_names(daemon))
    assert "configuration reloaded" in daemon.log.read_text()
    assert "reload refused" in daemon.log.read_text()
    assert daemon.job(running)["state"] == "running"


def test_a_reload_changes_the_policies(daemon: Daemon, tmp_path: Path) -> None:
    policies = tmp_path / "policies.toml"
    policies.write_text((ROOT / "examples" / "schedd-sjf" / "policies.toml").read_text())
    daemon.config.write_text(daemon.config.read_text().replace(f"{ROOT}/conf/policies.toml", str(policies)))
    out = schedd(daemon, "reload")
    assert out.returncode == 0 and "policies: sjf, limits, placement, backfill" in out.stdout
    policies.write_text('[sjf]\npolicy = "nowhere:X"\n')
    out = schedd(daemon, "reload")
    assert out.returncode == 2 and "sjf.policy: cannot import 'nowhere'" in out.stderr


def test_tokens_listed_and_revoked_at_once(daemon: Daemon) -> None:
    made = schedd(daemon, "token", "create", "ann", "--config", str(daemon.config))
    token = made.stdout.strip()
    ann = Client(daemon.http_url, token=token)
    assert ann.call("GET", "/api/v1/jobs") is not None
    listed = schedd(daemon, "token", "list", "--config", str(daemon.config))
    line = next(l for l in listed.stdout.splitlines() if " ann " in l)
    token_id = line.split()[0]
    out = schedd(daemon, "token", "revoke", token_id, "--config", str(daemon.config))
    assert out.returncode == 0 and f"revoked {token_id} (ann, user)" in out.stdout
    with pytest.raises(ApiError) as e:
        Client(daemon.http_url, token=token).call("GET", "/api/v1/jobs")
    assert e.value.status == 401
    assert " ann " not in schedd(daemon, "token", "list", "--config", str(daemon.config)).stdout
    out = schedd(daemon, "token", "revoke", "abc", "--config", str(daemon.config))
    assert out.returncode == 1 and "at least 8" in out.stderr
