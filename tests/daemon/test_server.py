"""The daemon's start-up and tear-down: whatever started is stopped, in reverse, on any exit."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

import pytest

from schedd.config import Settings
from schedd.daemon.server import Daemon, tls_context
from schedd.errors import ConfigError
from tests.tlscert import self_signed


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "schedd-store-writer"]


def _settings(tmp: Path, listen: str) -> Settings:
    return Settings(listen=listen, state_dir=str(tmp / "state"))


def test_a_failed_start_stops_what_had_started(tmp_path: Path) -> None:
    """A port in use fails the start after the store and loop started: both are stopped."""
    before = len(_writer_threads())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(_settings(tmp_path, f"127.0.0.1:{port}"))
        with pytest.raises(OSError):
            asyncio.run(daemon.run(asyncio.Event()))
    assert len(_writer_threads()) == before
    assert not daemon.socket_path.exists()


def test_a_clean_stop_removes_the_socket_and_the_writer(tmp_path: Path) -> None:
    before = len(_writer_threads())
    daemon = Daemon(_settings(tmp_path, "127.0.0.1:0"))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        while not daemon.socket_path.exists():  # the socket is the last thing made before serving
            await asyncio.sleep(0.01)
        assert len(_writer_threads()) == before + 1
        stop.set()
        await task

    asyncio.run(main())
    assert len(_writer_threads()) == before
    assert not daemon.socket_path.exists()



def test_tls_settings_must_come_in_pairs_and_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_key"):
        Settings(tls_cert="/x.crt").check("schedd.toml")
    with pytest.raises(ConfigError, match="cannot load"):
        tls_context(str(tmp_path / "none.crt"), str(tmp_path / "none.key"))
    cert, key = self_signed(tmp_path)
    assert isinstance(tls_context(str(cert), str(key)), ssl.SSLContext)


def test_start_up_heap_is_frozen_and_young_collections_are_rarer() -> None:
    """What start-up left alive (reloaded jobs included) is out of the cyclic
    collector's reach, garbage collected first, and the young threshold is
    raised (bench/RESULTS.md, "Batch submission after the end-to-end runs")."""
    import gc
    import weakref

    from schedd.daemon.server import GC_YOUNG_THRESHOLD, _tune_gc

    class Garbage:
        me: object = None

    before = gc.get_threshold()
    cycle = Garbage()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle
    try:
        _tune_gc()
        assert gone() is None  # collected, not frozen for good
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
