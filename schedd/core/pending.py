"""The pending queue of a first-come-first-served pipeline, indexed for backfill.

When no policy orders jobs (no ``order_key`` hook), the order is the submission
sequence and never changes, so the owner of state can keep it sorted instead of
the cycle sorting every pending job every time. Backfill then needs, per
request shape, the jobs whose walltime is short enough to fit before a
reservation: each shape's jobs are also kept sorted by walltime.

With it, a cycle's work is proportional to what can start, not to the length
of the queue: a backlog of 10,000 jobs behind a blocked head costs a handful of
bisections. Operations are O(log n) (``sortedcontainers``).
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedKeyList

from schedd.core.model import Job, Shape

__all__ = ["FifoQueue"]


def _order(job: Job) -> int:
    return job.order


def _by_walltime(job: Job) -> tuple[float, int]:
    return (job.walltime_s, job.order)


class FifoQueue:
    """Eligible pending jobs in submission order, grouped by shape.

    The owner adds a job when it becomes eligible and removes it when it starts,
    is held or is cancelled. Only eligible, queued jobs belong here.
    """

    def __init__(self) -> None:
        self.order: SortedKeyList = SortedKeyList(key=_order)
        self._by_order: dict[Shape, SortedKeyList] = {}
        self._by_walltime: dict[Shape, SortedKeyList] = {}

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.order)

    def __contains__(self, job: object) -> bool:
        return job in self.order

    def add(self, job: Job) -> None:
        self.order.add(job)
        shape = job.shape
        if shape not in self._by_order:
            self._by_order[shape] = SortedKeyList(key=_order)
            self._by_walltime[shape] = SortedKeyList(key=_by_walltime)
        self._by_order[shape].add(job)
        self._by_walltime[shape].add(job)

    def remove(self, job: Job) -> None:
        self.order.remove(job)
        shape = job.shape
        self._by_order[shape].remove(job)
        self._by_walltime[shape].remove(job)
        if not self._by_order[shape]:
            del self._by_order[shape], self._by_walltime[shape]

    def shapes(self) -> list[Shape]:
        return list(self._by_order)

    def after(self, shape: Shape, order: int) -> Iterator[Job]:
        """Jobs of ``shape`` submitted after ``order``, in order. O(log n) to start."""
        group = self._by_order[shape]
        jobs: Iterator[Job] = group.islice(group.bisect_key_right(order))
        return jobs

    def short(self, shape: Shape, walltime_s: float, order: int) -> list[Job]:
        """Jobs of ``shape`` after ``order`` with walltime <= ``walltime_s``, in order.

        O(log n + k) for k such jobs (then sorted by sequence).
        """
        group = self._by_walltime[shape]
        end = group.bisect_key_right((walltime_s, float("inf")))
        jobs = [j for j in group.islice(0, end) if j.order > order]
        jobs.sort(key=_order)
        return jobs
