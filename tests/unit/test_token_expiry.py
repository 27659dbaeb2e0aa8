"""Expiring API tokens (issue #11): ``schedd token create USER --expires-in 7d``.

The duration's parsing, the book refusing an expired token with its own
message (and the web page's login likewise), the expiry stored with the row,
and a database written before the column existed opened with its tokens kept
(they never expire). The daemon refusing one over TCP is in
tests/security/test_authz_matrix.py.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest

from schedd.api.auth import TokenBook
from schedd.errors import Unauthenticated
from schedd.operate import duration
from schedd.store import Store
from schedd.store.schema import MIGRATIONS, VERSION_KEY


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800),
                                               ("2w", 1209600), ("45", 45), ("1.5h", 5400), (" 7D ", 604800)])
def test_a_duration_reads_as_seconds(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "0", "-1d", "7y", "nan", "inf", "1e300", "11000d", "7 days"])
def test_a_bad_duration_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="positive duration"):
        duration(text)


def test_an_expired_token_is_refused_with_its_own_message() -> None:
    now = [1000.0]
    book = TokenBook(None, clock=lambda: now[0])
    token = book.create("ann", "user", 1000.0, expires=1060.0)
    forever = book.create("bob", "user", 1000.0)
    assert book.judge(token).user == "ann" and book.check(token) is not None
    now[0] = 1060.0
    with pytest.raises(Unauthenticated, match="expired at 1970-01-01T00:17:40Z"):
        book.judge(token)
    assert book.check(token) is None  # what the web page's login asks: no session from it
    with pytest.raises(Unauthenticated, match="not valid"):
        book.judge("schedd_forged")
    now[0] = 1e12
    assert book.judge(forever).user == "bob"


def test_the_expiry_is_stored_with_the_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "schedd.db")
    store.start()
    book = TokenBook(store)
    book.create("ann", "user", 10.0, expires=20.0)
    book.create("bob", "operator", 11.0)
    store.close()
    store = Store(tmp_path / "schedd.db")
    assert [(t.user, t.expires) for t in store.tokens()] == [("ann", 20.0), ("bob", None)]
    store.close()


def test_a_database_from_before_expiry_keeps_its_tokens(tmp_path: Path) -> None:
    db = tmp_path / "schedd.db"
    with sqlite3.connect(db) as conn:  # as schema version 2 left it
        for step in MIGRATIONS[:2]:
            for statement in step:
                conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES (?, '2')", (VERSION_KEY,))
        conn.execute("INSERT INTO tokens VALUES ('ab12', 'ann', 'user', 5.0)")
    store = Store(db)
    assert [(t.hash, t.user, t.expires) for t in store.tokens()] == [("ab12", "ann", None)]
    store.close()
