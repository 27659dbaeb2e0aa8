"""SchedExecutor against a real daemon, driven as a notebook would: functions defined
in ``__main__`` (a script run by the interpreter), pickled by value."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.integration.conftest import ROOT, Daemon

NOTEBOOK = textwrap.dedent('''
    import json, sys, time
    from schedd.executor import SchedExecutor, RemoteTraceback, JobFailed

    def square(x):                       # a notebook cell's function: lives in __main__
        print(f"squaring {x}")
        return {"x": x, "sq": x * x}

    def boom(what):
        raise ValueError(f"bad {what}")

    out = {}
    with SchedExecutor(folder=sys.argv[1], walltime="00:05:00") as ex:
        out["squares"] = list(ex.map(square, range(20)))                 # one array job of 20
        futs = ex.map_array(square, [5])
        fut = ex.submit(boom, "input")
        try:
            fut.result(timeout=120)
        except ValueError as e:
            out["error"] = str(e)
            out["remote_tb"] = isinstance(e.__cause__, RemoteTraceback) and e.__cause__.tb
        out["stdout"] = futs[0].result(120) and futs[0].stdout()
        slow = ex.submit(time.sleep, 300)
        while slow.job().info["state"] != "running":
            time.sleep(0.1)
        out["cancelled"] = slow.cancel()
        out["job_after_cancel"] = slow.job().wait(60).info["finish_reason"]
        out["array_ids"] = None
    print(json.dumps(out))
''')


def test_notebook_style_functions_as_an_array_with_errors_and_cancel(daemon: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    env = {**os.environ, "SCHEDD_URL": daemon.url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["squares"] == [{"x": i, "sq": i * i} for i in range(20)]
    assert out["error"] == "bad input"
    assert "in boom" in out["remote_tb"] and "ValueError: bad input" in out["remote_tb"]
    assert out["stdout"] == "squaring 5\n"
    assert out["cancelled"] is True and out["job_after_cancel"] == "cancelled"
    jobs = daemon.client.call("GET", "/api/v1/jobs?finished=1")["jobs"]
    arrays = [j for j in jobs if j["id"].endswith("[]")]
    assert any(j["name"] == "square" for j in arrays)  # the 20 calls were one array job
