"""The example plugin (examples/schedd-sjf) changes a simulated schedule, enabled
from a TOML file through ``bench.replay --policies FILE`` as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import replay

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "lublin_256.swf.gz"
SJF = ROOT / "examples" / "schedd-sjf" / "policies.toml"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, float]:
    assert replay.main(["--trace", str(TRACE), "--machine", "pool", "--limit", "1500", "--json", *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


@pytest.mark.skipif(not TRACE.exists(), reason="the shared traces are not here")
def test_shortest_first_cuts_the_slowdown_of_easy_backfilling(capsys: pytest.CaptureFixture[str]) -> None:
    easy = _run(capsys, "--preset", "easy")
    sjf = _run(capsys, "--policies", str(SJF))
    assert sjf["jobs"] == easy["jobs"] == 1500
    # SJF's textbook effect: far less waiting for the many short jobs.
    assert sjf["avg_bsld"] < easy["avg_bsld"] / 2
    assert sjf["p50_wait_s"] <= easy["p50_wait_s"]
