"""SessionBook without a browser: what is kept, when a session ends, and the
CSRF rule (safe methods need no token; every other one its own)."""

from __future__ import annotations

import hashlib

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from schedd.api.auth import TokenBook
from schedd.errors import PermissionDenied
from schedd.web.session import COOKIE, CSRF_HEADER, MAX_SESSIONS, SESSION_TTL_S, SessionBook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _request(method: str, secret: str | None, csrf: str | None = None) -> web.Request:
    headers: dict[str, str] = {}
    if secret is not None:
        headers["Cookie"] = f"{COOKIE}={secret}"
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    return make_mocked_request(method, "/api/v1/jobs/1", headers=headers)


@pytest.fixture
def book() -> tuple[SessionBook, str, Clock]:
    tokens = TokenBook(None)
    token = tokens.create("ann", "user", 0.0)
    clock = Clock()
    return SessionBook(tokens, clock), token, clock


def test_only_the_hash_of_the_secret_is_kept(book: tuple[SessionBook, str, Clock]) -> None:
    sessions, token, _ = book
    made = sessions.login(token)
    assert made is not None
    secret, session = made
    assert list(sessions.by_hash) == [hashlib.sha256(secret.encode()).hexdigest()]
    assert secret not in repr(sessions.by_hash)
    assert sessions.login("schedd_wrong") is None


def test_safe_methods_need_no_csrf_token_changes_do(book: tuple[SessionBook, str, Clock]) -> None:
    sessions, token, _ = book
    made = sessions.login(token)
    assert made is not None
    secret, session = made
    assert sessions.identify(_request("GET", secret)) == sessions.identify(_request("HEAD", secret))
    ident = sessions.identify(_request("DELETE", secret, session.csrf))
    assert ident is not None and (ident.user, ident.role) == ("ann", "user")
    for csrf in (None, "", "x" * len(session.csrf)):
        with pytest.raises(PermissionDenied, match="CSRF"):
            sessions.identify(_request("POST", secret, csrf))
    assert sessions.identify(_request("GET", "not-a-session")) is None
    assert sessions.identify(_request("GET", None)) is None


def test_a_session_ends_when_it_expires_or_its_token_goes(book: tuple[SessionBook, str, Clock]) -> None:
    sessions, token, clock = book
    made = sessions.login(token)
    assert made is not None
    clock.now += SESSION_TTL_S + 1
    assert sessions.identify(_request("GET", made[0])) is None and not sessions.by_hash
    made = sessions.login(token)
    assert made is not None
    sessions.tokens.by_hash.clear()  # the token removed
    assert sessions.identify(_request("GET", made[0])) is None


def test_sessions_are_bounded(book: tuple[SessionBook, str, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    sessions, token, _ = book
    monkeypatch.setattr("schedd.web.session.MAX_SESSIONS", 3)
    made = [sessions.login(token) for _ in range(5)]
    assert len(sessions.by_hash) == 3
    first, last = made[0], made[-1]
    assert first is not None and last is not None
    assert sessions.identify(_request("GET", first[0])) is None  # the oldest dropped
    assert sessions.identify(_request("GET", last[0])) is not None
    assert MAX_SESSIONS >= 1000
