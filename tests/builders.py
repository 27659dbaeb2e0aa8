"""Builders for tests: ``job("7").user("ann").chunks(2, gpus=8).walltime("1h").build()``.

Readable tables of jobs and nodes without repeating every Job field.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from schedd.core.model import Chunk, ChunkPlacement, Gpu, Job, JobState, Node, Running

__all__ = ["gpu_nodes", "job", "running", "walltime"]

_order = itertools.count(1)


def walltime(spec: str | float) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` or seconds."""
    if isinstance(spec, int | float):
        return float(spec)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(spec[:-1]) * units[spec[-1]]


@dataclass
class JobBuilder:
    id: str
    order: int
    _owner: str = "ann"
    _account: str = ""
    _queue: str = "default"
    _qos: str = ""
    _chunks: list[Chunk] = field(default_factory=list)
    _walltime: float = 3600.0
    _submit: float = 0.0
    _priority: int = 0
    _state: JobState = JobState.QUEUED
    _depends: tuple[str, ...] = ()
    _eligible: float | None = None

    def user(self, owner: str, account: str = "") -> JobBuilder:
        self._owner, self._account = owner, account
        return self

    def queue(self, name: str) -> JobBuilder:
        self._queue = name
        return self

    def qos(self, name: str) -> JobBuilder:
        self._qos = name
        return self

    def chunks(self, count: int = 1, *, gpus: int = 0, cpus: int = 1, mem_mb: int = 0) -> JobBuilder:
        self._chunks.append(Chunk(ncpus=cpus, mem_mb=mem_mb, ngpus=gpus, count=count))
        return self

    def walltime(self, spec: str | float) -> JobBuilder:
        self._walltime = walltime(spec)
        return self

    def submitted(self, t: float) -> JobBuilder:
        self._submit = t
        return self

    def priority(self, p: int) -> JobBuilder:
        self._priority = p
        return self

    def held(self) -> JobBuilder:
        self._state = JobState.HELD
        return self

    def after(self, *ids: str) -> JobBuilder:
        self._state, self._depends = JobState.WAITING, ids
        return self

    def begins(self, t: float) -> JobBuilder:
        self._eligible = t
        return self

    def build(self) -> Job:
        return Job(
            id=self.id, order=self.order, owner=self._owner, account=self._account,
            queue=self._queue, qos=self._qos, chunks=tuple(self._chunks or [Chunk()]),
            walltime_s=self._walltime, submit_time=self._submit, priority=self._priority,
            state=self._state, depends_on=self._depends, eligible_time=self._eligible,
        )


def job(id: str | int, order: int | None = None) -> JobBuilder:
    """Start a job; ``order`` defaults to the id when it is numeric (FCFS order = id order)."""
    sid = str(id)
    return JobBuilder(sid, order if order is not None else (int(sid) if sid.isdigit() else next(_order)))


def gpu_nodes(n: int, gpus: int = 8, cpus: int = 64, mem_mb: int = 512 * 1024, prefix: str = "n") -> list[Node]:
    """``n`` identical GPU nodes named n0, n1, …"""
    return [Node(f"{prefix}{i}", cpus, mem_mb, tuple(Gpu(g, f"GPU-{prefix}{i}-{g}", "FAKE-H100", 81920) for g in range(gpus))) for i in range(n)]


def running(j: Job, node: str, gpus: tuple[int, ...], start: float = 0.0, cpus: int | None = None) -> Running:
    """``j`` running on one node with those GPU indices since ``start``."""
    c = j.chunks[0]
    cp = ChunkPlacement(node, c.ncpus if cpus is None else cpus, c.mem_mb, gpus)
    j.state = JobState.RUNNING
    return Running(j, (cp,), start, start + j.walltime_s)
