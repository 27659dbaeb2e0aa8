"""nodeagent.gpu: the fake backend, NVML's absence, and NVML readings through a stand-in library."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from nodeagent.gpu import FAKE_MODEL, FakeBackend, NoGpus, NvmlBackend, NvmlUnavailable, open_backend
from schedd.protocol import GpuInfo, GpuSample


def test_fake_backend_says_it_is_fake() -> None:
    fake = open_backend(3, "node-a")
    assert isinstance(fake, FakeBackend) and fake.fake
    assert [g.uuid for g in fake.info()] == ["GPU-fake-node-a-0", "GPU-fake-node-a-1", "GPU-fake-node-a-2"]
    assert {g.model for g in fake.info()} == {FAKE_MODEL} and {g.mem_mb for g in fake.info()} == {81920}
    assert [(s.index, s.util_pct, s.mem_used_mb) for s in fake.sample()] == [(0, 0.0, 0), (1, 0.0, 0), (2, 0.0, 0)]
    with pytest.raises(ValueError):
        FakeBackend(-1, "x")


def test_without_nvml_and_without_fakes_there_are_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails like on a machine without the package
    with pytest.raises(NvmlUnavailable, match="pynvml is not installed"):
        NvmlBackend()
    backend = open_backend(None, "n")
    assert isinstance(backend, NoGpus) and not backend.fake and backend.info() == [] and backend.sample() == []


def test_nvml_on_this_machine_is_either_usable_or_cleanly_unavailable() -> None:
    try:
        backend = NvmlBackend()
    except NvmlUnavailable as exc:  # no driver here (the usual CI case): a clear reason, no traceback
        assert "NVML" in str(exc)
        assert isinstance(open_backend(None, "n"), NoGpus)
        return
    try:
        assert [s.index for s in backend.sample()] == [g.index for g in backend.info()]
    finally:
        backend.close()


class _NVMLError(Exception):
    pass


def _stand_in_nvml(power_supported: bool) -> types.ModuleType:
    """Just enough of pynvml's surface, with two devices, for the backend's conversions."""
    mod = types.ModuleType("pynvml")
    ns: Any = mod
    ns.NVMLError = _NVMLError
    ns.NVML_TEMPERATURE_GPU = 0
    ns.nvmlInit = lambda: None
    ns.nvmlShutdown = lambda: None
    ns.nvmlDeviceGetCount = lambda: 2
    ns.nvmlDeviceGetHandleByIndex = lambda i: i
    ns.nvmlDeviceGetUUID = lambda h: f"GPU-{h}".encode()  # old releases return bytes
    ns.nvmlDeviceGetName = lambda h: "NVIDIA H200"
    ns.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=143771 << 20, used=(h + 1) * (1000 << 20))
    ns.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50 + h)

    def power(h: int) -> int:
        if not power_supported:
            raise _NVMLError("Not Supported")
        return 312_500  # milliwatts

    ns.nvmlDeviceGetPowerUsage = power
    ns.nvmlDeviceGetTemperature = lambda h, sensor: 40 + h
    return mod


@pytest.mark.parametrize("power_supported", [True, False])
def test_nvml_readings_are_converted(monkeypatch: pytest.MonkeyPatch, power_supported: bool) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _stand_in_nvml(power_supported))
    backend = NvmlBackend()
    assert not backend.fake
    assert backend.info() == [GpuInfo(0, "GPU-0", "NVIDIA H200", 143771), GpuInfo(1, "GPU-1", "NVIDIA H200", 143771)]
    watts = 312.5 if power_supported else 0.0
    assert backend.sample() == [
        GpuSample(0, util_pct=50.0, mem_used_mb=1000, power_w=watts, temp_c=40.0),
        GpuSample(1, util_pct=51.0, mem_used_mb=2000, power_w=watts, temp_c=41.0),
    ]
    backend.close()


def test_nvml_init_failure_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    mod: Any = _stand_in_nvml(True)

    def broken() -> None:
        raise _NVMLError("Driver Not Loaded")

    mod.nvmlInit = broken
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        NvmlBackend()
    assert isinstance(open_backend(None, "n"), NoGpus)
