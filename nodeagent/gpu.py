"""GPU discovery and sampling: NVML through ``pynvml``, or a fake for GPU-less machines.

Three backends behind one small interface (``info()``, ``sample()``, ``fake``):

* :class:`NvmlBackend` — the real thing: index, UUID, model and memory of each
  device, and per heartbeat its utilisation, memory used, power and temperature.
  A reading a device does not support (power on some boards) reads as 0 rather
  than failing the whole heartbeat.
* :class:`FakeBackend` — N GPUs that do not exist, for the local pool and the
  tests on machines without NVIDIA hardware. They say so everywhere: the UUID
  is ``GPU-fake-<node>-<i>``, the model ``"fake (no NVML)"``, Register carries
  ``fake_gpus=True`` and every sample reads 0.
* :class:`NoGpus` — NVML is not there and no fake count was asked for: a CPU node.

Indices are NVML's (PCI bus order); the job environment sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA agrees with them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from schedd.protocol import GpuInfo, GpuSample

__all__ = ["FAKE_MODEL", "FakeBackend", "GpuBackend", "NoGpus", "NvmlBackend", "NvmlUnavailable", "open_backend"]

log = logging.getLogger("nodeagent.gpu")

FAKE_MODEL = "fake (no NVML)"
FAKE_MEM_MB = 81920
_MB = 1 << 20


class GpuBackend(Protocol):
    """What the agent needs from a GPU backend."""

    @property
    def fake(self) -> bool: ...

    def info(self) -> list[GpuInfo]: ...

    def sample(self) -> list[GpuSample]: ...

    def close(self) -> None: ...


class NvmlUnavailable(RuntimeError):
    """NVML could not be loaded or initialised (no driver, no GPU, no library)."""


def _text(value: str | bytes) -> str:
    """pynvml returns bytes in old releases and str in new ones."""
    return value.decode() if isinstance(value, bytes) else value


class NvmlBackend:
    """Real GPUs through NVML. Construction raises :class:`NvmlUnavailable` cleanly."""

    fake = False

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # nvidia-ml-py is a dependency, but be plain about it
            raise NvmlUnavailable(f"pynvml is not installed: {exc}") from None
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML init failed: {exc}") from None
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._info = [self._describe(i, h) for i, h in enumerate(self._handles)]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"NVML device query failed: {exc}") from None

    def _describe(self, index: int, handle: Any) -> GpuInfo:
        nvml = self._nvml
        return GpuInfo(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            model=_text(nvml.nvmlDeviceGetName(handle)),
            mem_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // _MB,
        )

    def info(self) -> list[GpuInfo]:
        return list(self._info)

    def sample(self) -> list[GpuSample]:
        """One reading per device; O(devices) NVML calls (a few microseconds each)."""
        nvml = self._nvml
        out = []
        for index, handle in enumerate(self._handles):
            util = self._read(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            used = self._read(lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).used // _MB))
            power = self._read(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # mW -> W
            temp = self._read(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
            out.append(GpuSample(index=index, util_pct=util, mem_used_mb=int(used), power_w=power, temp_c=temp))
        return out

    def _read(self, query: Callable[[], float]) -> float:
        try:
            return float(query())
        except self._nvml.NVMLError:  # not supported on this board, or the GPU fell off the bus
            return 0.0

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


class FakeBackend:
    """``n`` GPUs that do not exist, named as fakes; every sample reads 0.

    >>> fake = FakeBackend(2, "n1")
    >>> [(g.index, g.uuid, g.model, g.mem_mb) for g in fake.info()]
    [(0, 'GPU-fake-n1-0', 'fake (no NVML)', 81920), (1, 'GPU-fake-n1-1', 'fake (no NVML)', 81920)]
    >>> fake.sample()[1]
    GpuSample(index=1, util_pct=0.0, mem_used_mb=0, power_w=0.0, temp_c=0.0)
    """

    fake = True

    def __init__(self, n: int, node: str) -> None:
        if n < 0:
            raise ValueError(f"fake GPU count must be >= 0, got {n}")
        self._info = [GpuInfo(index=i, uuid=f"GPU-fake-{node}-{i}", model=FAKE_MODEL, mem_mb=FAKE_MEM_MB) for i in range(n)]

    def info(self) -> list[GpuInfo]:
        return list(self._info)

    def sample(self) -> list[GpuSample]:
        return [GpuSample(index=g.index, util_pct=0.0, mem_used_mb=0) for g in self._info]

    def close(self) -> None:
        pass


class NoGpus:
    """A node without GPUs (NVML absent and no fake count asked for)."""

    fake = False

    def info(self) -> list[GpuInfo]:
        return []

    def sample(self) -> list[GpuSample]:
        return []

    def close(self) -> None:
        pass


def open_backend(fake_gpus: int | None, node_name: str) -> GpuBackend:
    """Fake GPUs when a count is given (even 0); else NVML; else no GPUs, said in one log line."""
    if fake_gpus is not None:
        log.info("using %d fake GPUs (no NVML)", fake_gpus)
        return FakeBackend(fake_gpus, node_name)
    try:
        backend = NvmlBackend()
    except NvmlUnavailable as exc:
        log.info("no GPUs: %s", exc)
        return NoGpus()
    log.info("NVML: %d GPUs", len(backend.info()))
    return backend
