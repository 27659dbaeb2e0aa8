"""Series in the store and the daemon's book: chunks, downsampling, retention, purge."""

from __future__ import annotations

import random
from array import array
from pathlib import Path

from schedd.series import MetricsSettings, Series
from schedd.series.downsample import from_points
from schedd.store import Store
from schedd.store.series import CHUNK, Chunk


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "s.db")
    store.start()
    return store


def _commit(series: Series, store: Store) -> None:
    series._committed(series.flush(force=True))
    store.flush_sync()


def test_downsampling_keeps_first_last_and_every_extreme() -> None:
    rng = random.Random(7)
    n = 100_000
    values = [rng.gauss(0, 1) for _ in range(n)]
    values[12_345], values[67_890] = 50.0, -50.0  # one spike, one dip
    c = Chunk(array("d", range(n)), array("q", range(n)), array("d", values))
    for max_points in (4, 10, 1000):
        out = from_points(c, max_points)
        assert len(out) <= max_points
        assert out[0] == (0.0, 0, values[0]) and out[-1] == (n - 1.0, n - 1, values[-1])
        got = [v for _, _, v in out]
        assert 50.0 in got and -50.0 in got
        assert [t for t, _, _ in out] == sorted(t for t, _, _ in out)


def test_read_back_across_memory_and_store_then_after_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    s = Series(store, MetricsSettings())
    pts = [(float(i), i, float(i % 100)) for i in range(5 * CHUNK + 17)]
    s.add("7", {"loss": pts[:CHUNK + 3]})
    assert [p[1] for p in s.read("7", "loss", None, 10_000)] == list(range(CHUNK + 3))  # from memory only
    _commit(s, store)
    s.add("7", {"loss": pts[CHUNK + 3:]})  # the open chunk continues; nothing flushed yet
    assert [p[1] for p in s.read("7", "loss", None, 10_000)] == list(range(len(pts)))
    _commit(s, store)
    again = Series(store, MetricsSettings())  # a restarted daemon
    assert again.keys("7")["loss"][1:] == (len(pts), pts[-1])
    assert [p[1] for p in again.read("7", "loss", 100.0, 10_000)] == list(range(100, len(pts)))
    again.add("7", {"loss": [(1e6, 99_999, 1.0)]})  # goes on in the stored open chunk
    assert again.read("7", "loss", None, 10_000)[-2:] == [pts[-1], (1e6, 99_999, 1.0)]
    store.close()


def test_cap_counts_custom_points_only(tmp_path: Path) -> None:
    s = Series(None, MetricsSettings(max_points_per_job=10))
    assert s.add("1", {"a": [(0.0, -1, 1.0)] * 25}) == 10 and s.is_capped("1")
    assert s.add("1", {"gpu0.util": [(0.0, -1, 1.0)] * 5}, samples=True) == 5
    assert s.keys("1")["gpu0.util"][0] == "gpu"


def test_retention_and_purge_delete_series(tmp_path: Path) -> None:
    store = _store(tmp_path)
    s = Series(store, MetricsSettings())
    s.add("old", {"x": [(100.0, 0, 1.0)]})
    s.add("new", {"x": [(10_000.0, 0, 1.0)]})
    s.add("gone", {"x": [(10_000.0, 0, 1.0)]})
    _commit(s, store)
    store.expire_series(5_000.0)
    store.delete_jobs(["gone"])
    store.flush_sync()
    fresh = Series(store, MetricsSettings())
    assert fresh.keys("old") == {} and fresh.keys("gone") == {} and "x" in fresh.keys("new")
    store.close()


def test_million_points_read_from_summaries(tmp_path: Path) -> None:
    store = _store(tmp_path)
    s = Series(store, MetricsSettings(max_points_per_job=2_000_000))
    n = 1_000_000
    s.add("big", {"loss": [(float(i), i, float(i % 977)) for i in range(n)]})
    _commit(s, store)
    out = Series(store, MetricsSettings(max_points_per_job=2_000_000)).read("big", "loss", None, 1000)
    assert len(out) <= 1000 and out[0][1] == 0 and out[-1][1] == n - 1
    assert min(v for _, _, v in out) == 0.0 and max(v for _, _, v in out) == 976.0
    store.close()
