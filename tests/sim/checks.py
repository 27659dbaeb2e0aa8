"""Invariants checked after every simulated cycle, and a recording observer.

:func:`check_cycle` asserts, as of ``sim.now`` and after the plan was applied:

* **now**: on every node, the running placements' CPUs and memory fit the
  node and no GPU index is held twice (or does not exist);
* **shape**: every running job holds one chunk per entry of its shape, on
  distinct up nodes, each with exactly the requested CPUs, memory and number of
  GPUs (a gang is all-or-nothing by construction: it is running with every
  chunk or pending);
* **bookkeeping**: no job is both pending and running, reservations are for
  pending jobs only and never in the past;
* **future**: the plan's promises are consistent: running jobs (until their
  expected end) plus every reservation never oversubscribe a node at any future
  instant, and no GPU index is promised to two overlapping intervals.

:class:`Recorder` is an ``observer(sim, plan)`` that runs those checks and keeps
what the property tests look at afterwards (first reservation per job,
preemptions, per-cycle digests).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schedd.core.context import Plan, Preemption
from schedd.core.model import Node, NodeState, Placement, QueueDef
from schedd.core.profile import OVERDUE_S
from schedd.core.scheduler import Pipeline
from schedd.core.sim import SimJob, Simulator

__all__ = ["Recorder", "assert_all_finished", "check_cycle", "held", "outcome_digest", "requested", "simulate"]


def requested(shape: tuple[tuple[int, int, int], ...]) -> list[tuple[int, int, int]]:
    return sorted(shape)


def held(placement: Placement) -> list[tuple[int, int, int]]:
    return sorted((cp.ncpus, cp.mem_mb, len(cp.gpus)) for cp in placement)


def _fail(sim: Simulator, what: str) -> None:
    raise AssertionError(f"t={sim.now} cycle={sim.cycles}: {what}")


def check_cycle(sim: Simulator, plan: Plan) -> None:
    """Assert every invariant of the module docstring; raises AssertionError."""
    nodes = {n.name: n for n in sim.nodes}
    used_cpus: dict[str, int] = defaultdict(int)
    used_mem: dict[str, int] = defaultdict(int)
    used_gpus: dict[str, set[int]] = defaultdict(set)
    for job_id, r in sim.running.items():
        if job_id in sim.pending:
            _fail(sim, f"{job_id} is both pending and running")
        shape = r.job.shape
        if len(r.placement) != len(shape):
            _fail(sim, f"{job_id} holds {len(r.placement)} chunks for a shape of {len(shape)}")
        names = [cp.node for cp in r.placement]
        if len(set(names)) != len(names):
            _fail(sim, f"{job_id} has two chunks on one node: {names}")
        if held(r.placement) != requested(shape):
            _fail(sim, f"{job_id} holds {held(r.placement)} but asked for {requested(shape)}")
        for cp in r.placement:
            node = nodes.get(cp.node)
            if node is None:
                _fail(sim, f"{job_id} placed on unknown node {cp.node}")
                return
            if len(set(cp.gpus)) != len(cp.gpus):
                _fail(sim, f"{job_id} lists a GPU twice on {cp.node}: {cp.gpus}")
            valid = {g.index for g in node.gpus}
            if not set(cp.gpus) <= valid:
                _fail(sim, f"{job_id} uses GPUs {cp.gpus} on {cp.node}, which has {sorted(valid)}")
            twice = used_gpus[cp.node] & set(cp.gpus)
            if twice:
                _fail(sim, f"GPU(s) {sorted(twice)} of {cp.node} used twice (again by {job_id})")
            used_gpus[cp.node] |= set(cp.gpus)
            used_cpus[cp.node] += cp.ncpus
            used_mem[cp.node] += cp.mem_mb
    for name, node in nodes.items():
        if used_cpus[name] > node.cpus:
            _fail(sim, f"{name}: {used_cpus[name]} CPUs used of {node.cpus}")
        if used_mem[name] > node.mem_mb:
            _fail(sim, f"{name}: {used_mem[name]} MB used of {node.mem_mb}")
    for job, placement in plan.starts:
        if any(nodes[cp.node].state is not NodeState.UP for cp in placement):
            _fail(sim, f"{job.id} started on a node that is not up")
    _check_future(sim, plan, nodes)


def _check_future(sim: Simulator, plan: Plan, nodes: dict[str, Node]) -> None:
    """Running jobs + reservations never oversubscribe any node at any instant."""
    now = sim.now
    # node -> [(start, end, cpus, mem, gpus, who)]
    iv: dict[str, list[tuple[float, float, int, int, frozenset[int], str]]] = defaultdict(list)
    for job_id, r in sim.running.items():
        end = max(r.end_by, now + OVERDUE_S)
        for cp in r.placement:
            iv[cp.node].append((now, end, cp.ncpus, cp.mem_mb, frozenset(cp.gpus), job_id))
    started = {j.id for j, _ in plan.starts}
    for job_id, res in plan.reservations.items():
        if job_id in started:
            _fail(sim, f"{job_id} both started and reserved in one plan")
        job = sim.pending.get(job_id)
        if job is None:
            _fail(sim, f"reservation for {job_id}, which is not pending")
            return
        if res.start < now:
            _fail(sim, f"{job_id} reserved in the past ({res.start} < {now})")
        if held(res.placement) != requested(job.shape):
            _fail(sim, f"{job_id} reserved {held(res.placement)} for {requested(job.shape)}")
        if len({cp.node for cp in res.placement}) != len(res.placement):
            _fail(sim, f"{job_id} reserved two chunks on one node")
        for cp in res.placement:
            iv[cp.node].append(
                (res.start, res.start + job.walltime_s, cp.ncpus, cp.mem_mb, frozenset(cp.gpus), job_id)
            )
    for name, items in iv.items():
        node = nodes[name]
        for t in sorted({s for s, *_ in items}):
            live = [x for x in items if x[0] <= t < x[1]]
            cpus = sum(x[2] for x in live)
            mem = sum(x[3] for x in live)
            if cpus > node.cpus or mem > node.mem_mb:
                _fail(sim, f"{name} promised {cpus} CPUs / {mem} MB at t={t}: {[x[5] for x in live]}")
            seen: dict[int, str] = {}
            for x in live:
                for g in x[4]:
                    if g in seen:
                        _fail(sim, f"{name} GPU {g} promised to {seen[g]} and {x[5]} at t={t}")
                    seen[g] = x[5]


@dataclass
class Recorder:
    """Observer: checks invariants every cycle, and remembers what happened."""

    check: bool = True
    first_reservation: dict[str, float] = field(default_factory=dict)
    reserved_cycles: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    preemptions: list[tuple[float, Preemption]] = field(default_factory=list)
    #: job id -> (t, victims) per preemption decision for that job
    preemptor_victims: dict[str, list[tuple[float, list[str]]]] = field(default_factory=lambda: defaultdict(list))
    digest: Any = field(default_factory=hashlib.sha256)  # a hashlib sha256 object
    cycles: int = 0
    truncated: int = 0
    extra: list[Callable[[Simulator, Plan], None]] = field(default_factory=list)  # per-test hooks

    def __call__(self, sim: Simulator, plan: Plan) -> None:
        self.cycles += 1
        self.truncated += plan.truncated
        if self.check:
            check_cycle(sim, plan)
        for job_id, res in plan.reservations.items():
            self.first_reservation.setdefault(job_id, res.start)
            self.reserved_cycles[job_id] += 1
        by_job: dict[str, list[str]] = defaultdict(list)
        for p in plan.preemptions:
            self.preemptions.append((sim.now, p))
            by_job[p.for_job].append(p.victim)
        for job_id, victims in by_job.items():
            self.preemptor_victims[job_id].append((sim.now, victims))
        line = [repr(sim.now)]
        line += [f"S{j.id}@{','.join(f'{cp.node}:{cp.gpus}' for cp in p)}" for j, p in plan.starts]
        line += [f"P{p.victim}>{p.for_job}" for p in plan.preemptions]
        line += [
            f"R{k}@{v.start}:{','.join(f'{cp.node}:{cp.gpus}' for cp in v.placement)}"
            for k, v in sorted(plan.reservations.items())
        ]
        line += [f"W{k}:{v.value}" for k, v in sorted(plan.reasons.items())]
        self.digest.update(";".join(line).encode() + b"\n")
        for hook in self.extra:
            hook(sim, plan)


def outcome_digest(sim: Simulator) -> str:
    """A hash of every job's fate: starts, ends, attempts, preemptions."""
    h = hashlib.sha256()
    for job_id in sorted(sim.outcomes):
        o = sim.outcomes[job_id]
        h.update(f"{job_id}:{o.first_start}:{o.start}:{o.end}:{o.attempts}:{o.preempted}:{o.cancelled}\n".encode())
    return h.hexdigest()


def simulate(
    nodes: Sequence[Node],
    pipeline: Pipeline,
    jobs: Iterable[SimJob],
    *,
    queues: Mapping[str, QueueDef] | None = None,
    hooks: Iterable[Callable[[Simulator, Plan], None]] = (),
    check: bool = True,
    until: float | None = None,
) -> tuple[Simulator, Recorder]:
    """Run ``jobs`` to the end (or ``until``) with a :class:`Recorder` attached."""
    rec = Recorder(check=check, extra=list(hooks))
    sim = Simulator(nodes, pipeline, queues=dict(queues or {}), observer=rec)
    sim.run(jobs, until=until)
    return sim, rec


def assert_all_finished(sim: Simulator) -> None:
    """Every job reached the end: nothing pending, nothing running, an end time each."""
    assert not sim.pending, f"still pending at the end: {sorted(sim.pending)[:10]}"
    assert not sim.running, f"still running at the end: {sorted(sim.running)[:10]}"
    never = [k for k, o in sim.outcomes.items() if o.end < 0]
    assert not never, f"never finished: {never[:10]}"
