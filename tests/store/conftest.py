from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schedd.store import Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "schedd.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    """A started store; closing it at teardown also fails the test on an unreported write error."""
    s = Store(db)
    s.start()
    yield s
    s.close()
