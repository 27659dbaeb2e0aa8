"""``/metrics``: Prometheus text, read from the state at scrape time.

Gauges (queue depth by state, nodes and GPUs by state, per-GPU utilisation)
are computed from the state when scraped — no second copy to keep in step.
Counters and histograms (jobs started and finished, wait time, cycle time)
are fed from what the state and loop recorded since the last scrape.
prometheus_client does the text format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schedd.api.keys import LOOP, STATE
from schedd.daemon.loop import Loop
from schedd.daemon.state import State

__all__ = ["METRICS", "handle"]

#: The Prometheus registry and the two histograms it observes (``setup``).
METRICS: web.AppKey[tuple[CollectorRegistry, Histogram, Histogram]] = web.AppKey("metrics")

_WAIT_BUCKETS = (0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600, float("inf"))
_CYCLE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf"))


class _StateCollector(Collector):
    def __init__(self, state: State, loop: Loop) -> None:
        self.state, self.loop = state, loop

    def collect(self) -> Iterator[Metric]:
        s = self.state
        jobs = GaugeMetricFamily("schedd_jobs", "Jobs known to schedd by state and queue", labels=["state", "queue"])
        for (st, q), n in sorted(Counter((r.state, r.queue) for r in s.jobs.values() if r.array is None).items()):
            jobs.add_metric([st, q], n)
        yield jobs
        started = CounterMetricFamily("schedd_jobs_started", "Jobs started (attempts)")
        started.add_metric([], s.counters.started)
        yield started
        fin = CounterMetricFamily("schedd_jobs_finished", "Jobs finished by result", labels=["result"])
        for reason, n in sorted(s.counters.finished.items()):
            fin.add_metric([reason], n)
        yield fin
        sub = CounterMetricFamily("schedd_jobs_submitted", "Submissions accepted")
        sub.add_metric([], s.counters.submitted)
        yield sub
        yield from self._nodes()
        yield from self._pool()
        cyc = CounterMetricFamily("schedd_cycles", "Scheduling cycles run")
        cyc.add_metric([], self.loop.cycles)
        yield cyc
        trunc = CounterMetricFamily("schedd_cycles_truncated", "Cycles where a work bound was hit")
        trunc.add_metric([], self.loop.truncated)
        yield trunc

    def _nodes(self) -> Iterator[Metric]:
        s = self.state
        nodes = GaugeMetricFamily("schedd_nodes", "Nodes by state", labels=["state"])
        gpus = GaugeMetricFamily("schedd_gpus", "GPUs by node state and use", labels=["state", "use"])
        util = GaugeMetricFamily("schedd_gpu_utilization_percent", "GPU utilisation (NVML, or 0 for fake GPUs)",
                                 labels=["node", "gpu", "fake"])
        busy = s.busy_gpus()
        by_state: Counter[str] = Counter()
        gpu_counts: Counter[tuple[str, str]] = Counter()
        for e in s.fleet:
            st = e.shown_state.value
            by_state[st] += 1
            for g in e.node.gpus:
                gpu_counts[(st, "allocated" if (e.node.name, g.index) in busy else "free")] += 1
            for smp in e.gpu_samples:
                util.add_metric([e.node.name, str(smp.index), str(e.fake_gpus).lower()], smp.util_pct)
        for st, n in sorted(by_state.items()):
            nodes.add_metric([st], n)
        for (st, use), n in sorted(gpu_counts.items()):
            gpus.add_metric([st, use], n)
        yield nodes
        yield gpus
        yield util


    def _pool(self) -> Iterator[Metric]:
        """A pool driver's view (Kubernetes): wanted size, pods by group, phase and reason, its counters."""
        pool = self.state.fleet.pool
        if pool is None:
            return
        size = GaugeMetricFamily("schedd_pool_size", "Nodes the pool should have, by group", labels=["driver", "group"])
        for group, n in sorted(pool.size.items()):
            size.add_metric([pool.driver, group], n)
        yield size
        pods = GaugeMetricFamily("schedd_pool_pods", "The pool's pods by group, node phase (reserving, ready, down) "
                                 "and Kubernetes' reason", labels=["group", "phase", "reason"])
        counts = Counter((p.group, p.phase, p.code) for p in pool.pods.values())
        for group in pool.size:  # every phase of every group, 0 included: alerts need the series to exist
            for phase in ("reserving", "ready", "down"):
                if not any(g == group and ph == phase for g, ph, _ in counts):
                    counts[(group, phase, "")] += 0
        for (group, phase, code), n in sorted(counts.items()):
            pods.add_metric([group, phase, code], n)
        yield pods
        for name, n in sorted(pool.counters().items()):
            c = CounterMetricFamily(f"schedd_pool_{name}", f"Pool driver: {name.replace('_', ' ')}")
            c.add_metric([], n)
            yield c


def _registry(app: web.Application) -> tuple[CollectorRegistry, Histogram, Histogram]:
    if METRICS not in app:  # made by setup(); the app is frozen for new keys after startup
        raise RuntimeError("metrics registry missing")
    return app[METRICS]


def setup(app: web.Application) -> None:
    """Create the registry (called by make_app before the app is frozen)."""
    reg = CollectorRegistry()
    reg.register(_StateCollector(app[STATE], app[LOOP]))
    wait = Histogram("schedd_job_wait_seconds", "Submit-to-start wait of started jobs", buckets=_WAIT_BUCKETS, registry=reg)
    cycle = Histogram("schedd_cycle_seconds", "Scheduling cycle duration", buckets=_CYCLE_BUCKETS, registry=reg)
    app[METRICS] = (reg, wait, cycle)


async def handle(request: web.Request) -> web.Response:
    reg, wait, cycle = _registry(request.app)
    state, loop = request.app[STATE], request.app[LOOP]
    for w in state.counters.waits:
        wait.observe(w)
    state.counters.waits.clear()
    for d in loop.durations:
        cycle.observe(d)
    loop.durations.clear()
    return web.Response(body=generate_latest(reg), content_type="text/plain", charset="utf-8")
