"""Issue #11: the commands never print a traceback for anything the server returns.

Times out of the platform's range, NaN or missing reach ``qstat -f``'s
formatter as they came from the server's JSON; each prints as ``--`` or the
raw number instead of raising OverflowError/ValueError.
"""

from __future__ import annotations

import json
import math

from schedd.cli.pbsfmt import attrs_json, attrs_text, ctime, duration, hms, run_at
from schedd.cli.qstat_attrs import comment, job_attrs
from schedd.cli.qstat_format import alt_table, default_table, est_start, rows
from tests.cli.test_qstat_format import NOW, ctx, job

ABSURD = (1e308, -1e308, math.inf, -math.inf, math.nan, None)


def test_time_helpers_never_raise_on_absurd_values() -> None:
    assert ctime(1e308) == "1e+308" and ctime(math.nan) == "nan" and ctime(None) == "--"
    assert run_at(1e308) == "1e+308" and run_at(None) == "--"
    assert hms(math.nan) == "--" and hms(math.inf) == "--" and duration(math.inf) == "--"
    assert hms(1e308).endswith(":00:00") or ":" in hms(1e308)
    for value in ABSURD:
        for fmt in (ctime, run_at, hms, duration):
            assert isinstance(fmt(value), str)  # type: ignore[arg-type]
        assert isinstance(est_start(value, NOW), str)


def test_qstat_f_formats_a_job_with_absurd_times() -> None:
    for value in (1e308, -1e308, math.inf, math.nan):
        for state in ("queued", "running", "finished"):
            j = job("42", "far", "ann", "batch", state, eligible_time=value, submit_time=value, start_time=value,
                    end_time=value, planned_start=value, walltime_s=value, exit_status=0 if state == "finished" else None)
            attrs = job_attrs(j, ctx())
            text = attrs_text("Job Id: 42.sched", attrs)
            assert "Traceback" not in text and "Job_Name = far" in text
            json.dumps(attrs_json(attrs))
            comment(j, ctx())
            assert "far" in default_table(rows([j], ctx()), "sched")
            assert "far" in alt_table([j], ctx(), est=True, nodes=True, comments=True)
    j = job("43", "far", "ann", "batch", "queued", eligible_time=1e308, walltime_s=1e308)
    shown = {(n, r): v for n, r, v in job_attrs(j, ctx())}
    assert shown[("Execution_Time", None)] == "1e+308" and shown[("etime", None)] == "1e+308"
