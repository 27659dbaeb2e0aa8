"""The SQLite schema, its version and the migrations that reach it — all in one place.

``MIGRATIONS[v]`` takes a database at version ``v`` to ``v + 1``; version 0 is an
empty file. The version lives in ``meta`` under ``schema_version``. :func:`migrate`
runs every step a database lacks in ONE ``BEGIN IMMEDIATE`` transaction (SQLite DDL is
transactional), so a crash mid-migration leaves the old version intact, and two
processes opening a fresh file cannot both create it. A database from a newer schedd
is refused, never downgraded.

Indexes, each for a read the daemon does:

- ``jobs_active``: partial index on ``seq`` of the jobs whose ``state != 'finished'``
  — the startup ``load_active`` reads exactly this index, already in ``seq`` order,
  and it stays as small as the live queue however long the history grows.
- ``jobs_owner`` on ``(owner, seq)``: ``qstat -u``, ``qacct -u``.
- ``jobs_time`` on ``COALESCE(end_time, submit_time)``: the time ``since``/``until``
  filter on (for a finished job that is its ``end_time``): history, accounting, purge.
- ``events_job`` on ``(job_id, time)``: one job's history; ``events_time`` on ``time``.
- ``chunks`` (version 2) is keyed by ``(job_id, key, seq)``, WITHOUT ROWID: a job's
  series, and one series' chunks in order, are contiguous ranges of the table;
  ``chunks_time`` on ``t1`` (its last point's time) is what retention deletes by.
  ``params`` holds a job's MLflow params and tags. See :mod:`schedd.store.series`.

Adding a version: append a tuple of statements to ``MIGRATIONS`` and a test that
opens a database written at the previous version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from schedd.core.model import JobState
from schedd.store.rows import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "VERSION_KEY", "migrate"]

VERSION_KEY = "schema_version"

FINISHED = JobState.FINISHED.value
assert FINISHED == "finished", "jobs_active's WHERE clause and load_active spell it out"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        """CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT""",
        # Column seq holds JobRow.order (core Job.order), the FCFS submission order: ORDER is an SQL keyword.
        """CREATE TABLE jobs (
            id          TEXT PRIMARY KEY,
            seq         INTEGER NOT NULL,
            state       TEXT NOT NULL,
            owner       TEXT NOT NULL,
            account     TEXT NOT NULL,
            queue       TEXT NOT NULL,
            submit_time REAL NOT NULL,
            end_time    REAL,
            data        BLOB NOT NULL
        ) STRICT""",
        "CREATE INDEX jobs_active ON jobs (seq) WHERE state != 'finished'",
        "CREATE INDEX jobs_owner ON jobs (owner, seq)",
        "CREATE INDEX jobs_time ON jobs (COALESCE(end_time, submit_time))",
        """CREATE TABLE events (
            id     INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL,
            time   REAL NOT NULL,
            kind   TEXT NOT NULL,
            data   BLOB NOT NULL
        ) STRICT""",
        "CREATE INDEX events_job ON events (job_id, time)",
        "CREATE INDEX events_time ON events (time)",
        """CREATE TABLE tokens (
            hash    TEXT PRIMARY KEY,
            user    TEXT NOT NULL,
            role    TEXT NOT NULL,
            created REAL NOT NULL
        ) STRICT""",
    ),
    (  # 1 -> 2: job metrics (schedd.store.series)
        """CREATE TABLE chunks (
            job_id  TEXT NOT NULL,
            key     TEXT NOT NULL,
            seq     INTEGER NOT NULL,
            kind    TEXT NOT NULL,
            n       INTEGER NOT NULL,
            t0      REAL NOT NULL,
            t1      REAL NOT NULL,
            summary BLOB NOT NULL,
            data    BLOB NOT NULL,
            PRIMARY KEY (job_id, key, seq)
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX chunks_time ON chunks (t1)",
        """CREATE TABLE params (
            job_id TEXT NOT NULL,
            kind   TEXT NOT NULL,
            key    TEXT NOT NULL,
            value  TEXT NOT NULL,
            time   REAL NOT NULL,
            PRIMARY KEY (job_id, kind, key)
        ) STRICT, WITHOUT ROWID""",
    ),
    (  # 2 -> 3: a token may expire (NULL: never), as Slurm's and PBS's credentials do
        "ALTER TABLE tokens ADD COLUMN expires REAL",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the database on ``conn`` (autocommit mode) to :data:`SCHEMA_VERSION`.

    Returns the version it found. Raises :class:`StoreError` for a newer version or
    a file that holds tables but no schedd ``meta``.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _version(conn, path)
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: database schema version {found} is newer than this schedd "
                f"supports (version {SCHEMA_VERSION}); upgrade schedd or point it at "
                "another state directory"
            )
        for step in MIGRATIONS[found:]:
            for statement in step:
                conn.execute(statement)
        if found < SCHEMA_VERSION:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (VERSION_KEY, str(SCHEMA_VERSION)),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def _version(conn: sqlite3.Connection, path: Path) -> int:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise StoreError(f"{path}: not a schedd database (tables {sorted(tables)}, no meta)")
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
    if row is None:
        raise StoreError(f"{path}: meta table has no {VERSION_KEY}")
    try:
        return int(row[0])
    except ValueError:
        raise StoreError(f"{path}: {VERSION_KEY} is {row[0]!r}, not an integer") from None
