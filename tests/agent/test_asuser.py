"""Reading a job's output as its owner (nodeagent.asuser): the child interpreter
drops to the owner's ids before it opens anything, also where the agent's
Python is out of the owner's reach (a pyenv under a mode-700 /root)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.asuser import append_stderr, tail
from tests.security.conftest import User, _ensure_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user and reads as them")


@pytest.fixture
def owner() -> Iterator[tuple[User, Path]]:
    with tempfile.TemporaryDirectory(prefix="asuser-") as top:
        homes = Path(top)
        homes.chmod(0o755)
        user = _ensure_user("sdalice", homes)
        yield user, user.home


def test_the_owner_reads_their_file_and_not_roots(owner: tuple[User, Path]) -> None:
    user, home = owner
    out = home / "job.o"
    out.write_text("one\ntwo\nthree\n")
    os.chown(out, user.uid, user.gid)
    secret = home / "root-only"
    secret.write_text("not for alice\n")
    secret.chmod(0o600)
    assert asyncio.run(tail(user.name, True, str(out), "", 2, 1 << 20)) == {"lines": ["two", "three"], "truncated": True}
    refused = asyncio.run(tail(user.name, True, str(secret), "", 5, 1 << 20))
    assert "Permission denied" in str(refused.get("error")), refused
    assert asyncio.run(tail("root", True, str(secret), "", 5, 1 << 20))["lines"] == ["not for alice"]


def test_an_appended_line_is_the_owners(owner: tuple[User, Path]) -> None:
    user, home = owner
    asyncio.run(append_stderr(user.name, True, str(home), "job.e", "killed: walltime\n"))
    made = home / "job.e"
    assert made.read_text() == "killed: walltime\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (user.uid, user.gid)
