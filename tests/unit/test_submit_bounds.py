"""The bounds of a submission body: decoded by msgspec against :class:`SubmitRequest`'s
constraints, then :func:`check_submit` — each refusal names the field, and nothing
is sized by a number before it has been bounded."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from schedd.errors import InputError
from schedd.daemon.records import Bounds, SubmitRequest, check_submit, explain, parse_array

_decoder = msgspec.json.Decoder(SubmitRequest)


def decode(body: dict[str, Any] | str) -> SubmitRequest:
    raw = body if isinstance(body, str) else msgspec.json.encode({"argv": ["true"], **body})
    return _decoder.decode(raw)


REFUSED_BY_TYPE = [
    ({"chunks": [{"count": 10**20}]}, "$.chunks[0].count"),
    ({"chunks": [{"count": Bounds.NODES + 1}]}, "$.chunks[0].count"),
    ({"chunks": [{"count": 0}]}, "$.chunks[0].count"),
    ({"chunks": [{"ncpus": Bounds.NCPUS + 1}]}, "$.chunks[0].ncpus"),
    ({"chunks": [{"ngpus": -1}]}, "$.chunks[0].ngpus"),
    ({"chunks": [{"mem_mb": Bounds.MEM_MB + 1}]}, "$.chunks[0].mem_mb"),
    ({"chunks": [{}] * (Bounds.CHUNKS + 1)}, "$.chunks"),
    ('{"argv": ["true"], "walltime_s": 1e400}', "$.walltime_s"),
    ({"walltime_s": -1}, "$.walltime_s"),
    ({"walltime_s": Bounds.WALLTIME_S * 2}, "$.walltime_s"),
    ({"eligible_time": -5.0}, "$.eligible_time"),
    ({"eligible_time": Bounds.EPOCH_MAX + 1}, "$.eligible_time"),
    ({"priority": -1025}, "$.priority"),
    ({"nice": Bounds.NICE + 1}, "$.nice"),
    ({"warn_before_s": 1e300}, "$.warn_before_s"),
    ({"name": "x" * (Bounds.NAME + 1)}, "$.name"),
    ({"name": "a\x00"}, "$.name"),
    ({"name": "a\n"}, "$.name"),  # a trailing newline too: the patterns end with \Z, not $
    ({"name": "a/b"}, "$.name"),
    ({"account": "a\x1b[2J"}, "$.account"),
    ({"argv": ["sh", "\x00"]}, "$.argv[1]"),
    ({"argv": ["x"] * (Bounds.ARGS + 1)}, "$.argv"),
    ({"env": {"A=B": "1"}}, "`key` in `$.env`"),
    ({"env": {"": "1"}}, "`key` in `$.env`"),
    ({"env": {"A": "\x00"}}, "$.env"),
    ({"script": "echo \x00", "argv": None}, "$.script"),
    ({"workdir": "/\x00"}, "$.workdir"),
    ({"stdout_path": "/" + "p" * Bounds.PATH}, "$.stdout_path"),
    ({"depend": [{"kind": "afterok", "ids": ["17; rm"]}]}, "$.depend[0].ids[0]"),
    ({"array": "1-" + "9" * 100}, "$.array"),
    ({"env_hash": "Z" * 64}, "$.env_hash"),
]


@pytest.mark.parametrize(("body", "where"), REFUSED_BY_TYPE, ids=[w for _, w in REFUSED_BY_TYPE])
def test_out_of_bounds_values_do_not_decode(body: dict[str, Any] | str, where: str) -> None:
    with pytest.raises(msgspec.ValidationError) as e:
        decode(body)
    assert where in str(e.value)
    assert "regex" not in explain(str(e.value))  # said in words


REFUSED_BY_CHECK = [
    ({"chunks": [{"count": 6000}, {"count": 6000}]}, "chunks: 12000 nodes in all"),
    ({"chunks": []}, "chunks: at least one chunk"),
    ({"argv": []}, "argv: the command is empty"),
    ({"stdout_path": "out.txt"}, "stdout_path: 'out.txt': must be an absolute path"),
    ({"shell": "bash"}, "shell: 'bash': must be an absolute path"),
    ({"shell": ""}, "shell: empty"),
    ({"argv": ["x" * 100_000] * 25}, "argv/env: 2500025 bytes together"),
    ({"env": {f"V{i}": "x" * 1000 for i in range(3000)}}, "argv/env"),
    ({"array": "1-99999999"}, "99999999 subjobs"),
]


@pytest.mark.parametrize(("body", "message"), REFUSED_BY_CHECK, ids=[m for _, m in REFUSED_BY_CHECK])
def test_what_types_cannot_say_is_checked_before_anything_is_expanded(body: dict[str, Any], message: str) -> None:
    req = decode(body)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        if req.array:
            parse_array(req.array, 100_000)
        check_submit(req)


def test_a_huge_count_is_refused_in_constant_time() -> None:
    """The bound is a number compare: no list of 10^7 entries is built to find out."""
    body = msgspec.json.encode({"argv": ["true"], "chunks": [{"count": Bounds.NODES}] * Bounds.CHUNKS})
    start = time.perf_counter()
    with pytest.raises(InputError, match="nodes in all"):
        check_submit(_decoder.decode(body))
    assert time.perf_counter() - start < 0.05  # 2.56 million nodes; expanding them takes seconds


def test_a_sane_submission_passes() -> None:
    req = decode({"name": "train-1", "env": {"PATH": "/usr/bin", "EMPTY": ""}, "chunks": [{"ncpus": 8, "count": 2}],
                  "walltime_s": 3600, "eligible_time": 1.8e9, "priority": -1024, "workdir": "/home/u",
                  "stdout_path": "/home/u/o", "depend": [{"kind": "afterok", "ids": ["17", "18[]", "19[3].srv"]}]})
    check_submit(req)


@pytest.mark.parametrize(("text", "size", "message"), [
    ("0-100000", 100_000, "100001 subjobs, over the server's max_array_size of 100000"),
    ("1-" + "9" * 10, 10**12, "at most 9 digits"),
    ("1-10%0", 100, "step and %max must be >= 1"),
])
def test_array_bounds(text: str, size: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_array(text, size)
