"""The vocabulary of schedd: jobs, chunks, nodes, GPUs, queues, states and reasons.

Nothing here does I/O, reads a clock or imports another schedd module: the same
objects flow through the daemon, the simulator and the unit tests. Time is always
a float of seconds handed in by the caller (``now``).

A job asks for a list of :class:`Chunk` s. ``select=2:ngpus=8:ncpus=32:mem=200gb``
is one chunk spec with ``count=2``; the job is a *gang*: every chunk starts at the
same time on a distinct node, or none does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Chunk",
    "ChunkPlacement",
    "FinishReason",
    "Gpu",
    "Job",
    "JobState",
    "Node",
    "NodeState",
    "Placement",
    "QosDef",
    "QueueDef",
    "Reason",
    "Running",
    "Shape",
    "shape_of",
]


class JobState(str, enum.Enum):
    """Where a job is in its life. The PBS letter is for display only."""

    HELD = "held"  # a hold (user, operator or system) keeps it from being scheduled
    QUEUED = "queued"  # eligible; waits for resources or priority
    WAITING = "waiting"  # waits for a dependency or its begin time (-a)
    RUNNING = "running"  # placed on nodes; includes the starting sub-state
    EXITING = "exiting"  # killed or ended, agents still cleaning up
    FINISHED = "finished"  # terminal; see FinishReason

    @property
    def letter(self) -> str:
        """The PBS ``job_state`` letter shown by qstat."""
        return _LETTERS[self]


_LETTERS = {
    JobState.HELD: "H",
    JobState.QUEUED: "Q",
    JobState.WAITING: "W",
    JobState.RUNNING: "R",
    JobState.EXITING: "E",
    JobState.FINISHED: "F",
}


class FinishReason(str, enum.Enum):
    """Why a job reached FINISHED."""

    COMPLETED = "completed"  # exit code 0
    FAILED = "failed"  # non-zero exit code or killed by a signal of its own
    CANCELLED = "cancelled"  # qdel, or preemption in cancel mode
    TIMEOUT = "timeout"  # walltime exceeded, killed by the agent
    OUT_OF_MEMORY = "out_of_memory"  # memory limit exceeded
    NODE_FAIL = "node_fail"  # its node went away
    PREEMPTED = "preempted"  # preempted and not requeued


class Reason(str, enum.Enum):
    """Why a pending job is not running, named as Slurm names it where one fits."""

    PRIORITY = "Priority"  # jobs of higher priority are ahead of it
    RESOURCES = "Resources"  # first in line, waiting for resources to free up
    DEPENDENCY = "Dependency"  # a dependency is not satisfied yet
    HELD = "JobHeldUser"  # a user/operator/system hold
    BEGIN_TIME = "BeginTime"  # its eligible time (-a) is in the future
    QUEUE_LIMIT = "QueueLimit"  # a queue's limit (walltime, allowed users) forbids it
    QOS_MAX_JOBS_PER_USER = "QOSMaxJobsPerUserLimit"  # the user runs the max jobs allowed
    QOS_MAX_GPUS_PER_USER = "QOSMaxGRESPerUser"  # the user holds the max GPUs allowed
    NEVER = "Can never run"  # larger than any node could ever give
    PREEMPTING = "Preempting"  # victims were chosen; waits for them to exit


class NodeState(str, enum.Enum):
    """A node's availability for new work."""

    UP = "up"  # takes new jobs
    DRAINING = "draining"  # runs what it has, takes nothing new
    DOWN = "down"  # unreachable or failed
    OFFLINE = "offline"  # taken out by an operator


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a request: ``count`` nodes, each giving these resources."""

    ncpus: int = 1
    mem_mb: int = 0
    ngpus: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.ncpus < 0 or self.mem_mb < 0 or self.ngpus < 0:
            raise ValueError(f"chunk resources must be >= 0: {self}")
        if self.count < 1:
            raise ValueError(f"chunk count must be >= 1: {self}")


#: A request in canonical form, one ``(ncpus, mem_mb, ngpus)`` per node, largest first.
#: Jobs with the same shape are interchangeable for "does it fit", which the cycle
#: uses to answer repeated questions in O(1).
Shape = tuple[tuple[int, int, int], ...]


def shape_of(chunks: tuple[Chunk, ...]) -> Shape:
    """Expand chunk counts into one entry per node, biggest GPU need first.

    >>> shape_of((Chunk(ncpus=4, ngpus=1), Chunk(ncpus=32, ngpus=8, count=2)))
    ((32, 0, 8), (32, 0, 8), (4, 0, 1))
    """
    per_node = [(c.ncpus, c.mem_mb, c.ngpus) for c in chunks for _ in range(c.count)]
    per_node.sort(key=lambda r: (r[2], r[0], r[1]), reverse=True)
    return tuple(per_node)


@dataclass(frozen=True, slots=True)
class Gpu:
    """One physical GPU of a node, as NVML (or the fake backend) reports it."""

    index: int
    uuid: str = ""
    model: str = ""
    mem_mb: int = 0


@dataclass(slots=True)
class Node:
    """A virtual node: what it has in total, and whether it takes work."""

    name: str
    cpus: int
    mem_mb: int
    gpus: tuple[Gpu, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    state: NodeState = NodeState.UP

    @property
    def ngpus(self) -> int:
        return len(self.gpus)


@dataclass(frozen=True, slots=True)
class QueueDef:
    """A queue: a resource tier users submit to, with its limits.

    ``tier`` orders preemption: a job may preempt only jobs of a queue (or QoS)
    named in its ``preempts`` list, never of the same or a higher tier.
    """

    name: str
    priority: int = 0  # feeds the multifactor "queue" factor, relative to the max
    tier: int = 0  # preemption tier; higher preempts lower when configured
    preempts: tuple[str, ...] = ()  # queue/QoS names this queue's jobs may preempt
    default_walltime_s: float = 3600.0
    max_walltime_s: float | None = None
    max_running_per_user: int | None = None
    max_gpus_per_user: int | None = None
    allowed_users: tuple[str, ...] = ()  # empty = everyone


@dataclass(frozen=True, slots=True)
class QosDef:
    """A quality of service: a priority boost and a preemption tier across queues."""

    name: str
    priority: int = 0
    tier: int = 0
    preempts: tuple[str, ...] = ()
    max_running_per_user: int | None = None
    max_gpus_per_user: int | None = None


@dataclass(slots=True)
class Job:
    """A job as the scheduler sees it.

    ``order`` is the global submission sequence number: the final tie-break of every
    ordering, so equal-priority jobs run first-come first-served.
    """

    id: str
    order: int
    owner: str
    chunks: tuple[Chunk, ...]
    walltime_s: float
    submit_time: float
    account: str = ""
    queue: str = "default"
    qos: str = ""
    priority: int = 0  # qsub -p, -1024..1023
    nice: int = 0
    eligible_time: float | None = None  # -a; None = at submit
    array_index: int | None = None
    depends_on: tuple[str, ...] = ()
    attempt: int = 0
    state: JobState = JobState.QUEUED
    reason: Reason | None = None
    #: Per-node request, derived from ``chunks`` once: the cycle reads it per job
    #: per cycle. Changing a job's chunks means a new Job (``dataclasses.replace``).
    shape: Shape = field(init=False, repr=False, compare=False)
    #: Totals over the chunks, derived with ``shape`` (policies read them per job per cycle).
    ngpus: int = field(init=False, repr=False, compare=False)
    ncpus: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.shape = shape_of(self.chunks)
        self.ngpus = sum(c.ngpus * c.count for c in self.chunks)
        self.ncpus = sum(c.ncpus * c.count for c in self.chunks)

    @property
    def nnodes(self) -> int:
        return sum(c.count for c in self.chunks)

    @property
    def eligible_at(self) -> float:
        return self.submit_time if self.eligible_time is None else self.eligible_time


@dataclass(frozen=True, slots=True)
class ChunkPlacement:
    """Where one chunk of a job runs: a node and its concrete GPU indices."""

    node: str
    ncpus: int
    mem_mb: int
    gpus: tuple[int, ...]


#: A job's placement: one entry per node it occupies, in shape order.
Placement = tuple[ChunkPlacement, ...]


@dataclass(slots=True)
class Running:
    """A running job and what it holds; ``end_by`` = start + walltime.

    ``preempted_for`` is set once the job was chosen as a victim: it keeps its
    resources until it really exits (``end_by`` is then the kill deadline).
    """

    job: Job
    placement: Placement
    start_time: float
    end_by: float
    preempted_for: str | None = None
