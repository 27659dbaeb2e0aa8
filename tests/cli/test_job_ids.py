"""Job id operands are read by hand (schedd.cli.common.parse_job_id, no ``re`` on
the per-job commands' path): exactly as the regular expression they replace."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.cli.common import parse_job_id

#: The specification: what the commands accepted with ``re``.
REFERENCE = re.compile(r"^(\d{1,18})(\[(\d{0,9})(?:-(\d{1,9}))?\])?(?:\.[A-Za-z0-9_.-]+)?(?:@[A-Za-z0-9_.-]+)?$")


def by_the_reference(text: str) -> tuple[str, str | None, str | None, str | None] | None:
    m = REFERENCE.match(text.strip())
    if m is None or (m[4] is not None and (not m[3] or int(m[4]) < int(m[3]))):
        return None
    return m[1], m[2], m[3], m[4]


def by_hand(text: str) -> tuple[str, str | None, str | None, str | None] | None:
    try:
        op = parse_job_id(text)
    except ValueError as e:
        assert str(e) == f"illegally formed job identifier: {text}"
        return None
    assert op.text == text
    return op.number, op.bracket, op.first, op.last


#: Characters that matter to the grammar, and some that do not belong.
NOISE = st.text(st.sampled_from(list("0123456789[]-.@_aZ \t\n\u0663\u00b2+/")), max_size=30)
DIGITS = st.text(st.sampled_from(list("0123456789\u0663")), min_size=0, max_size=20)
NAMES = st.text(st.sampled_from(list("abzAZ09_.-@[")), min_size=0, max_size=8)
SHAPED = st.builds(lambda n, b, f, d, t, s, h: n + (f"[{f}{d}{t}]" if b else "") + s + h,
                   DIGITS, st.booleans(), DIGITS, st.sampled_from(["", "-"]), DIGITS,
                   st.sampled_from(["", "."]).flatmap(lambda dot: NAMES.map(lambda x: dot + x)),
                   st.sampled_from(["", "@"]).flatmap(lambda at: NAMES.map(lambda x: at + x)))


@settings(max_examples=3000, deadline=None)
@given(NOISE | SHAPED)
def test_read_as_the_regular_expression_reads_it(text: str) -> None:
    assert by_hand(text) == by_the_reference(text)


@pytest.mark.parametrize("text", ["17", " 17.srv ", "17[]", "17[3]@h", "17[2-4].a.b@c-d", "0[0]", "1" * 18,
                                  "1" * 19, "17[", "17[-3]", "17[4-2]", "17.", "17@", "17.s@", "17x", "", "[3]",
                                  "17[3]]", "17[1-2-3]", "\u0663\u0661"])
def test_examples(text: str) -> None:
    assert by_hand(text) == by_the_reference(text)
