"""Where a local pool's agents keep their rank directories (schedd.pool.local.runtime_root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schedd.pool.local import AgentSpec, LocalPool, runtime_root

pytestmark = pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm")


def test_one_directory_per_state_dir_on_the_tmpfs(tmp_path: Path) -> None:
    a, b = runtime_root(tmp_path / "a"), runtime_root(tmp_path / "b")
    assert a is not None and b is not None and a != b
    assert a.parent == Path("/dev/shm") and a.name.startswith(f"schedd-{os.getuid()}-")
    assert runtime_root(tmp_path / "a") == a  # the same after a restart: its ranks are found again


def test_the_agents_get_their_own_run_dirs_below_it(tmp_path: Path) -> None:
    pool = LocalPool("unix:///x.sock", tmp_path, [AgentSpec("node01", 2, 1024, 0)], 10.0)
    argv = pool.argv(pool.agents[0])
    root = runtime_root(tmp_path)
    assert root is not None
    assert argv[argv.index("--run-dir") + 1] == str(root / "node01")


def test_a_directory_of_that_name_not_ours_is_left_alone(tmp_path: Path) -> None:
    root = runtime_root(tmp_path)
    assert root is not None
    root.symlink_to(tmp_path)  # made there first, as a link: not ours to write through
    try:
        assert runtime_root(tmp_path) is None
        pool = LocalPool("unix:///x.sock", tmp_path, [AgentSpec("node01", 2, 1024, 0)], 10.0)
        assert "--run-dir" not in pool.argv(pool.agents[0])
    finally:
        root.unlink()
