"""schedd.store.schema: versioning, migration on open, refusing what is not ours."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from schedd.store import Store, StoreError
from schedd.store.schema import SCHEMA_VERSION
from tests.store.make import job


def set_version(db: Path, value: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))


def test_a_new_file_gets_the_current_version_in_wal_mode(db: Path) -> None:
    s = Store(db)
    assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
    s.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_reopening_keeps_data_and_migrates_nothing(db: Path) -> None:
    s = Store(db)
    s.put_jobs([job(1)])
    s.close()
    s = Store(db)
    assert [j.id for j in s.load_jobs()] == ["1"]
    s.close()


def test_a_newer_schema_is_refused_naming_both_versions(db: Path) -> None:
    Store(db).close()
    set_version(db, str(SCHEMA_VERSION + 98))
    with pytest.raises(StoreError) as info:
        Store(db)
    message = str(info.value)
    assert f"version {SCHEMA_VERSION + 98} is newer" in message
    assert f"(version {SCHEMA_VERSION})" in message and str(db) in message


def test_a_garbled_version_is_refused(db: Path) -> None:
    Store(db).close()
    set_version(db, "one")
    with pytest.raises(StoreError, match="'one', not an integer"):
        Store(db)


def test_a_foreign_sqlite_database_is_refused(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE things (x)")
    with pytest.raises(StoreError, match="not a schedd database"):
        Store(db)


def test_a_file_that_is_not_sqlite_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not a database, it is a shopping list" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        Store(db)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope" / "schedd.db")


def test_the_active_index_serves_load_active(db: Path) -> None:
    Store(db).close()
    with sqlite3.connect(db) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE state != 'finished' ORDER BY seq").fetchall()
    assert "USING INDEX jobs_active" in plan[0][-1] and len(plan) == 1  # no sort step
