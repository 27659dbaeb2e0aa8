"""schedd.cli.getopts against the standard getopt (issue #12): the commands' own
copy of the algorithm must give the same options, operands and errors."""

from __future__ import annotations

import getopt as std

from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.cli import getopts

SHORT = "a:bcW:x"
LONG = ["help", "env=", "envelope", "verbose"]
WORDS = st.sampled_from(["-a", "-ab", "-b", "-bc", "-bcW", "-Wforce", "-x", "-z", "-", "--", "--help", "--he",
                         "--env", "--env=", "--env=x", "--en", "--envelope", "--verb", "--verbose=1", "--nope",
                         "17", "job.sh", "", "-c17", "-W"])


def outcome(fn, exc, argv: list[str], long: list[str]):  # type: ignore[no-untyped-def]
    try:
        return fn(argv, SHORT, long)
    except exc as e:
        return ("error", e.msg, e.opt)


@settings(max_examples=400, deadline=None)
@given(st.lists(WORDS, max_size=6), st.booleans())
def test_same_result_as_the_standard_getopt(argv: list[str], with_long: bool) -> None:
    long = LONG if with_long else []
    assert outcome(getopts.getopt, getopts.GetoptError, argv, long) == outcome(std.getopt, std.GetoptError, argv, long)


def test_the_examples_the_commands_rely_on() -> None:
    assert getopts.getopt(["-Wforce", "-x", "17", "-x"], "W:x") == ([("-W", "force"), ("-x", "")], ["17", "-x"])
    assert getopts.getopt(["--env=auto", "--", "-x"], "x", ["env="]) == ([("--env", "auto")], ["-x"])
