"""Browser tests: the real daemon and agents (``schedd up``), Debian's
Chromium driven headless by Playwright's Python package.

Playwright launches ``/usr/bin/chromium`` by ``executable_path``: nothing is
downloaded at test time (never ``playwright install``). Playwright rather than
Selenium because it waits on the page's own conditions (``wait_for_function``
evaluated in the page) without a polling loop of ours, and reads JavaScript
values (a chart's data) directly. Without Chromium or Playwright the tests are
skipped with the reason — except under ``CI=true``, where that is a failure
(``ci/chromium.sh`` installs Chromium first).

One daemon serves every test of a module (a few seconds to start on 2 cores);
each test makes its own jobs and its own browser context (cookies apart).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, Daemon, _kill_leftovers, wait_for

CHROMIUM = os.environ.get("SCHEDD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: screenshots of every page, kept as test artifacts (CI collects the folder)
ARTIFACTS = Path(os.environ.get("SCHEDD_WEB_ARTIFACTS", Path(tempfile.gettempdir()) / "schedd-web-artifacts"))


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: ci/chromium.sh should have installed it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM}: apt-get install chromium (or bash ci/chromium.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright's Python package is missing: pip install -e '.[test]'")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


class WebDaemon(Daemon):
    """The integration tests' daemon, with tokens made by ``schedd token create``."""

    def token(self, user: str, role: str = "user") -> str:
        out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", user, "--role", role,
                              "--config", str(self.config)], capture_output=True, text=True, check=True, cwd=ROOT)
        return out.stdout.strip()

    def wait_for_points(self, jid: str, key: str, count: int) -> None:
        """Until the API holds ``count`` points of ``key`` for the job."""
        def have() -> bool:
            m = self.client.call("GET", f"/api/v1/jobs/{jid}/metrics?keys={key}")
            return any(s["key"] == key and s["count"] >= count for s in m["series"])

        wait_for(f"{count} points of {key} for job {jid}", have)

    def submit_as(self, token: str, **body: Any) -> str:
        from schedd.cli.client import Client

        body.setdefault("workdir", str(self.tmp))
        c = Client(self.http_url, token=token)
        try:
            return str(c.call("POST", "/api/v1/jobs", body)["job"]["id"])
        finally:
            c.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    d = WebDaemon(tmp_path_factory.mktemp("web"), nodes=2, gpus=4)
    d.start()
    yield d
    d.stop()
    _kill_leftovers(d.state)


@pytest.fixture
def page_for(browser: Any, web: WebDaemon) -> Iterator[Any]:
    """``page_for(user)``: a fresh browser context logged in as ``user`` through the form."""
    contexts: list[Any] = []

    def make(user: str, role: str = "user", path: str = "#/jobs") -> Any:
        # bypass_csp: Playwright's polling of wait_for_function evaluates strings, which the
        # page's CSP (no 'unsafe-eval') forbids; the page itself needs no eval (test_access checks the header)
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, bypass_csp=True)
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto(f"{web.http_url}/ui/{path}")
        page.fill("#token", web.token(user, role))
        page.click("#login button[type=submit]")
        page.wait_for_function("window.schedd && window.schedd.session !== null")
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def shot(page: Any, name: str) -> Path:
    """A screenshot of the page as a test artifact (ARTIFACTS/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
