"""schedd down for longer than the agents' fence: the jobs run on (issue #11).

The fence (nodeagent/fence.py) freezes a node's jobs once schedd has been
silent for half its heartbeat timeout, because a *silent* schedd may be alive
behind a partition and about to rerun them. A schedd that is simply down
refuses connections; that is no reason to freeze. Here ``schedd serve`` is
``kill -9``'d and restarted on the same port after several fence intervals,
with an agent run on its own (as on a real node): the job keeps ticking the
whole time, is never frozen, and finishes once, in its first attempt.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import ROOT, wait_for
from tests.kube.test_agents_e2e import Served

TIMEOUT_S = 2.0  # schedd's heartbeat timeout (and restart grace): the fence falls after 1 s of silence


def _kill(served: Served) -> None:
    assert served.proc is not None and served.proc.stdout is not None
    served.proc.kill()
    served.proc.wait(30)
    served.proc.stdout.close()


def _ticks(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def test_jobs_run_on_while_schedd_is_down_past_the_fence(tmp_path: Path) -> None:
    served = Served(tmp_path, "127.0.0.1", hb_timeout=TIMEOUT_S, grace=TIMEOUT_S)
    token = tmp_path / "token"
    token.write_text(served.token("node01", "agent"))
    client = served.start().client
    state = tmp_path / "agent"
    agent = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.main", "--server", f"http://127.0.0.1:{served.port}", "--name", "node01",
         "--token-file", str(token), "--state-dir", str(state), "--fake-gpus", "1", "--cpus", "2",
         "--mem-mb", "2048", "--no-switch-user", "--heartbeat-s", "0.2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("a"), cwd=ROOT)
    ticks, gate = tmp_path / "ticks", tmp_path / "gate"
    try:
        wait_for("node01 up", lambda: [n["state"] for n in client.call("GET", "/api/v1/nodes")["nodes"]] == ["up"])
        script = (f'while [ ! -e {gate} ]; do python3 -c "import time; print(time.time())" >> {ticks}; '
                  "sleep 0.1; done\n")
        jid = str(client.call("POST", "/api/v1/jobs", {"script": script, "workdir": str(tmp_path)})["job"]["id"])
        wait_for("the job ticking", lambda: len(_ticks(ticks)) >= 2)
        _kill(served)
        client.close()
        down_at = time.time()
        # Several fence intervals with schedd gone: the job must keep ticking all along.
        wait_for("ticks 4 fence intervals after schedd died",
                 lambda: _ticks(ticks)[-1] > down_at + 4 * TIMEOUT_S / 2, timeout=60)
        assert "fencing" not in (tmp_path / "agent.log").read_text()
        client = served.start().client  # the same port: the agent dials it again
        wait_for("node01 back", lambda: [n["state"] for n in client.call("GET", "/api/v1/nodes")["nodes"]] == ["up"])
        gate.touch()
        job = wait_for("the job finished", lambda: (j := client.call("GET", f"/api/v1/jobs/{jid}")["job"])["state"]
                       == "finished" and j)
        assert (job["exit_status"], job["attempt"]) == (0, 0), job
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        served.stop()
        from nodeagent.jobs import stop_supervisors

        stop_supervisors(state)
