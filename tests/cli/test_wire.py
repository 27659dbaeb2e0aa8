"""schedd.cli.wire against json (issue #12): the commands' JSON without ``import
json`` must encode and decode exactly as json does."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.cli import wire

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_same_bytes_and_values_as_json(value: object) -> None:
    assert wire.dumps(value) == json.dumps(value).encode()
    assert wire.loads(json.dumps(value).encode()) == json.loads(json.dumps(value))


def test_the_constants_json_accepts() -> None:
    assert math.isnan(wire.loads(b"[NaN]")[0]) and wire.loads(b" [Infinity, -Infinity] \n") == [math.inf, -math.inf]


@pytest.mark.parametrize("bad", [b"", b" ", b"{", b"[1,]", b"1 2", b"nul", b'"\\x"', b"{'a': 1}", b"\xff"])
def test_not_json_is_a_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        wire.loads(bad)


def test_a_command_imports_neither_json_nor_re() -> None:
    """What the module is for: qsub and qstat load none of the costly modules."""
    code = ("import sys, schedd.cli.qsub, schedd.cli.qstat, schedd.cli.client, schedd.cli.getopts;"
            "print(sorted(m for m in ('json', 're', 'enum', 'getopt', 'gettext', 'urllib.parse', 'pathlib',"
            " 'typing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
