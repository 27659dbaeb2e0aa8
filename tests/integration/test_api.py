"""The REST API as clients see it: identity, ownership, bad input, nodes, metrics,
and fair-share and preemption decided by the live daemon."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from schedd.cli.client import ApiError, Client
from tests.integration.conftest import ROOT, Daemon, wait_for


def token(d: Daemon, user: str, role: str = "user") -> str:
    out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", user, "--role", role,
                          "--config", str(d.config)], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip()


def as_user(d: Daemon, user: str, role: str = "user") -> Client:
    return Client(d.http_url, token=token(d, user, role))


def error(call: object) -> ApiError:
    with pytest.raises(ApiError) as e:
        call()  # type: ignore[operator]
    return e.value


def test_tcp_needs_a_token_and_users_may_touch_only_their_jobs(daemon: Daemon) -> None:
    e = error(lambda: Client(daemon.http_url, token="").call("GET", "/api/v1/jobs"))
    assert (e.status, e.code) == (401, "unauthenticated")
    e = error(lambda: Client(daemon.http_url, token="forged").call("GET", "/api/v1/jobs"))
    assert e.status == 401
    ann, bob = as_user(daemon, "ann"), as_user(daemon, "bob")
    jid = ann.call("POST", "/api/v1/jobs", {"argv": ["sleep", "60"], "workdir": "/tmp", "hold": True})["job"]["id"]
    assert bob.call("GET", f"/api/v1/jobs/{jid}")["job"]["owner"] == "ann"  # everyone may look
    e = error(lambda: bob.call("DELETE", f"/api/v1/jobs/{jid}"))
    assert (e.status, e.code) == (403, "permission_denied")
    e = error(lambda: ann.call("POST", f"/api/v1/jobs/{jid}/release", {"types": "o"}))
    assert e.status == 403
    op = as_user(daemon, "olga", "operator")
    op.call("DELETE", f"/api/v1/jobs/{jid}")
    assert daemon.job(jid)["finish_reason"] == "cancelled"
    e = error(lambda: ann.call("GET", "/api/v1/agent"))
    assert e.status == 403  # only admins connect agents


@pytest.mark.parametrize(
    ("body", "status", "code", "text"),
    [
        ({"argv": ["true"], "walltime_s": -1}, 400, "bad_request", "walltime_s"),
        ({"argv": ["true"], "chunks": [{"ngpus": 99}]}, 400, "never_fits", "exceeds every node"),
        ({"argv": ["true"], "queue": "gpu9"}, 400, "unknown_queue", "gpu9"),
        ({"argv": ["true"], "array": "5-1"}, 400, "bad_request", "array"),
        ({"argv": ["true"], "depend": [{"kind": "afterok", "ids": ["424242"]}]}, 404, "unknown_job", "424242"),
        ({"argv": ["true"], "depend": [{"kind": "before", "ids": ["1"]}]}, 400, "bad_request", "$.depend[0].kind"),
        ({"argv": "true"}, 400, "bad_request", "$.argv"),
        ({"argv": ["true"], "nope": 1}, 400, "bad_request", "nope"),
    ],
)
def test_bad_submissions_get_a_precise_4xx_and_queue_nothing(daemon: Daemon, body: dict[str, object], status: int,
                                                            code: str, text: str) -> None:
    e = error(lambda: daemon.client.call("POST", "/api/v1/jobs", body))
    assert (e.status, e.code) == (status, code) and text in e.message
    assert daemon.client.call("GET", "/api/v1/jobs")["jobs"] == []


def test_malformed_bodies_and_ids(daemon: Daemon) -> None:
    req = urllib.request.Request(daemon.http_url + "/api/v1/jobs", data=b"{not json", method="POST",
                                 headers={"Authorization": f"Bearer {token(daemon, 'ann')}"})
    with pytest.raises(urllib.request.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and b"invalid request body" in e.value.read()
    assert error(lambda: daemon.client.call("GET", "/api/v1/jobs/x1")).code == "bad_request"
    assert error(lambda: daemon.client.call("GET", "/api/v1/jobs/9999.testsrv")).status == 404
    batch = {"jobs": [{"argv": ["true"]}, {"argv": ["true"], "queue": "zz"}]}
    e = error(lambda: daemon.client.call("POST", "/api/v1/jobs/batch", batch))
    assert e.message.startswith("jobs[1]: unknown queue") and daemon.client.call("GET", "/api/v1/jobs")["jobs"] == []
    assert error(lambda: daemon.client.call("GET", "/api/v1/nope")).status == 404


def test_nodes_drain_and_metrics(daemon: Daemon) -> None:
    nodes = daemon.client.call("GET", "/api/v1/nodes")["nodes"]
    assert [n["ngpus"] for n in nodes] == [4, 4] and all(n["fake_gpus"] for n in nodes)
    assert nodes[0]["gpus"][0]["model"] == "fake (no NVML)"
    for n in nodes:
        daemon.client.call("POST", f"/api/v1/nodes/{n['name']}/offline", {"comment": "maintenance"})
    jid = daemon.submit(argv=["true"])
    wait_for("a cycle to give a reason", lambda: daemon.job(jid)["reason"] == "Resources")
    daemon.client.call("POST", f"/api/v1/nodes/{nodes[0]['name']}/resume", {})
    assert daemon.wait_state(jid, "finished")["exec_nodes"][0]["node"] == nodes[0]["name"]
    with urllib.request.urlopen(daemon.http_url + "/metrics") as r:
        text = r.read().decode()
    assert 'schedd_jobs_finished_total{result="completed"} 1.0' in text
    assert 'schedd_nodes{state="offline"} 1.0' in text and 'schedd_gpus{state="up",use="free"} 4.0' in text
    assert "schedd_job_wait_seconds_count 1.0" in text and "schedd_cycle_seconds_count" in text


def test_preemption_requeues_the_low_job(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=1, gpus=1, policies={"exempt_s": "0", "grace_s": "1"}).start()
    try:
        low = d.submit(argv=["sleep", "300"], queue="low", name="cheap")
        d.wait_state(low, "running")
        high = d.submit(argv=["true"], queue="1xgpu", name="urgent")
        assert d.wait_state(high, "finished")["exit_status"] == 0
        again = d.wait_state(low, "running")
        assert again["attempt"] == 1
        kinds = [e["kind"] for e in d.client.call("GET", f"/api/v1/jobs/{low}/events")["events"]]
        assert kinds == ["submit", "start", "preempt", "requeue", "start"]
    finally:
        d.stop()


def test_fairshare_puts_the_light_user_first(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=1, gpus=1).start()
    try:
        ann, bob, carl = (as_user(d, u) for u in ("ann", "bob", "carl"))
        gate = tmp_path / "gate"

        def submit(c: Client, **body: object) -> str:
            body.update(workdir=str(tmp_path), queue="1xgpu")
            return str(c.call("POST", "/api/v1/jobs", body)["job"]["id"])

        heavy = submit(ann, argv=["sleep", "2"])  # ann builds up usage
        d.wait_state(heavy, "finished")
        blocker = submit(carl, script=f"while [ ! -e {gate} ]; do sleep 0.05; done\n")
        d.wait_state(blocker, "running")
        a2 = submit(ann, argv=["true"])
        b1 = submit(bob, argv=["true"])  # submitted later, but bob has used nothing
        gate.touch()
        ja, jb = d.wait_state(a2, "finished"), d.wait_state(b1, "finished")
        assert jb["start_time"] < ja["start_time"]
        usage = d.client.call("GET", "/api/v1/usage")
        factors = usage["fairshare"]
        assert factors["default/bob"] > factors["default/ann"]
    finally:
        d.stop()


def test_wait_force_purge_and_server_summary(daemon: Daemon) -> None:
    quick = daemon.submit(argv=["true"])
    waited = daemon.client.call("GET", f"/api/v1/jobs/{quick}/wait?timeout_s=60")
    assert waited["finished"] and waited["job"]["exit_status"] == 0
    slow = daemon.submit(argv=["sleep", "300"])
    daemon.wait_state(slow, "running")
    live = daemon.client.call("GET", f"/api/v1/jobs/{slow}")["live"]
    assert live is not None and live["walltime_s"] >= 0
    assert daemon.client.call("GET", f"/api/v1/jobs/{slow}/wait?timeout_s=0.05")["finished"] is False
    daemon.client.call("DELETE", f"/api/v1/jobs/{slow}?force=1")
    assert daemon.job(slow)["state"] == "finished"  # at once, without waiting for the agent
    summary = daemon.client.call("GET", "/api/v1/server")
    assert summary["server_name"] == "testsrv" and summary["jobs"] == {"finished": 2} and summary["gpus"] == 8
    daemon.client.call("DELETE", f"/api/v1/jobs/{quick}?purge=1")
    assert error(lambda: daemon.client.call("GET", f"/api/v1/jobs/{quick}")).status == 404
    assert error(lambda: daemon.client.call("DELETE", f"/api/v1/jobs/{slow}?force=maybe")).code == "bad_request"
