"""bench.traces: field mappings on tiny hand-written files, then the facts the shared
traces' README states, so a reader change that silently drops or mangles jobs fails here."""

from __future__ import annotations

import dataclasses
import gc
import gzip
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from bench.traces import (
    GAVEL_STEPS_PER_SECOND,
    Trace,
    TraceJob,
    load,
    read_alibaba,
    read_gavel,
    read_philly_csv,
    read_swf,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path/name``, gzipped when the name ends in ``.gz``."""
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def error_at(path: Path, lineno: int, what: str) -> str:
    """Regex for the one error shape: ``PATH:LINENO: what``."""
    return "^" + re.escape(f"{path}:{lineno}: ") + what


# --------------------------------------------------------------------------- SWF

SWF = """\
; Version: 2.2
; Acknowledge: Jane Doe
; Information: http://example.org/
;              http://example.org/more
; MaxNodes: 64
; MaxProcs: 128
; Queue:  1  batch
; Queue:  2  debug
;
    1   100   5   3600   16   -1  2048   16   7200   4096  1  12  3  -1  2 -1 -1 -1
    2    50  -1     30   -1   -1    -1    8     -1     -1  0  -1 -1  -1 -1 -1 -1 -1
    3   100   0      0    4   -1    -1    4    600     -1  5   1  1  -1  1 -1 -1 -1
    4   120   0     10   -1   -1    -1   -1    600     -1  1   1  1  -1  1 -1 -1 -1
    5   100   0     60    2   -1  1024    2    120     -1  1   7  7  -1  1 -1 -1 -1
"""


@pytest.mark.parametrize("name", ["t.swf", "t.swf.gz"])
def test_swf_field_mapping(tmp_path: Path, name: str) -> None:
    trace = read_swf(write(tmp_path, name, SWF))
    assert trace.name == "t"
    assert [j.id for j in trace.jobs] == [2, 1, 5]  # by submit, then id
    first = trace.jobs[1]
    assert first == TraceJob(
        id=1, submit_s=100.0, runtime_s=3600.0, requested_s=7200.0, procs=16, gpus=0,
        mem_mb=4096 * 16 // 1024, user="u12", group="g3", queue="2", status=1,
    )


def test_swf_minus_one_handling(tmp_path: Path) -> None:
    jobs = {j.id: j for j in read_swf(write(tmp_path, "t.swf", SWF)).jobs}
    j2 = jobs[2]
    assert j2.procs == 8  # field 5 is -1: field 8
    assert j2.requested_s is None  # field 9 is -1
    assert (j2.user, j2.group, j2.queue, j2.mem_mb, j2.status) == ("", "", "", 0, 0)
    assert jobs[5].mem_mb == 1024 * 2 // 1024  # no requested memory: used memory (field 7)


def test_swf_skips_and_counts_unreplayable(tmp_path: Path) -> None:
    trace = read_swf(write(tmp_path, "t.swf", SWF))
    assert trace.skipped == 2  # job 3: runtime 0; job 4: size -1 in fields 5 and 8
    assert {j.id for j in trace.jobs}.isdisjoint({3, 4})


def test_swf_header(tmp_path: Path) -> None:
    trace = read_swf(write(tmp_path, "t.swf", SWF))
    assert trace.max_nodes == 64 and trace.max_procs == 128
    assert trace.header["Acknowledge"] == "Jane Doe"
    assert trace.header["Queue"] == "1  batch\n2  debug"
    assert trace.header["Information"] == "http://example.org/\nhttp://example.org/more"
    assert "http" not in trace.header


def test_swf_max_procs_falls_back_to_max_nodes(tmp_path: Path) -> None:
    text = "; MaxNodes: 256\n1 0 -1 10 4 -1 -1 -1 -1 -1 1 -1 -1 -1 0 -1 -1 -1\n"
    trace = read_swf(write(tmp_path, "t.swf", text))
    assert (trace.max_procs, trace.max_nodes, trace.skipped) == (256, 256, 0)
    bare = read_swf(write(tmp_path, "u.swf", "1 0 -1 10 4 -1 -1 -1 -1 -1 1 -1 -1 -1 0 -1 -1 -1\n"))
    assert (bare.max_procs, bare.max_nodes, bare.header) == (0, 0, {})


def test_swf_malformed_lines_name_the_line(tmp_path: Path) -> None:
    short = write(tmp_path, "short.swf", "; Version: 2\n\n1 0 -1 10 4\n")
    with pytest.raises(ValueError, match=error_at(short, 3, "expected 18 SWF fields, got 5")):
        read_swf(short)
    good = "1 0 -1 10 4 -1 -1 -1 -1 -1 1 -1 -1 -1 0 -1 -1 -1\n"
    text = good + good.replace(" 4 ", " x ")
    bad = write(tmp_path, "bad.swf.gz", text)
    with pytest.raises(ValueError, match=error_at(bad, 2, "non-numeric SWF field")):
        read_swf(bad)


def test_trace_job_is_frozen() -> None:
    job = TraceJob(1, 0.0, 1.0, None, 1, 0, 0, "", "", "", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.procs = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- GPU traces

PHILLY = """\
timestamp,duration,num_gpus,gpu_time,cluster
2017-10-09 07:01:55,66.0,1,66.0,11cb48
2017-10-09 06:13:03,2951.0,8,23608.0,6214e9
2017-10-09 06:13:03,10.0,2,20.0,6c71a0
2017-10-09 08:00:00,0.0,1,0.0,6c71a0
2017-10-09 09:00:00,5.0,0,0.0,6c71a0
"""


@pytest.mark.parametrize("name", ["philly.csv", "philly_jobs.csv.gz"])
def test_philly_sorted_and_rebased(tmp_path: Path, name: str) -> None:
    trace = read_philly_csv(write(tmp_path, name, PHILLY))
    assert [j.id for j in trace.jobs] == [2, 3, 1]  # file rows 2 and 3 tie: id breaks it
    assert [j.submit_s for j in trace.jobs] == [0.0, 0.0, 48 * 60 + 52.0]
    assert trace.jobs[0] == TraceJob(
        id=2, submit_s=0.0, runtime_s=2951.0, requested_s=None, procs=0, gpus=8, mem_mb=0,
        user="6214e9", group="6214e9", queue="", status=1,
    )
    assert trace.skipped == 2  # duration 0; no GPU and no CPU
    assert (trace.max_procs, trace.max_nodes, trace.header) == (0, 0, {})


def test_philly_errors(tmp_path: Path) -> None:
    bad_time = write(tmp_path, "philly.csv", PHILLY.replace("2017-10-09 08:00:00", "yesterday"))
    with pytest.raises(ValueError, match=error_at(bad_time, 5, "bad timestamp 'yesterday'")):
        read_philly_csv(bad_time)
    no_col = write(tmp_path, "philly2.csv", "timestamp,duration,gpu_time,cluster\n")
    with pytest.raises(ValueError, match=error_at(no_col, 1, "missing column.*num_gpus")):
        read_philly_csv(no_col)
    short = write(tmp_path, "philly3.csv", PHILLY + "2017-10-09 09:00:00,5.0\n")
    with pytest.raises(ValueError, match=error_at(short, 7, "expected 5 columns, got 2")):
        read_philly_csv(short)
    empty = write(tmp_path, "philly4.csv", "")
    with pytest.raises(ValueError, match=error_at(empty, 1, "empty file")):
        read_philly_csv(empty)


GAVEL = (
    "ResNet-50 (batch size 64)\tcd %s && python3 main.py\t--num_steps\t1\t4440\t0.000000\t8\n"
    "A3C\tcd %s && python3 main.py\t--max-steps\t0\t950\t30.500000\t1\n"
    "LM (batch size 20)\tcd %s && python3 main.py\t--steps\t1\t0\t40.000000\t2\n"
)


@pytest.mark.parametrize("name", ["e13805.trace", "e13805.trace.gz"])
def test_gavel_synthetic_durations(tmp_path: Path, name: str) -> None:
    trace = read_gavel(write(tmp_path, name, GAVEL))
    assert trace.name == "e13805" and trace.skipped == 1  # 0 steps: runtime 0
    resnet, a3c = trace.jobs
    assert resnet == TraceJob(
        id=1, submit_s=0.0, runtime_s=4440 / GAVEL_STEPS_PER_SECOND["ResNet-50"],
        requested_s=None, procs=0, gpus=8, mem_mb=0, user="e13805", group="e13805",
        queue="", status=1,
    )
    assert (a3c.id, a3c.submit_s, a3c.gpus) == (2, 30.5, 1)
    assert a3c.runtime_s == pytest.approx(950 / GAVEL_STEPS_PER_SECOND["A3C"])


def test_gavel_errors(tmp_path: Path) -> None:
    unknown = write(tmp_path, "x.trace", GAVEL + "BERT (batch size 8)\tcmd\t-s\t1\t10\t50\t1\n")
    with pytest.raises(ValueError, match=error_at(unknown, 4, "unknown Gavel job type 'BERT")):
        read_gavel(unknown)
    ten = write(tmp_path, "y.trace", "\n" + "\t".join(["A3C"] * 10) + "\n")
    with pytest.raises(ValueError, match=error_at(ten, 2, "expected 7 tab-separated fields")):
        read_gavel(ten)


ALIBABA = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
) + """\
pod-0,12000,16384,1,1000,,LS,Running,100,5000,130
pod-1,6500,12288,0,0,,BE,Failed,90,1000,400
pod-2,11908,47104,1,1000,,BE,Pending,200,300,
pod-3,88000,327680,8,1000,V100M32,Burstable,Succeeded,300,300,300
"""


@pytest.mark.parametrize("name", ["openb_pod_list_default.csv", "openb_pod_list_x.csv.gz"])
def test_alibaba_mapping(tmp_path: Path, name: str) -> None:
    trace = read_alibaba(write(tmp_path, name, ALIBABA))
    assert trace.skipped == 2  # pod-2 never scheduled; pod-3 ran for 0 s
    cpu_only, gpu = trace.jobs
    assert cpu_only == TraceJob(
        id=2, submit_s=0.0, runtime_s=600.0, requested_s=None, procs=7, gpus=0, mem_mb=12288,
        user="BE", group="BE", queue="", status=0,
    )
    assert (gpu.id, gpu.submit_s, gpu.runtime_s, gpu.procs, gpu.gpus) == (1, 10.0, 4870.0, 12, 1)
    assert (gpu.user, gpu.status) == ("LS", 1)


def test_alibaba_negative_count_is_malformed(tmp_path: Path) -> None:
    bad = write(tmp_path, "openb_pod_list_bad.csv", ALIBABA.replace(",0,0,,BE", ",-1,0,,BE"))
    with pytest.raises(ValueError, match=error_at(bad, 3, "negative num_gpu")):
        read_alibaba(bad)


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize(
    ("name", "text", "n_jobs"),
    [
        ("a.swf", SWF, 3),
        ("A.SWF.GZ", SWF, 3),
        ("philly_jobs_pollux.csv.gz", PHILLY, 3),
        ("ee9e8c.trace", GAVEL, 2),
        ("openb_pod_list_default.csv.gz", ALIBABA, 2),
    ],
)
def test_load_dispatches_on_name(tmp_path: Path, name: str, text: str, n_jobs: int) -> None:
    assert len(load(write(tmp_path, name, text)).jobs) == n_jobs


@pytest.mark.parametrize("name", ["jobs.csv", "trace.json", "openb_node_list_all_node.csv"])
def test_load_rejects_unknown_formats(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "x\n")
    with pytest.raises(ValueError, match=r"unknown trace format; accepted: \*\.swf\[\.gz\]"):
        load(path)


def test_corrupt_gzip_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "t.swf.gz"
    path.write_bytes(gzip.compress(SWF.encode())[:-20])
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: cannot read")):
        read_swf(path)


def test_gc_state_is_restored(tmp_path: Path) -> None:
    assert gc.isenabled()
    read_swf(write(tmp_path, "t.swf", SWF))
    with pytest.raises(ValueError):
        read_swf(write(tmp_path, "bad.swf", "1 2 3\n"))
    assert gc.isenabled()


# --------------------------------------------------------------------------- shared traces

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared workload traces not found at {SHARED}"
)


def assert_sorted(trace: Trace) -> None:
    keys = [(j.submit_s, j.id) for j in trace.jobs]
    assert keys == sorted(keys)


@needs_shared
def test_real_lublin() -> None:
    trace = load(SHARED / "lublin_256.swf.gz")
    assert len(trace.jobs) == 10_000 and trace.skipped == 0
    assert all(j.requested_s is None for j in trace.jobs)
    assert (trace.max_nodes, trace.max_procs) == (256, 256)
    assert trace.header["Acknowledge"].startswith("Uri Lublin")
    assert (trace.jobs[0].submit_s, trace.jobs[-1].submit_s) == (5094.0, 7_711_701.0)
    assert 1 <= min(j.procs for j in trace.jobs) and max(j.procs for j in trace.jobs) <= 256
    assert_sorted(trace)


@needs_shared
def test_real_kth() -> None:
    trace = load(SHARED / "KTH-SP2-1996-2.1-cln.swf.gz")
    assert trace.skipped == 9  # 8 with run time <= 0, 1 with size <= 0
    assert len(trace.jobs) == 28_476 - 9
    assert (trace.max_procs, trace.max_nodes) == (100, 100)
    assert trace.header["UnixStartTime"] == "843480031"
    assert trace.header["Acknowledge"] == "Lars Malinowsky"
    assert trace.jobs[0].submit_s == 599_850.0  # cleaned log: the first 14 jobs are gone
    assert all(j.requested_s is not None for j in trace.jobs)
    assert set(Counter(j.status for j in trace.jobs)) == {0, 1}
    assert_sorted(trace)


@needs_shared
def test_real_nasa_and_lanl() -> None:
    nasa = load(SHARED / "NASA-iPSC-1993-3.1-cln.swf.gz")
    assert (len(nasa.jobs) + nasa.skipped, nasa.skipped, nasa.max_procs) == (18_239, 173, 128)
    assert all(j.requested_s is None and j.status == -1 for j in nasa.jobs)
    lanl = load(SHARED / "LANL-CM5-1994-4.1-cln.swf.gz")
    assert (len(lanl.jobs) + lanl.skipped, lanl.skipped, lanl.max_procs) == (122_060, 5, 1024)
    assert sum(j.requested_s is not None for j in lanl.jobs) <= 110_770


@needs_shared
def test_real_philly() -> None:
    trace = load(SHARED / "philly_jobs_pollux.csv.gz")
    assert len(trace.jobs) == 82_247 and trace.skipped == 0
    assert len({j.user for j in trace.jobs}) == 15
    gpus = Counter(j.gpus for j in trace.jobs)
    assert (gpus[1], gpus[8], gpus[128]) == (76_627, 1_643, 3)
    span = datetime(2017, 12, 22, 8, 2, 11) - datetime(2017, 9, 4, 10, 30, 41)
    assert (trace.jobs[0].submit_s, trace.jobs[-1].submit_s) == (0.0, span.total_seconds())
    assert_sorted(trace)


@needs_shared
def test_real_gavel() -> None:
    traces = [load(p) for p in sorted((SHARED / "gavel_philly_msr_seed0").glob("*.trace.gz"))]
    assert len(traces) == 15
    assert sum(len(t.jobs) + t.skipped for t in traces) == 15_264
    counts = {t.name: len(t.jobs) + t.skipped for t in traces}
    assert (counts["e13805"], counts["795a4c"], counts["6214e9"]) == (607, 3, 2000)
    gpus = Counter(j.gpus for t in traces for j in t.jobs)
    # The README lists 1,2,4,8,16,24,32,64; the files also hold 7 (2 jobs), 12 (6) and 20 (1).
    assert (gpus[1], gpus[8], max(gpus), sum(t.skipped for t in traces)) == (10_480, 1_916, 64, 0)


@needs_shared
def test_real_alibaba() -> None:
    trace = load(SHARED / "alibaba_openb_2023" / "openb_pod_list_default.csv.gz")
    assert len(trace.jobs) + trace.skipped == 8_152
    assert trace.skipped >= 897  # every Pending pod was never scheduled
    assert max(j.gpus for j in trace.jobs) == 8
    assert {j.user for j in trace.jobs} <= {"LS", "BE", "Burstable", "Guaranteed"}
    assert_sorted(trace)
