"""qmetrics: print or export a job's metrics (its own and the node's samples of it).

Without options: one line per series (key, kind, points stored, last value and
step). ``--keys`` picks series, and with ``--csv`` every point of them is written
as CSV (``key,time,step,value``; at most ``--max-points`` per series, downsampled
by schedd with min/max/last buckets beyond that).
"""

from __future__ import annotations

import csv
import sys
from typing import Any
from urllib.parse import quote

from schedd.cli import command
from schedd.cli.common import UsageError, help_parser, job_path, options, parse_job_id, run, usage_error

__all__ = ["main"]

USAGE = "usage: qmetrics [--keys K1,K2] [--csv] [--max-points N] job_identifier"
EPILOG = """\
examples:
  qmetrics 17                          every series of job 17, with its last value
  qmetrics --keys loss,acc --csv 17    the points of loss and acc as CSV
  qmetrics --keys gpu0.util --csv --max-points 100000 17 > util.csv

exit codes: 0 ok, 2 usage, 153 unknown job, 186 cannot reach the server
"""


def _table(body: dict[str, Any]) -> str:
    last = body.get("last", {})
    rows = [("KEY", "KIND", "POINTS", "LAST", "STEP")]
    for s in body.get("series", []):
        lv = last.get(s["key"], {})
        rows.append((s["key"], s["kind"], str(s["count"]), f"{lv.get('value', ''):.6g}" if lv else "",
                     "" if lv.get("step") is None else str(lv["step"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if body.get("capped"):
        out.append("(the job reached its cap of metric points: later points were not kept)")
    if body.get("malformed"):
        out.append(f"({body['malformed']} malformed lines of SCHEDD_METRICS were skipped)")
    for kind in ("params", "tags"):
        for k, v in sorted(body.get(kind, {}).items()):
            out.append(f"{kind[:-1]} {k} = {v}")
    return "\n".join(out) + "\n"


def _csv(body: dict[str, Any]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["key", "time", "step", "value"])
    for s in body.get("series", []):
        for t, step, v in s["points"]:
            w.writerow([s["key"], f"{t:.3f}", "" if step is None else step, repr(v)])


@command
def main(argv: list[str]) -> int:
    try:
        pairs, ids = options(argv, "", ("keys=", "csv", "max-points="))
        if ("--help", "") in pairs:
            help_parser("qmetrics", USAGE, "Print or export a job's metrics.", EPILOG,
                        [("--keys", "K1,K2", "only these series (default: all)"),
                         ("--csv", "", "write the points as CSV (key,time,step,value)"),
                         ("--max-points", "N", "points per series (default 1000 in a table, 100000 in CSV)")]
                        ).print_help()
            return 0
        keys, as_csv, max_points = "", False, 0
        for opt, value in pairs:
            if opt == "--keys":
                keys = value
            elif opt == "--csv":
                as_csv = True
            elif opt == "--max-points":
                if not (value.isascii() and value.isdigit()) or int(value) < 2:
                    raise UsageError("--max-points: expected a number >= 2")
                max_points = int(value)
        if len(ids) != 1:
            raise UsageError("one job identifier, please")
        job = parse_job_id(ids[0]).target
    except (UsageError, ValueError) as e:
        return usage_error("qmetrics", e if isinstance(e, UsageError) else UsageError(str(e)), USAGE)
    mp = max_points or (100_000 if as_csv else 2)
    path = job_path(job, f"/metrics?max_points={mp}" + (f"&keys={quote(keys)}" if keys else ""))

    def body(client: Any) -> int:
        data = client.call("GET", path)
        if as_csv:
            _csv(data)
        else:
            sys.stdout.write(_table(data))
        return 0

    return run("qmetrics", body)


if __name__ == "__main__":
    sys.exit(main())
