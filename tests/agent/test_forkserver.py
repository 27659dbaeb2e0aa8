"""The forkserver: supervisors forked from a pre-imported process, and what
happens to them when the agent's end goes away."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from nodeagent import proctree
from nodeagent.forkserver import Forkserver


def _wait_gone(pid: int, create_time: float, timeout: float = 30.0) -> None:
    proc = proctree.process(pid, create_time)
    if proc is not None:
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            pytest.fail(f"process {pid} still alive after {timeout} s")


def test_a_bad_request_is_answered_and_the_server_keeps_serving(tmp_path: Path) -> None:
    fs = Forkserver(sys.executable)
    rfd, wfd = os.pipe()
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        # No spec.json in the directory: the forked supervisor exits 2 at once,
        # and the server answers with its pid and start time all the same.
        pid, created = fs.spawn(str(tmp_path / "nothing-here"), {}, wfd, log)
        assert pid > 0 and created > 0
        _wait_gone(pid, created)
        pid2, _ = fs.spawn(str(tmp_path / "nothing-either"), {}, wfd, log)
        assert pid2 != pid
    finally:
        os.close(rfd)
        os.close(wfd)
        os.close(log)
        fs.close()
    assert "no readable spec.json" in (tmp_path / "log").read_text()


def test_the_server_exits_when_the_agent_closes_its_end() -> None:
    fs = Forkserver(sys.executable)
    fs.start()
    assert fs.proc is not None
    server = psutil.Process(fs.proc)
    assert fs.sock is not None
    fs.sock.close()  # as when the agent dies: the server reads EOF
    fs.sock = None
    deadline = time.monotonic() + 30
    while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "forkserver outlived its agent's socket"
        time.sleep(0.01)  # poll for a condition
    fs.close()
