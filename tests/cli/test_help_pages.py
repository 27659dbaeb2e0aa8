"""Every command's --help is a man page in short: a usage synopsis, its options
(each with a line of help), examples and exit codes; and it exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = ("qsub", "qstat", "qdel", "qhold", "qrls", "qalter", "qsig", "qrerun", "qnodes", "qacct", "qmetrics",
            "qpeek", "schedd", "nodeagent")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_has_synopsis_options_examples_and_exit_codes(cmd: str) -> None:
    out = subprocess.run([str(BIN / cmd), "--help"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("usage:") and cmd in "".join(text.splitlines()[:2]), text[:200]  # PBS's own synopses too
    assert re.search(r"^\s+-", text, re.M), f"{cmd}: no options listed"
    assert re.search(r"^examples:\n\s+\S", text, re.M | re.I), f"{cmd}: no examples section"
    assert re.search(r"^exit (codes|status):", text, re.M | re.I), f"{cmd}: no exit codes section"
