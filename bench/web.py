"""Page load of the web page's jobs table with 10,000 jobs in the store (issue #10).

::

    python -m bench.web [--jobs 10000] [--repeat 5]

A real ``schedd up`` (no nodes: nothing runs, nothing changes under the
measurement) holding half its jobs held in the queue and half finished (a
cancelled array, so they are history read from SQLite); Debian's Chromium,
headless, driven by Playwright as in ``tests/web``. Measured: from the start of
navigation to ``/ui/#/jobs`` (already logged in) until the table is drawn and
usable (its first rows in the DOM, the page's ``data-ready``), as the page's
own ``performance.now()``; one warm-up load, then ``--repeat`` loads.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench._daemon import LocalSchedd
from schedd.cli.client import Client

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
BATCH = 1000


def _fill(client: Client, jobs: int, workdir: str) -> None:
    """Half held single jobs (submitted in batches), half a cancelled array."""
    held = jobs // 2
    for first in range(0, held, BATCH):
        batch = [{"argv": ["true"], "name": f"held-{i}", "hold": True, "workdir": workdir}
                 for i in range(first, min(held, first + BATCH))]
        client.call("POST", "/api/v1/jobs/batch", {"jobs": batch})
    done = jobs - held
    if done:
        rec = client.call("POST", "/api/v1/jobs", {"argv": ["true"], "name": "sweep", "hold": True,
                                                   "array": f"0-{done - 1}", "workdir": workdir})
        client.call("DELETE", f"/api/v1/jobs/{rec['job']['id']}")


def _measure(url: str, token: str, repeat: int) -> tuple[list[float], int]:
    from playwright.sync_api import sync_playwright

    times: list[float] = []
    rows = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.request.post(f"{url}/ui/login", data={"token": token})
        for i in range(repeat + 1):
            page = ctx.new_page()
            page.goto(f"{url}/ui/#/jobs")
            page.wait_for_selector("#page-jobs[data-ready='1'] #jobs tbody tr", timeout=60_000)
            ms = page.evaluate("performance.now()")
            rows = page.locator("#jobs tbody tr").count()
            if i:  # the first load warms the daemon's and the browser's caches
                times.append(ms)
            page.close()
        browser.close()
    return times, rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.web")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = LocalSchedd(Path(tmp), nodes=0)
        d.start()
        try:
            _fill(d.client, args.jobs, tmp)
            listed = len(d.client.call("GET", "/api/v1/jobs?finished=1&fields=id&limit=100000")["jobs"])
            token = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", "bench", "--config",
                                    str(d.config)], capture_output=True, text=True, check=True).stdout.strip()
            times, rows = _measure(d.http_url, token, args.repeat)
        finally:
            d.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"host {platform.node()} ({platform.processor() or platform.machine()}), commit {commit}")
    print(f"jobs in the store: {listed}; rows drawn: {rows}")
    print(f"jobs page to a usable table, {len(times)} loads: min {min(times):.0f} ms, "
          f"median {statistics.median(times):.0f} ms, max {max(times):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
