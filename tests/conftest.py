"""What every test leaves behind is cleaned up here."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_run_dirs_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A daemon's local agents keep their rank directories on /dev/shm
    (``schedd.pool.local.runtime_root``), outside the test's tmp_path: a test that
    stopped its daemon with ranks unacknowledged (a SIGKILL, say) would leave them
    in memory after pytest removed the rest. Each daemon's state directory under
    tmp_path (it holds ``schedd.db``) names its run directory."""
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if tmp is not None:
        _remove_run_dirs(tmp)


@pytest.fixture(scope="session", autouse=True)
def _no_run_dirs_left_by_shared_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for daemons that module- or session-scoped fixtures started (their
    state directories are elsewhere under pytest's base temporary directory)."""
    yield
    _remove_run_dirs(tmp_path_factory.getbasetemp())


def _remove_run_dirs(tmp: Path) -> None:
    from schedd.pool.local import runtime_root

    for db in tmp.glob("**/schedd.db"):
        root = runtime_root(db.parent.resolve())
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
