"""Who may see and do what from the page: nothing before login, a session
cookie the page's scripts cannot read, changes only with the CSRF token, and
a user's buttons on their own jobs only (the server refusing the rest)."""

from __future__ import annotations

import json
from typing import Any

from tests.web.conftest import WebDaemon, shot

LONG = {"argv": ["sleep", "300"], "name": "long"}


def _fetch(page: Any, method: str, path: str, csrf: bool) -> dict[str, Any]:
    """A request made from the page's own origin, with the session cookie,
    with or without the CSRF header: what a forged request could do at most."""
    return dict(page.evaluate("""async ([method, path, csrf]) => {
        const headers = csrf ? {"X-Schedd-CSRF": window.schedd.session.csrf} : {};
        const r = await fetch(path, {method, headers});
        return {status: r.status, body: await r.text()};
    }""", [method, path, csrf]))


def test_login_required_and_no_data_before(browser: Any, web: WebDaemon) -> None:
    web.submit(argv=["true"], name="secret-name")
    ctx = browser.new_context()
    page = ctx.new_page()
    seen: list[str] = []
    page.on("response", lambda r: seen.append(r.url))
    answer = page.goto(f"{web.http_url}/ui/#/jobs")
    assert answer is not None and "default-src 'self'" in answer.headers["content-security-policy"]
    page.wait_for_selector("#login")
    assert page.locator("#main").inner_text().count("secret-name") == 0
    assert page.locator("#bar").is_hidden()
    assert not [u for u in seen if "/api/v1/" in u], seen  # the page asked for no data
    shot(page, "login")
    # Without a session the API and /ui/session answer 401 in JSON.
    for path in ("/api/v1/jobs", "/ui/session"):
        r = _fetch(page, "GET", path, csrf=False)
        assert r["status"] == 401 and json.loads(r["body"])["error"]["code"] == "unauthenticated"
    page.fill("#token", "schedd_not-a-token")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:not(:empty)")
    assert page.locator("#jobs").count() == 0
    ctx.close()


def test_session_cookie_and_logout(page_for: Any, web: WebDaemon) -> None:
    page = page_for("ann")
    page.wait_for_selector("#jobs")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "schedd_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    assert _fetch(page, "GET", "/api/v1/jobs", csrf=False)["status"] == 200
    page.click("#logout")
    page.wait_for_selector("#login")
    assert _fetch(page, "GET", "/api/v1/jobs", csrf=False)["status"] == 401


def test_csrf_token_required_for_changes(page_for: Any, web: WebDaemon) -> None:
    page = page_for("ann")
    token = web.token("ann")
    jid = web.submit_as(token, **LONG)
    r = _fetch(page, "DELETE", f"/api/v1/jobs/{jid}", csrf=False)
    assert r["status"] == 403 and "CSRF" in json.loads(r["body"])["error"]["message"]
    r = _fetch(page, "POST", f"/api/v1/jobs/{jid}/hold", csrf=False)
    assert r["status"] == 403
    assert web.job(jid)["state"] in ("queued", "running")
    r = _fetch(page, "POST", "/ui/logout", csrf=False)
    assert r["status"] == 403
    assert _fetch(page, "DELETE", f"/api/v1/jobs/{jid}", csrf=True)["status"] == 200


def test_cancel_own_job_not_anothers(page_for: Any, web: WebDaemon) -> None:
    mine = web.submit_as(web.token("ann"), **LONG)
    theirs = web.submit_as(web.token("bob"), **LONG)
    page = page_for("ann", path=f"#/job/{theirs}")
    page.wait_for_selector("#actions")
    page.wait_for_function("document.querySelector('#actions').textContent.includes('read-only')")
    assert page.locator("#do-cancel").count() == 0  # no button on bob's job
    r = _fetch(page, "DELETE", f"/api/v1/jobs/{theirs}", csrf=True)  # and the server refuses it anyway
    assert r["status"] == 403, r
    assert web.job(theirs)["state"] != "finished"
    page.goto(f"{web.http_url}/ui/#/job/{mine}")
    page.click("#do-cancel")
    page.wait_for_selector("#job-state[data-state=finished], #job-state[data-state=exiting]")
    web.wait_state(mine, "finished")
    assert web.job(mine)["finish_reason"] == "cancelled"
    # An operator may cancel anyone's job from the page.
    op = page_for("olga", role="operator", path=f"#/job/{theirs}")
    op.click("#do-cancel")
    web.wait_state(theirs, "finished")
