"""qsub's value grammar (schedd.cli.resources): tables of inputs, results and exact messages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from schedd.cli import resources as r


@pytest.mark.parametrize(("text", "mb"), [
    ("64gb", 65536), ("64GB", 65536), ("512mb", 512), ("1536kb", 2), ("1kb", 1), ("1", 1), ("0", 0),
    ("1048576", 1), ("1048577", 2), ("2tb", 2 * 1024 * 1024), ("1pb", 1024 ** 3), ("3b", 1),
])
def test_sizes_are_pbs_units_in_mb_rounded_up(text: str, mb: int) -> None:
    assert r.parse_size_mb(text) == mb


@pytest.mark.parametrize("text", ["12xb", "1.5gb", "-1gb", "gb", "", "4 g", "4g"])
def test_bad_sizes_say_what_a_size_is(text: str) -> None:
    with pytest.raises(ValueError) as e:
        r.parse_size_mb(text)
    assert str(e.value) == f"mem: {text!r}: expected a size such as 512mb or 64gb (units b, kb, mb, gb, tb)"


@pytest.mark.parametrize(("text", "seconds"), [
    ("01:30:00", 5400.0), ("1:30:00", 5400.0), ("90:00", 5400.0), ("45", 45.0), ("00:05:00", 300.0),
    ("100:00:00", 360000.0), ("0:0:1.5", 1.5), ("120", 120.0),
])
def test_walltimes(text: str, seconds: float) -> None:
    assert r.parse_walltime(text) == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("1:2:3:4", "walltime: '1:2:3:4': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    ("1h", "walltime: '1h': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    ("-5", "walltime: '-5': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    ("1::0", "walltime: '1::0': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    ("", "walltime: '': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    ("00:00:00", "walltime: '00:00:00': must be more than 0 seconds"),
])
def test_bad_walltimes(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        r.parse_walltime(text)
    assert str(e.value) == message


def chunk(count: int = 1, ncpus: int | None = None, ngpus: int | None = None, mem_mb: int | None = None) -> dict[str, Any]:
    return {"ncpus": ncpus, "mem_mb": mem_mb, "ngpus": ngpus, "count": count}


def resolve(*values: str) -> dict[str, Any]:
    """Apply -l values in order, later ones winning per resource (as qsub merges them)."""
    merged: dict[str, str] = {}
    for v in values:
        merged.update(r.parse_l(v))
    return r.resolve(merged)


@pytest.mark.parametrize(("values", "expected"), [
    (["select=1:ncpus=1:ngpus=1"], {"chunks": [chunk(ncpus=1, ngpus=1)]}),
    (["select=2:ncpus=8:ngpus=1:mem=64gb"], {"chunks": [chunk(2, 8, 1, 65536)]}),
    (["select=ngpus=2"], {"chunks": [chunk(ngpus=2)]}),
    (["select=2:ncpus=4+1:ngpus=8:mem=1tb"], {"chunks": [chunk(2, ncpus=4), chunk(1, ngpus=8, mem_mb=1 << 20)]}),
    (["ncpus=4,mem=16gb"], {"chunks": [chunk(ncpus=4, mem_mb=16384)]}),
    (["ngpus=1", "ngpus=2"], {"chunks": [chunk(ngpus=2)]}),
    (["walltime=01:00:00"], {"walltime_s": 3600.0}),
    (["walltime=1:00:00", "walltime=5:00"], {"walltime_s": 300.0}),
    (["select=1:ncpus=2,walltime=10:00,place=scatter:shared"], {"chunks": [chunk(ncpus=2)], "walltime_s": 600.0}),
    (["place=free"], {}),
    (["signal=USR1@60"], {"warn_signal": "USR1", "warn_before_s": 60.0}),
    (["signal=SIGTERM@300"], {"warn_signal": "TERM", "warn_before_s": 300.0}),
    (["signal=usr2"], {"warn_signal": "USR2", "warn_before_s": 60.0}),
    (["signal=10@5"], {"warn_signal": "10", "warn_before_s": 5.0}),
    (["qos=high"], {"qos": "high"}),
])
def test_l_values(values: list[str], expected: dict[str, Any]) -> None:
    assert resolve(*values) == expected


@pytest.mark.parametrize(("values", "message"), [
    (["select=2:ncpus"], "select: '2:ncpus': expected [N:]res=value[:res=value], e.g. select=2:ncpus=8:ngpus=1:mem=64gb"),
    (["select=1:foo=1"], "select: unknown chunk resource 'foo'; chunks take ncpus, ngpus and mem"),
    (["select=1:ncpus=x"], "ncpus: 'x': expected a whole number"),
    (["select=1:ncpus=2:ncpus=3"], "select: '1:ncpus=2:ncpus=3': ncpus given twice"),
    (["select=0:ncpus=1"], "select: '0:ncpus=1': the chunk count must be at least 1"),
    (["select=1:mem=lots"], "mem: 'lots': expected a size such as 512mb or 64gb (units b, kb, mb, gb, tb)"),
    (["select=1:ncpus=2", "ngpus=1"], "select and job-wide ngpus cannot be combined; put ngpus in the select chunks"),
    (["ngpus=-1"], "ngpus: '-1': expected a whole number"),
    (["walltime"], "'walltime': expected resource=value, e.g. walltime=01:00:00"),
    (["foo=1"], "unknown resource 'foo'; schedd knows container, mem, ncpus, ngpus, place, qos, select, signal, walltime"),
    (["nodes=2:ppn=4"], "nodes: Torque's nodes= is not supported; use select=N:ncpus=C:ngpus=G"),
    (["place=pack"], "place: 'pack' is not supported: schedd places every chunk on its own node (scatter) and shares nodes between jobs"),
    (["place=scatter:excl"], "place: 'excl' is not supported: schedd places every chunk on its own node (scatter) and shares nodes between jobs"),
    (["place=sideways"], "place: 'sideways': expected [free|scatter|vscatter][:shared]"),
    (["signal=NOPE@60"], "signal: 'NOPE@60': expected SIGNAL[@SECONDS], e.g. USR1@60"),
    (["signal=USR1@soon"], "signal: 'USR1@soon': the time after @ must be whole seconds, e.g. USR1@60"),
    (["signal=USR1@0"], "signal: 'USR1@0': the time after @ must be more than 0 seconds"),
])
def test_bad_l_values(values: list[str], message: str) -> None:
    with pytest.raises(ValueError) as e:
        resolve(*values)
    assert str(e.value) == message


@pytest.fixture
def utc() -> Iterator[None]:
    """-a is local time: pin the zone so the table means one thing everywhere."""
    import os

    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def epoch(y: int, mo: int, d: int, h: int, mi: int, s: int = 0) -> float:
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))


# "now" in every row: 2026-11-29 16:00:00 (local = UTC here)
@pytest.mark.parametrize(("text", "expected"), [
    ("1700", (2026, 11, 29, 17, 0)),          # later today
    ("1500", (2026, 11, 30, 15, 0)),          # past today: tomorrow
    ("1600", (2026, 11, 29, 16, 0)),          # exactly now: now
    ("1700.30", (2026, 11, 29, 17, 0, 30)),
    ("301200", (2026, 11, 30, 12, 0)),        # a later day this month
    ("281200", (2026, 12, 28, 12, 0)),        # a day past this month: next month
    ("12011200", (2026, 12, 1, 12, 0)),       # a later month this year
    ("01011200", (2027, 1, 1, 12, 0)),        # a month past this year: next year
    ("2701011200", (2027, 1, 1, 12, 0)),      # YY: 20YY
    ("202612312359.59", (2026, 12, 31, 23, 59, 59)),
    ("202601011200", (2026, 1, 1, 12, 0)),    # a full date in the past is kept (eligible at once)
])
def test_a_times_follow_pbs_next_occurrence_rule(utc: None, text: str, expected: tuple[int, ...]) -> None:
    now = epoch(2026, 11, 29, 16, 0)
    assert r.parse_after(text, now) == epoch(*expected)


@pytest.mark.parametrize(("text", "message"), [
    ("12", "'12': expected [[[[CC]YY]MM]DD]hhmm[.SS], e.g. 202612312359.30"),
    ("12345", "'12345': expected [[[[CC]YY]MM]DD]hhmm[.SS], e.g. 202612312359.30"),
    ("1200.5", "'1200.5': expected [[[[CC]YY]MM]DD]hhmm[.SS], e.g. 202612312359.30"),
    ("tomorrow", "'tomorrow': expected [[[[CC]YY]MM]DD]hhmm[.SS], e.g. 202612312359.30"),
    ("2460", "'2460': a field is out of range (hh 00-23, mm 00-59, SS 00-59, MM 01-12, DD 01-31)"),
    ("13011200", "'13011200': a field is out of range (hh 00-23, mm 00-59, SS 00-59, MM 01-12, DD 01-31)"),
    ("02301200", "'02301200': there is no day 30 in month 2"),
])
def test_bad_a_times(utc: None, text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        r.parse_after(text, epoch(2026, 11, 29, 16, 0))
    assert str(e.value) == message


@pytest.mark.parametrize(("text", "message"), [
    ("1-10:2%3", None), ("0-4", None), (" 1-4%2 ", None),
    ("5-1", "'5-1': the end must be greater than the start"),
    ("3-3", "'3-3': the end must be greater than the start"),
    ("1-10:0", "'1-10:0': the step and %max must be at least 1"),
    ("1-10%0", "'1-10%0': the step and %max must be at least 1"),
    ("-1-4", "'-1-4': expected X-Y[:Z][%max], e.g. 1-100%10"),
    ("1,2,3", "'1,2,3': expected X-Y[:Z][%max], e.g. 1-100%10"),
])
def test_array_ranges(text: str, message: str | None) -> None:
    if message is None:
        assert r.parse_array(text) == text.strip()
    else:
        with pytest.raises(ValueError) as e:
            r.parse_array(text)
        assert str(e.value) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("depend=afterok:12", [("depend", "afterok:12")]),
    ("depend=afterok:1:2,afterany:3,block=true", [("depend", "afterok:1:2,afterany:3"), ("block", "true")]),
    ("block=true", [("block", "true")]),
])
def test_w_splits_attributes_not_depend_lists(text: str, expected: list[tuple[str, str]]) -> None:
    assert r.parse_w(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("afterok:12", [{"kind": "afterok", "ids": ["12"]}]),
    ("afterok:12.srv:13.srv.example.com", [{"kind": "afterok", "ids": ["12", "13"]}]),
    ("afterany:14[],afternotok:15[3].srv", [{"kind": "afterany", "ids": ["14[]"]}, {"kind": "afternotok", "ids": ["15[3]"]}]),
    ("after:7@srv", [{"kind": "after", "ids": ["7"]}]),
])
def test_depend(text: str, expected: list[dict[str, Any]]) -> None:
    assert r.parse_depend(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("beforeok:12", "depend=beforeok: beforeok dependencies are not supported yet; "
                    "submit the later job with -W depend=afterok:ID instead"),
    ("before:12", "depend=before: before dependencies are not supported yet; "
                  "submit the later job with -W depend=afterok:ID instead"),
    ("on:2", "depend=on: on dependencies are not supported yet; submit the later job with -W depend=afterok:ID instead"),
    ("afterwards:12", "depend: 'afterwards': expected one of after, afterok, afternotok, afterany"),
    ("afterok", "depend: 'afterok': expected afterok:JOBID[:JOBID...], e.g. afterok:12.server"),
    ("afterok:12:", "depend: 'afterok:12:': expected afterok:JOBID[:JOBID...], e.g. afterok:12.server"),
    ("afterok:abc", "depend: 'afterok:abc': expected afterok:JOBID[:JOBID...], e.g. afterok:12.server"),
])
def test_bad_depend(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        r.parse_depend(text)
    assert str(e.value) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("A=1", {"A": "1"}),
    ("A,B=2", {"A": "from-env", "B": "2"}),
    ("C='x,y',D=\"p q\"", {"C": "x,y", "D": "p q"}),
    ("E=", {"E": ""}),
    ("MISSING", {"MISSING": ""}),
    ("F=a=b", {"F": "a=b"}),
])
def test_v_variables(text: str, expected: dict[str, str]) -> None:
    assert r.parse_vars(text, {"A": "from-env"}) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("1A=2", "'1A=2': expected VAR or VAR=value"),
    ("A=1,,B=2", "'': expected VAR or VAR=value"),
    ("A='open", "\"A='open\": unbalanced quote"),
])
def test_bad_v_variables(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        r.parse_vars(text, {})
    assert str(e.value) == message
