"""The pages with real jobs: the jobs table live, a job's charts holding
exactly what the job reported and growing within 2 s, compare overlaying two
jobs, the GPU heatmap; a screenshot of each page as a test artifact."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT
from tests.web.conftest import WebDaemon, shot

#: A job that waits for a file: the test decides when it ends.
WAIT = "while [ ! -e {go} ]; do sleep 0.05; done"

#: Reports N points of loss (and acc) through SCHEDD_METRICS, then one more
#: point when the test creates the file GO, then waits for END.
REPORTER = """
import json, os, sys, time
n, go, end = int(sys.argv[1]), sys.argv[2], sys.argv[3]
path = os.environ["SCHEDD_METRICS"]
def loss(i): return round(2.0 * 0.99 ** i + 0.01 * (i % 7), 6)
with open(path, "a") as f:
    for i in range(n):
        f.write(json.dumps({"step": i, "loss": loss(i), "acc": i / n}) + "\\n")
        if i % 50 == 0:
            print(f"step {i:4d}  loss {loss(i):.4f}", flush=True)
    f.flush()
    while not os.path.exists(go) and not os.path.exists(end):
        time.sleep(0.02)
    f.write(json.dumps({"step": n, "loss": 0.125}) + "\\n")
    f.flush()
while not os.path.exists(end):
    time.sleep(0.05)
"""


def loss(i: int) -> float:
    return round(2.0 * 0.99 ** i + 0.01 * (i % 7), 6)


def _reporter(web: WebDaemon, token: str, n: int, tag: str) -> tuple[str, Path, Path]:
    script = web.tmp / "reporter.py"
    script.write_text(REPORTER)
    go, end = web.tmp / f"go-{tag}", web.tmp / f"end-{tag}"
    jid = web.submit_as(token, argv=[sys.executable, str(script), str(n), str(go), str(end)], name=f"sweep-{tag}",
                        queue="1xgpu")
    return jid, go, end


def test_jobs_table_lists_and_updates_live(page_for: Any, web: WebDaemon) -> None:
    token = web.token("ann")
    go = web.tmp / "go-table"
    quick = web.submit_as(token, argv=["sh", "-c", WAIT.format(go=go)], name="finishes-soon")
    other = web.submit_as(token, argv=["sleep", "300"], name="keeps-running")
    web.wait_state(quick, "running")
    page = page_for("ann")
    for jid in (quick, other):
        page.wait_for_selector(f"#jobs tr[data-id='{jid}']")
    assert page.locator(f"#jobs tr[data-id='{quick}'] td").nth(1).inner_text() == "finishes-soon"
    page.evaluate("window.__noReload = true")
    shot(page, "jobs")
    go.touch()
    t0 = time.monotonic()
    page.wait_for_selector(f"#jobs tr[data-id='{quick}'][data-state=finished]", timeout=15_000)
    took = time.monotonic() - t0
    assert page.evaluate("window.__noReload === true")  # updated in place, not reloaded
    assert page.locator(f"#jobs tr[data-id='{other}']").get_attribute("data-state") == "running"
    # Filters: by name search, then by state.
    page.fill("#f-search", "keeps-running")
    page.wait_for_function(f"document.querySelectorAll('#jobs tbody tr').length === 1")
    page.fill("#f-search", "")
    page.select_option("#f-state", "finished")
    page.wait_for_function(f"[...document.querySelectorAll('#jobs tbody tr')].every(r => r.dataset.state === 'finished')")
    web.client.call("DELETE", f"/api/v1/jobs/{other}")
    print(f"jobs table: finished state shown {took:.2f} s after the job's end was triggered")


def test_job_page_chart_holds_the_reported_points(page_for: Any, web: WebDaemon) -> None:
    token = web.token("ann")
    jid, go, end = _reporter(web, token, 500, "chart")
    try:
        web.wait_state(jid, "running")
        page = page_for("ann", path=f"#/job/{jid}")
        # Every one of the 500 reported points is what the chart draws.
        page.wait_for_function("(c => c && c.data[0].length >= 500)(window.schedd.charts.loss)", timeout=30_000)
        xs, ys = page.evaluate("window.schedd.charts.loss.data")
        assert xs == list(range(500))
        assert all(math.isclose(y, loss(i), rel_tol=1e-9) for i, y in enumerate(ys)), ys[:5]
        page.wait_for_function("window.schedd.charts.acc !== undefined")
        # A new point appears within 2 s of the job writing it.
        go.touch()
        t0 = time.monotonic()
        page.wait_for_function("window.schedd.charts.loss.data[0].length === 501", timeout=10_000)
        took = time.monotonic() - t0
        assert page.evaluate("window.schedd.charts.loss.data[1][500]") == 0.125
        assert took <= 2.0, f"the new point took {took:.2f} s to appear"
        print(f"job page: the new point drawn {took:.2f} s after the job was told to write it")
        page.wait_for_selector("#timeline li")
        page.wait_for_function("document.querySelector('#log').textContent.includes('step  450')")
        page.wait_for_function("window.schedd.charts['gpu.util'] !== undefined", timeout=15_000)
        shot(page, "job")
        if os.environ.get("SCHEDD_UPDATE_SCREENSHOT"):
            _readme_screenshot(page)
    finally:
        end.touch()
    web.wait_state(jid, "finished")


def test_compare_overlays_two_jobs(page_for: Any, web: WebDaemon) -> None:
    token = web.token("ann")
    a, _, end_a = _reporter(web, token, 120, "cmp-a")
    b, _, end_b = _reporter(web, token, 80, "cmp-b")
    try:
        for jid in (a, b):
            web.wait_for_points(jid, "loss", 80 if jid == b else 120)
        page = page_for("ann", path=f"#/compare?ids={a},{b}&key=loss")
        page.wait_for_function("window.schedd.charts.compare !== undefined", timeout=15_000)
        series = page.evaluate("window.schedd.charts.compare.series.map(s => s.label)")
        assert series[1].startswith(a) and series[2].startswith(b)
        xs, ya, yb = page.evaluate("window.schedd.charts.compare.data")
        assert xs[:120] == list(range(120))
        assert [y for y in ya if y is not None] == pytest.approx([loss(i) for i in range(120)])
        assert [y for y in yb if y is not None] == pytest.approx([loss(i) for i in range(80)])
        rows = page.locator("#cmp-table tbody tr")
        assert rows.count() == 2
        shot(page, "compare")
    finally:
        end_a.touch()
        end_b.touch()


def test_nodes_heatmap(page_for: Any, web: WebDaemon) -> None:
    jid = web.submit_as(web.token("ann"), argv=["sleep", "300"], queue="1xgpu", name="on-a-gpu")
    web.wait_state(jid, "running")
    page = page_for("ann", path="#/nodes")
    page.wait_for_selector("#nodes .node")
    assert page.locator("#nodes .gpu").count() == web.nodes * web.gpus  # one cell per GPU
    page.wait_for_selector(f"#nodes .gpu a:text('{jid}')")
    shot(page, "nodes")
    page.goto(f"{web.http_url}/ui/#/queues")
    page.wait_for_selector("#queues tbody tr")
    shot(page, "queues")
    web.client.call("DELETE", f"/api/v1/jobs/{jid}")


def _readme_screenshot(page: Any) -> None:
    """docs/job-page.png for the README: the top of the job page, small, once the
    node's samples make a line (a few heartbeats)."""
    page.wait_for_function("window.schedd.charts['gpu.util'].data[0].length >= 6", timeout=20_000)
    page.set_viewport_size({"width": 1100, "height": 760})
    page.evaluate("window.dispatchEvent(new Event('resize'))")
    page.wait_for_timeout(300)  # a redraw after the resize, for the picture only
    path = ROOT / "docs" / "job-page.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size < 150_000, path.stat().st_size
