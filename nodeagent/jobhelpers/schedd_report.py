"""Report a job's metrics to schedd: ``from schedd_report import report``.

    from schedd_report import report
    for step in range(steps):
        ...
        report(step=step, loss=loss, acc=acc)

Each call appends one JSON line to the file named by ``SCHEDD_METRICS`` (set by
schedd in every rank of every job, a container's too); the node follows the
file and forwards the points — rank 0's under their own names, rank R's as
``rankR.NAME`` (report on rank 0 only if the others would repeat it). Outside
a job ``report`` does nothing.
``step`` is optional (an integer >= 0); the time is taken now. Values must be
numbers (ints, floats, or anything ``float()`` takes, e.g. a 0-d tensor).

Standard library only: the node puts this file on every job's PYTHONPATH (a
copy in the rank's scratch for a container), so it works in any interpreter,
including a rebuilt ``qsub --env`` venv or an image without schedd; copy it
into a project to use it elsewhere. Cost: one small write per call (the file
is line-buffered), about 5 us.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any

__all__ = ["report"]

_out: IO[str] | None = None
_disabled = False


def _file() -> IO[str] | None:
    global _out, _disabled
    if _out is None and not _disabled:
        path = os.environ.get("SCHEDD_METRICS", "")
        if not path:
            _disabled = True
            return None
        try:
            _out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open for the run
        except OSError as exc:
            _disabled = True
            print(f"schedd_report: cannot open {path}: {exc}; metrics are not reported", file=sys.stderr)
    return _out


def report(step: int | None = None, **metrics: Any) -> None:
    """Record ``metrics`` (name=number) at ``step``; non-finite values are left out."""
    out = _file()
    if out is None:
        return
    line: dict[str, Any] = {"time": time.time()}
    if step is not None:
        line["step"] = int(step)
    for name, value in metrics.items():
        v = float(value)
        if math.isfinite(v):
            line[name] = v
    out.write(json.dumps(line, separators=(",", ":")) + "\n")
