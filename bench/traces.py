"""Readers for real workload traces: one :class:`Trace` of :class:`TraceJob` s per file.

Pure parsing, stdlib only, no silent repairs: records a simulator cannot replay (run time
<= 0 or no resources) are dropped and counted in ``Trace.skipped``; malformed lines raise
``ValueError("PATH:LINENO: what")``. Plain and gzip files both work (told by magic bytes).

Formats, and what each reader does with missing fields
------------------------------------------------------
* **SWF** (:func:`read_swf`, ``*.swf[.gz]``), the Parallel Workloads Archive's 18 fields,
  ``-1`` = unknown. Size is field 5, or field 8 when field 5 is ``-1``; field 9 ``-1`` gives
  ``requested_s=None``; memory is field 10 (requested KB/processor), else field 7 (used),
  times the size, else 0; user/group ``-1`` give ``""``, others ``"u12"``/``"g3"``; queue
  is the number as text (``""`` for ``-1``). Submit times are kept (a cleaned log need not
  start at 0). ``; Key: value`` lines fill ``Trace.header``; repeated keys (``Queue``,
  ``Note``) and indented continuation lines are joined with newlines.
* **Philly** (:func:`read_philly_csv`, ``philly*.csv[.gz]``), the Pollux pre-processing of
  the Microsoft Philly trace (``timestamp,duration,num_gpus,gpu_time,cluster``). The rows
  are unsorted; they are sorted and submit becomes seconds since the first submit. There
  is no estimate, CPU, memory, user or status: ``requested_s=None``, ``procs=0``,
  ``mem_mb=0``, ``status=1``, and the virtual cluster (VC) is user and group.
* **Gavel** (:func:`read_gavel`, ``*.trace[.gz]``), the older 7-field tab-separated per-VC
  format (job type, command, steps flag, needs-data flag, total steps, arrival time, scale
  factor): ``scale_factor`` is the GPU count, ``arrival_time`` the submit, the VC id (the
  file name) user and group. **Durations are a synthetic model, not measured:** the file
  holds training steps, and ``runtime_s = total_steps / steps_per_second`` with one nominal
  rate per job family (:data:`GAVEL_STEPS_PER_SECOND`). The job types are Gavel's own
  substitutions for the real Philly jobs; arrivals and GPU counts are real.
* **Alibaba OpenB** (:func:`read_alibaba`, ``openb_pod_list*.csv[.gz]``): runtime is
  ``deletion_time - scheduled_time``; pods never scheduled or with runtime <= 0 are
  skipped. ``gpus = num_gpu`` (a GPU-sharing pod's ``gpu_milli`` share is dropped),
  ``procs = ceil(cpu_milli / 1000)``, ``mem_mb = memory_mib``, submit is ``creation_time``
  rebased to the first kept pod, ``qos`` is user and group, ``status`` is 0 for a ``Failed``
  ``pod_phase``, else 1 (deletion is not completion: many pods are long-running services).

Citations (see ``shared/traces/README.md``)
-------------------------------------------
* SWF: the Parallel Workloads Archive, http://www.cs.huji.ac.il/labs/parallel/workload/ ;
  cite D. G. Feitelson, D. Tsafrir, D. Krakov, "Experience with using the Parallel Workloads
  Archive", JPDC 74(10), 2014, and credit each log's ``Acknowledge:`` person: Lars Malinowsky
  (KTH SP2), Curt Canada (LANL CM-5), Bill Nitzberg (NASA iPSC/860), Motoyoshi Kurokawa
  (RIKEN RICC) and Uri Lublin (lublin_256: the model of U. Lublin, D. G. Feitelson, JPDC
  63(11), 2003, in the instance of D. Zhang et al., "RLScheduler", SC20).
* Philly: M. Jeon et al., "Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training
  Workloads", USENIX ATC 2019 (CC-BY-4.0), pre-processed for A. Qiao et al., "Pollux", OSDI 2021.
* Gavel: D. Narayanan et al., "Heterogeneity-Aware Cluster Scheduling Policies for Deep
  Learning Workloads", OSDI 2020. Alibaba OpenB: Q. Weng et al., "Beware of Fragmentation:
  Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023.
"""

from __future__ import annotations

import csv
import functools
import gc
import gzip
import math
import operator
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

__all__ = ["GAVEL_STEPS_PER_SECOND", "Trace", "TraceJob", "load",
           "read_alibaba", "read_gavel", "read_philly_csv", "read_swf"]

PathLike = str | os.PathLike[str]
_P = ParamSpec("_P")
_R = TypeVar("_R")
_Rec = TypeVar("_Rec")


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job record; units are seconds, processors, GPUs and MiB."""

    id: int  # 1-based record id from the trace, or the row number
    submit_s: float  # seconds from trace start (CSV: 0 = first submit; SWF: field 2 as is)
    runtime_s: float  # actual run time
    requested_s: float | None  # user estimate / limit; None when the trace has none
    procs: int  # processors / CPU cores; 0 when a GPU trace does not say
    gpus: int  # GPUs (0 for SWF)
    mem_mb: int  # memory of the whole job in MiB, 0 if unknown
    user: str  # "u12" (SWF), the VC (Philly, Gavel) or the QoS class (Alibaba)
    group: str  # "g3" (SWF), as ``user`` otherwise
    queue: str  # queue number as text, "" if unknown
    status: int  # SWF status (1 completed, 0 failed, 5 cancelled); others 1 (Alibaba: 0 failed)


@dataclass(frozen=True, slots=True)
class Trace:
    """A whole trace: jobs sorted by ``(submit_s, id)`` plus machine facts."""

    name: str  # file name without the format suffix, e.g. "KTH-SP2-1996-2.1-cln"
    jobs: list[TraceJob]  # sorted by (submit_s, id)
    max_procs: int  # SWF MaxProcs header, else MaxNodes; 0 if unknown
    max_nodes: int  # SWF MaxNodes header; 0 if unknown
    header: dict[str, str]  # SWF "; Key: value" lines
    skipped: int  # records dropped as not replayable (runtime <= 0 or size <= 0)


#: Nominal training steps per second per Gavel job family, used to turn step
#: counts into durations. Rounded isolated ("null") P100 throughputs from Gavel's
#: ``scheduler/oracle_throughputs.json`` at the batch size in the comment. One
#: rate per family on purpose: the result is a synthetic duration model.
GAVEL_STEPS_PER_SECOND: dict[str, float] = {
    "ResNet-50": 4.44,  # batch size 32 (ImageNet)
    "ResNet-18": 46.0,  # batch size 16 (CIFAR-10)
    "Transformer": 5.07,  # batch size 64
    "LM": 42.8,  # batch size 40
    "Recommendation": 0.256,  # batch size 4096
    "CycleGAN": 2.45,
    "A3C": 4.75,
}

_ACCEPTED = ("*.swf[.gz] (SWF), philly*.csv[.gz] (Philly/Pollux), *.trace[.gz] (Gavel), "
             "openb_pod_list*.csv[.gz] (Alibaba OpenB)")
_EPOCH = datetime(1970, 1, 1)
_SORT_KEY = operator.attrgetter("submit_s", "id")


def _gc_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a reader with the cyclic GC off: a big trace allocates ~10^6 acyclic objects, and
    the collections they trigger would cost as much as the parsing itself (RICC: ~2x)."""
    @functools.wraps(fn)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return paused


def _err(path: PathLike, lineno: int, what: str) -> ValueError:
    """The one error shape of this module, so callers can point at the exact line."""
    return ValueError(f"{os.fspath(path)}:{lineno}: {what}")


def _read_text(path: PathLike) -> str:
    """Whole file as text, gzip sniffed. One read is the fastest way through gzip and turns
    a broken archive into one ``ValueError`` naming the file."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{os.fspath(path)}: cannot read ({exc})") from None


def _stem(path: PathLike) -> str:
    """File name without ``.gz`` and the format suffix (dots inside are kept)."""
    name = Path(path).name.removesuffix(".gz")
    for suffix in (".swf", ".csv", ".trace"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _finish(name: str, jobs: list[TraceJob], skipped: int, header: dict[str, str] | None = None,
            max_procs: int = 0, max_nodes: int = 0) -> Trace:
    """Sort by ``(submit_s, id)``: replay order must not depend on file order."""
    jobs.sort(key=_SORT_KEY)
    return Trace(name, jobs, max_procs, max_nodes, header or {}, skipped)


def _rebase(jobs: list[TraceJob]) -> list[TraceJob]:
    """Shift submits so the first job arrives at 0 (wall-clock CSV timestamps)."""
    if not jobs:
        return jobs
    t0 = min(j.submit_s for j in jobs)
    return [TraceJob(j.id, j.submit_s - t0, j.runtime_s, j.requested_s, j.procs, j.gpus, j.mem_mb,
                     j.user, j.group, j.queue, j.status) for j in jobs]


# --------------------------------------------------------------------------- SWF


class _Labels(dict[str, str]):
    """Raw SWF id -> label (``"12"`` -> ``"u12"``, ``"-1"`` -> ``""``), made once per id: ids
    repeat across 10^5 records, and the cache saves an ``int()`` and a format each."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, raw: str) -> str:
        n = int(raw)
        label = f"{self.prefix}{n}" if n >= 0 else ""
        self[raw] = label
        return label


def _swf_job(f: list[str], users: _Labels, groups: _Labels, queues: _Labels) -> TraceJob | None:
    """One 18-field record, or None when it cannot be replayed (runtime/size <= 0)."""
    runtime = float(f[3])
    procs = int(f[4])
    if procs == -1:
        procs = int(f[7])
    if runtime <= 0 or procs <= 0:
        return None
    req = float(f[8])
    mem_kb = int(f[9])
    if mem_kb <= 0:
        mem_kb = int(f[6])
    return TraceJob(
        int(f[0]), float(f[1]), runtime, None if req < 0 else req, procs, 0,
        mem_kb * procs // 1024 if mem_kb > 0 else 0,
        users[f[11]], groups[f[12]], queues[f[14]], int(f[10]),
    )


def _swf_header(line: str, header: dict[str, str], last: list[str]) -> None:
    """Record a ``; Key: value`` line, or append a continuation to the last key."""
    body = line.lstrip()[1:]
    text = body.strip()
    key, sep, value = text.partition(":")
    indent = len(body) - len(body.lstrip())
    if sep and indent <= 1 and key.isalnum():
        header[key] = f"{header[key]}\n{value.strip()}" if key in header else value.strip()
        last[:] = [key]
    elif text and last:
        header[last[0]] += "\n" + text


def _header_int(header: dict[str, str], key: str) -> int:
    """Header number, 0 when absent or not an integer (headers are advisory)."""
    words = header.get(key, "").split()
    return int(words[0]) if words and words[0].isdigit() else 0


@_gc_paused
def read_swf(path: PathLike) -> Trace:
    """Read a Standard Workload Format log (see the module docstring)."""
    header: dict[str, str] = {}
    last: list[str] = []
    jobs: list[TraceJob] = []
    skipped = 0
    labels = _Labels("u"), _Labels("g"), _Labels("")
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        f = line.split()
        if not f:
            continue
        if f[0][0] == ";":
            _swf_header(line, header, last)
            continue
        if len(f) != 18:
            raise _err(path, lineno, f"expected 18 SWF fields, got {len(f)}")
        try:
            job = _swf_job(f, *labels)
        except ValueError as exc:
            raise _err(path, lineno, f"non-numeric SWF field ({exc})") from None
        if job is None:
            skipped += 1
        else:
            jobs.append(job)
    max_nodes = _header_int(header, "MaxNodes")
    max_procs = _header_int(header, "MaxProcs") or max_nodes
    return _finish(_stem(path), jobs, skipped, header, max_procs, max_nodes)


# --------------------------------------------------------------------------- GPU traces

def _collect(path: PathLike, name: str, records: Iterator[tuple[int, _Rec]],
             make: Callable[[_Rec, int], TraceJob | None], rebase: bool) -> Trace:
    """Shared loop of the GPU readers: convert, skip-and-count, rebase, sort. ``make`` gets a
    record and its 1-based row number (the job id); its ``ValueError`` gains the line here."""
    jobs: list[TraceJob] = []
    skipped = 0
    for n, (lineno, record) in enumerate(records, 1):
        try:
            job = make(record, n)
        except ValueError as exc:
            raise _err(path, lineno, str(exc)) from None
        if job is None:
            skipped += 1
        else:
            jobs.append(job)
    return _finish(name, _rebase(jobs) if rebase else jobs, skipped)


def _csv_rows(path: PathLike, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(lineno, row)`` after checking that the header names every required column."""
    reader = csv.reader(_read_text(path).split("\n"))
    names = next(reader, None)
    if not names:
        raise _err(path, 1, f"empty file, expected a header with {', '.join(required)}")
    missing = [c for c in required if c not in names]
    if missing:
        raise _err(path, 1, f"missing column(s) {', '.join(missing)}")
    for row in reader:
        if row and len(row) != len(names):
            raise _err(path, reader.line_num, f"expected {len(names)} columns, got {len(row)}")
        if row:
            yield reader.line_num, dict(zip(names, row))


def _tsv_rows(path: PathLike, width: int) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(lineno, fields)`` of a headerless tab-separated file, ``width`` fields a line."""
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        f = line.rstrip("\r").split("\t")
        if len(f) != width:
            raise _err(path, lineno, f"expected {width} tab-separated fields, got {len(f)}")
        yield lineno, f


def _count(text: str, what: str) -> int:
    """A non-negative count; a negative one is corrupt data, not a job to skip."""
    value = int(text)
    if value < 0:
        raise ValueError(f"negative {what}: {value}")
    return value


def _gpu_job(job_id: int, submit: float, runtime: float, procs: int, gpus: int, mem_mb: int,
             who: str, status: int = 1) -> TraceJob | None:
    """Build a GPU-trace job (``who`` is user and group), or None when it has no
    runtime or asks for neither GPUs nor CPUs."""
    if not (math.isfinite(submit) and math.isfinite(runtime)):
        raise ValueError(f"non-finite time (submit {submit}, runtime {runtime})")
    if runtime <= 0 or gpus + procs <= 0:
        return None
    return TraceJob(job_id, submit, runtime, None, procs, gpus, mem_mb, who, who, "", status)


def _philly_row(row: dict[str, str], n: int) -> TraceJob | None:
    """Naive wall-clock timestamps: only differences matter, so no time zone is needed."""
    try:
        submit = (datetime.fromisoformat(row["timestamp"]) - _EPOCH).total_seconds()
    except ValueError:
        raise ValueError(f"bad timestamp {row['timestamp']!r}") from None
    gpus = _count(row["num_gpus"], "num_gpus")
    return _gpu_job(n, submit, float(row["duration"]), 0, gpus, 0, row["cluster"])


@_gc_paused
def read_philly_csv(path: PathLike) -> Trace:
    """Read the Pollux Philly job list; ids are 1-based data-row numbers in the file."""
    rows = _csv_rows(path, ("timestamp", "duration", "num_gpus", "cluster"))
    return _collect(path, _stem(path), rows, _philly_row, rebase=True)


def _alibaba_row(row: dict[str, str], n: int) -> TraceJob | None:
    """Runtime is scheduled -> deleted; queueing before scheduling is not service."""
    scheduled, deleted = row["scheduled_time"].strip(), row["deletion_time"].strip()
    if not scheduled or not deleted:
        return None  # never scheduled (Pending) or never ended: no runtime to replay
    return _gpu_job(
        n, float(row["creation_time"]), float(deleted) - float(scheduled),
        math.ceil(_count(row["cpu_milli"], "cpu_milli") / 1000),
        _count(row["num_gpu"], "num_gpu"), _count(row["memory_mib"], "memory_mib"),
        row["qos"], 0 if row["pod_phase"] == "Failed" else 1,
    )


@_gc_paused
def read_alibaba(path: PathLike) -> Trace:
    """Read an Alibaba OpenB ``openb_pod_list_*.csv``; ids are 1-based row numbers."""
    rows = _csv_rows(path, ("cpu_milli", "memory_mib", "num_gpu", "qos", "pod_phase",
                            "creation_time", "deletion_time", "scheduled_time"))
    return _collect(path, _stem(path), rows, _alibaba_row, rebase=True)


def _gavel_job(f: list[str], n: int, vc: str) -> TraceJob | None:
    """Runtime from steps and the family's nominal rate (family: the type before `` (``)."""
    rate = GAVEL_STEPS_PER_SECOND.get(f[0].split(" (", 1)[0].strip())
    if rate is None:
        raise ValueError(f"unknown Gavel job type {f[0]!r}")
    runtime = _count(f[4], "total_steps") / rate
    return _gpu_job(n, float(f[5]), runtime, 0, _count(f[6], "scale_factor"), 0, vc)


@_gc_paused
def read_gavel(path: PathLike) -> Trace:
    """Read an old-format Gavel per-VC trace; durations are synthetic (module docstring)."""
    vc = _stem(path)
    return _collect(path, vc, _tsv_rows(path, 7), functools.partial(_gavel_job, vc=vc),
                    rebase=False)


def load(path: PathLike) -> Trace:
    """Pick the reader from the file name; unknown names are a ``ValueError``."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".swf"):
        return read_swf(path)
    if name.endswith(".trace"):
        return read_gavel(path)
    if name.endswith(".csv") and name.startswith("philly"):
        return read_philly_csv(path)
    if name.endswith(".csv") and name.startswith("openb_pod_list"):
        return read_alibaba(path)
    raise ValueError(f"{os.fspath(path)}: unknown trace format; accepted: {_ACCEPTED}")
