"""Accounting: what a job's run costs, charged to the job's record and to the
usage ledger that fair share reads (:class:`schedd.core.usage.UsageLedger`).

A part of :class:`schedd.daemon.state.State` (functions bound as its methods;
see ``state.py``). Charged once, when every rank has exited; taken back when
a requeued attempt is resumed, to be charged in full when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schedd.daemon.active import Active
from schedd.daemon.records import JobRecord

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["account", "charge"]


def charge(state: State, rec: JobRecord, act: Active, start: float, end: float, sign: float) -> None:
    """Charge the job and its fair share for an attempt's run (``sign`` -1 takes it back)."""
    elapsed = max(0.0, end - start)
    rec.used.cpu_s += sign * sum(e.cpu_s for e in act.exits if e is not None)
    rec.used.gpu_s += sign * rec.ngpus * elapsed
    state.ledger.charge_run(act.running.job, sign * elapsed, end)


def account(state: State, rec: JobRecord, act: Active, end: float) -> None:
    """Every rank has exited at ``end``: charge the run, and keep the peaks
    its ranks reported (memory) or that were sampled while it ran (GPU use)."""
    state._charge(rec, act, rec.start_time or end, end, 1.0)
    rec.used.peak_rss_mb = max([rec.used.peak_rss_mb, *(e.peak_rss_mb for e in act.exits if e is not None)])
    if act.gpu_util_n:
        rec.used.gpu_util_pct = act.gpu_util_sum / act.gpu_util_n
