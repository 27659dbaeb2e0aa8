"""jobscan reads qstat's columns exactly as json.loads would, or declines.

The bodies are encoded the way the server encodes them (msgspec, JobRecord),
including hostile text: quotes, backslashes, unicode, env keys named like
record fields, field names inside comments and scripts.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from schedd.cli.jobscan import _LETTERS, get_raw, scan_rows
from schedd.cli.qstat_attrs import LETTERS, Context
from schedd.cli.qstat_format import rows
from schedd.records import ChunkSpec, ExecChunk, JobRecord, Usage


def record(n: int, **kw: Any) -> JobRecord:
    base: dict[str, Any] = dict(
        id=str(n), number=n, order=n, name=f"job{n}", owner="ann", account="default", queue="default",
        chunks=[ChunkSpec(ncpus=2, ngpus=1)], walltime_s=3600.0, submit_time=1e9, workdir="/w",
        stdout_path="/w/o", stderr_path="/w/e",
    )
    base.update(kw)
    return JobRecord(**base)


def body(*records: JobRecord) -> bytes:
    return msgspec.json.encode({"jobs": list(records)})


def columns(raw: bytes) -> list[tuple[str, str, str, str, str, str]]:
    """The default layout's rows, the slow and obvious way."""
    return rows(json.loads(raw)["jobs"], Context("srv"))


def test_matches_json_loads_on_ordinary_and_hostile_records() -> None:
    raw = body(
        record(1),
        record(2, name='quote " and back\\slash', owner="ünïcødé", queue="1xgpu", state="running",
               start_time=1e9 + 5.5, used=Usage(cpu_s=12.75, peak_rss_mb=3)),
        record(3, env={"state": "held", "id": '{"id":"9"}', "used": '},"used":{"cpu_s":7', "x": "a\\\"b"},
               comment=',"start_time":1,"used":{"cpu_s":99,', script='echo "},\\n{"id":"4"'),
        record(4, id="4[]", number=4, name="sweep", state="running", argv=["a,\"state\":\"x"]),
        record(5, id="4[2]", array_index=2, parent="4[]", state="finished", end_time=2e9, exit_status=0,
               exec_nodes=[ExecChunk("n1", 1, 0, [0])]),
        record(6, name="", owner="", env={"": ""}),
    )
    scanned = scan_rows(raw)
    assert scanned == columns(raw)
    assert [r[4] for r in scanned] == ["Q", "R", "Q", "B", "X", "Q"] and scanned[1][5] == "00:00:12"
    assert {k.decode(): v for k, v in _LETTERS.items()} == LETTERS


def test_declines_what_it_does_not_know() -> None:
    raw = body(record(1))
    assert scan_rows(raw.replace(b'"chunks"', b'"chunkz"')) is None
    assert scan_rows(raw[:-2] + b',{"id":"2"}]}') is None
    assert scan_rows(raw.replace(b'"used":', b'"extra":1,"used":')) == columns(raw)  # order of what it skips is free
    assert scan_rows(raw.replace(b"}]}", b',"later":1}]}')) is None  # a field after used: decline
    assert scan_rows(b'{"jobs":[]}') == []
    assert scan_rows(b"[]") is None
    many = body(*[record(i) for i in range(1, 200)])
    assert scan_rows(many) == columns(many)


def test_the_record_layout_it_relies_on() -> None:
    """If this fails, JobRecord changed shape: update schedd/cli/jobscan.py with it."""
    fields = list(JobRecord.__struct_fields__)
    assert fields[:8] == ["id", "number", "order", "name", "owner", "account", "queue", "chunks"]
    assert fields[-1] == "used"
    assert fields.index("state") < fields.index("env") < fields.index("start_time")
    user_keyed = [f for f, t in zip(fields, JobRecord.__annotations__.values()) if "dict[" in str(t)]
    assert user_keyed == ["env"]


def test_get_raw_declines_without_a_server(tmp_path: Any) -> None:
    assert get_raw(f"unix://{tmp_path}/none.sock", None, "/api/v1/jobs") is None
    assert get_raw("ftp://x", None, "/") is None
