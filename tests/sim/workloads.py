"""Seeded random workloads and pools for the simulator property tests.

A workload is a list of :class:`~schedd.core.sim.SimJob`, built fresh on every call
(the simulator mutates ``Job.state``, and policies cache per job id), from a
``random.Random(seed)`` only: the same arguments give the same jobs.

The mix, by default: CPU-only jobs, single-node 1/2/4/8-GPU jobs and multi-node
gangs of 8-GPU chunks, spread over several users and accounts; requested
walltimes come from a short list, actual runtimes are at most the walltime (a
few run right up to it, like jobs the agent kills at walltime).

>>> a = workload(7, 20)
>>> b = workload(7, 20)
>>> [(s.job.id, s.job.shape, s.runtime_s) for s in a] == [(s.job.id, s.job.shape, s.runtime_s) for s in b]
True
>>> all(0 < s.runtime_s <= s.job.walltime_s for s in a)
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from schedd.core.model import Chunk, Gpu, Job, Node
from schedd.core.sim import SimJob

__all__ = [
    "GPU_NODE",
    "Mix",
    "USERS",
    "WALLTIMES_S",
    "identical_jobs",
    "pool",
    "workload",
]

#: (cpus, mem_mb, gpus) of a GPU node: 8 GPUs, 64 CPUs, 512 GiB.
GPU_NODE = (64, 512 * 1024, 8)

#: (user, account) pairs submitting work.
USERS: tuple[tuple[str, str], ...] = (
    ("ann", "vision"),
    ("bob", "vision"),
    ("cyd", "nlp"),
    ("dan", "nlp"),
    ("eve", "speech"),
)

WALLTIMES_S = (600.0, 1800.0, 3600.0, 2 * 3600.0, 4 * 3600.0)


@dataclass(frozen=True)
class Mix:
    """Relative weights of the job kinds a workload draws from."""

    cpu: float = 2.0  # CPU-only, one chunk
    gpu1: float = 4.0
    gpu2: float = 2.0
    gpu4: float = 1.5
    gpu8: float = 1.0
    gang: float = 1.0  # 2..max_gang chunks of 8 GPUs
    #: Heterogeneous gangs: 8-GPU chunks plus one small chunk (a launcher, a
    #: parameter server). Off by default: backfill guarantees are tested on
    #: homogeneous gangs only.
    mixed_gang: float = 0.0

    def kinds(self) -> tuple[list[str], list[float]]:
        names = ["cpu", "gpu1", "gpu2", "gpu4", "gpu8", "gang", "mixed_gang"]
        return names, [getattr(self, n) for n in names]


def pool(n_gpu_nodes: int, n_cpu_nodes: int = 0, gpus: int = 8) -> list[Node]:
    """``n_gpu_nodes`` GPU nodes ``g0..`` and ``n_cpu_nodes`` CPU-only nodes ``c0..``."""
    cpus, mem_mb, _ = GPU_NODE
    nodes = [
        Node(f"g{i}", cpus, mem_mb, tuple(Gpu(k, f"GPU-g{i}-{k}", "FAKE", 81920) for k in range(gpus)))
        for i in range(n_gpu_nodes)
    ]
    nodes += [Node(f"c{i}", 32, 128 * 1024) for i in range(n_cpu_nodes)]
    return nodes


def _chunks(kind: str, rng: random.Random, max_gang: int) -> tuple[Chunk, ...]:
    if kind == "cpu":
        n = rng.choice((1, 2, 4, 8, 16))
        return (Chunk(ncpus=n, mem_mb=n * 2048),)
    if kind.startswith("gpu"):
        g = int(kind[3:])
        return (Chunk(ncpus=g * rng.choice((2, 4, 8)), mem_mb=g * 32 * 1024, ngpus=g),)
    count = rng.randint(2, max_gang)
    big = Chunk(ncpus=32, mem_mb=256 * 1024, ngpus=8, count=count)
    if kind == "gang":
        return (big,)
    return (big, Chunk(ncpus=4, mem_mb=8 * 1024, ngpus=rng.choice((0, 1))))


def workload(
    seed: int,
    n_jobs: int,
    *,
    mix: Mix = Mix(),
    users: Sequence[tuple[str, str]] = USERS,
    mean_interarrival_s: float = 120.0,
    max_gang: int = 3,
    queues: Sequence[tuple[str, float]] = (("default", 1.0),),
    walltimes_s: Sequence[float] = WALLTIMES_S,
    full_runtime_p: float = 0.1,
    start_order: int = 1,
    id_prefix: str = "",
) -> list[SimJob]:
    """``n_jobs`` random jobs arriving as a Poisson process from t=0.

    ``queues`` are (name, weight) pairs the jobs are spread over. A fraction
    ``full_runtime_p`` of jobs run for exactly their walltime; the others for a
    uniform 5..100 % of it.
    """
    rng = random.Random(seed)
    names, weights = mix.kinds()
    qnames = [q for q, _ in queues]
    qweights = [w for _, w in queues]
    out: list[SimJob] = []
    t = 0.0
    for i in range(n_jobs):
        kind = rng.choices(names, weights)[0]
        chunks = _chunks(kind, rng, max_gang)
        wall = rng.choice(walltimes_s)
        if rng.random() < full_runtime_p:
            runtime = wall
        else:
            runtime = max(1.0, round(wall * rng.uniform(0.05, 1.0)))
        owner, account = users[rng.randrange(len(users))]
        order = start_order + i
        job = Job(
            id=f"{id_prefix}{order}",
            order=order,
            owner=owner,
            account=account,
            chunks=chunks,
            walltime_s=wall,
            submit_time=t,
            queue=rng.choices(qnames, qweights)[0],
        )
        out.append(SimJob(job, float(runtime)))
        t += round(rng.expovariate(1.0 / mean_interarrival_s), 1)
    return out


def identical_jobs(
    n: int,
    *,
    owner: str,
    account: str = "",
    ngpus: int = 1,
    walltime_s: float = 3600.0,
    runtime_s: float = 1800.0,
    submit_time: float = 0.0,
    start_order: int = 1,
    order_step: int = 1,
    queue: str = "default",
    id_prefix: str = "",
) -> list[SimJob]:
    """``n`` identical single-chunk jobs of one user, all submitted at ``submit_time``."""
    out = []
    for i in range(n):
        order = start_order + i * order_step
        job = Job(
            id=f"{id_prefix}{order}",
            order=order,
            owner=owner,
            account=account,
            chunks=(Chunk(ncpus=4, mem_mb=16 * 1024, ngpus=ngpus),),
            walltime_s=walltime_s,
            submit_time=submit_time,
            queue=queue,
        )
        out.append(SimJob(job, runtime_s))
    return out
