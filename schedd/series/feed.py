"""What agents send, turned into series points: a heartbeat's samples, a Points batch.

Node samples of a job rank (every heartbeat) become the series ``cpu.pct``,
``cpu.rss_mb`` and, per GPU of the rank, ``gpuN.util``, ``gpuN.mem_mb``,
``gpuN.power_w`` — prefixed ``rankR.`` for ranks other than 0, whose GPU
indices are another node's. A job's own points are named the same way: rank
0's keep the names the job wrote (``loss``), rank R's become ``rankR.loss``.
A batch is accepted only from the node that runs the rank it names, for the
job's current attempt (running or just ended: the node reads the file's end
after the exit): a late batch of a requeued attempt, or a stranger's, is
dropped.
"""

from __future__ import annotations

from schedd.daemon.state import State
from schedd.protocol import Heartbeat, Points
from schedd.series.book import Series

__all__ = ["take_points", "take_samples"]


def take_samples(series: Series, state: State, msg: Heartbeat) -> None:
    """A heartbeat's per-job samples into the jobs' series. O(ranks x GPUs)."""
    if not msg.jobs:
        return
    gpus = {g.index: g for g in msg.gpus}
    t = msg.time
    for s in msg.jobs:
        act = state.active.get(s.job_id)
        if act is None or s.rank >= len(act.running.placement):
            continue
        pre = "" if s.rank == 0 else f"rank{s.rank}."
        pts: dict[str, list[tuple[float, int, float]]] = {
            f"{pre}cpu.pct": [(t, -1, s.cpu_pct)], f"{pre}cpu.rss_mb": [(t, -1, float(s.rss_mb))],
        }
        for i in act.running.placement[s.rank].gpus:
            g = gpus.get(i)
            if g is not None:
                pts[f"{pre}gpu{i}.util"] = [(t, -1, g.util_pct)]
                pts[f"{pre}gpu{i}.mem_mb"] = [(t, -1, float(g.mem_used_mb))]
                pts[f"{pre}gpu{i}.power_w"] = [(t, -1, g.power_w)]
        series.add(s.job_id, pts, samples=True)


def take_points(series: Series, state: State, node: str, msg: Points) -> int:
    """A Points batch from ``node``; returns the points taken (0 for a stale batch)."""
    act = state.active.get(msg.job_id)
    rec = state.jobs.get(msg.job_id)
    if rec is None or rec.attempt != msg.attempt:
        return 0
    rank = msg.rank
    if act is not None and act.running.placement:
        placed = act.running.placement[rank].node if 0 <= rank < len(act.running.placement) else ""
    else:  # ended: the node reads what the job wrote last after its exit
        placed = rec.exec_nodes[rank].node if 0 <= rank < len(rec.exec_nodes) else ""
    if placed != node:
        return 0
    if msg.malformed:
        series.malformed(msg.job_id, msg.malformed)
    pts = msg.series if rank == 0 else {f"rank{rank}.{k}": v for k, v in msg.series.items()}
    taken = series.add(msg.job_id, pts)
    if msg.capped:
        series.capped(msg.job_id, f"node {node}")
    return taken
