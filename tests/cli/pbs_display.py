"""Running qstat / qnodes / qacct (the installed console scripts) against a real daemon.

Shared by test_qstat.py, test_qnodes.py and test_qacct.py. Golden files live in
tests/cli/golden/; ``UPDATE_GOLDEN=1`` rewrites them from the current output.
Outputs are normalized with small explicit substitutions (dates, durations,
paths, the user running the tests) — never by dropping lines.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import ROOT, Daemon

BIN = Path(sys.executable).parent  # the venv's bin: qstat, qnodes, qacct are console scripts there
GOLDEN = Path(__file__).parent / "golden"
USER = getpass.getuser()

# ctime(): "Sun Nov 29 16:54:43 2026"; the comment's "Sun Nov 29 at 16:54".
CTIME = re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                   r"[ \d]\d \d\d:\d\d:\d\d \d{4}\b")
RUN_AT = re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                    r"\d\d at \d\d:\d\d\b")


def run(url: str, *argv: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """One command as a user runs it (``argv[0]`` is qstat, qnodes or qacct)."""
    env = {k: v for k, v in os.environ.items() if k != "SCHEDD_TOKEN"}
    env["SCHEDD_URL"] = url
    if token:
        env["SCHEDD_TOKEN"] = token
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=env, timeout=120,
                          cwd=ROOT)


def ok(url: str, *argv: str) -> str:
    out = run(url, *argv)
    assert out.returncode == 0, f"{argv}: rc={out.returncode}\n{out.stderr}"
    assert out.stderr == "", out.stderr
    return out.stdout


def token(daemon: Daemon, user: str, role: str = "user") -> str:
    out = subprocess.run([str(BIN / "schedd"), "token", "create", user, "--role", role, "--config",
                          str(daemon.config)], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    return out.stdout.strip()


def user_column(width: int) -> tuple[str, str]:
    """The test user as a column of ``width`` shows it, and its stand-in (same width)."""
    shown = USER if len(USER) <= width else USER[: width - 1] + "*"
    return shown.ljust(width), "USER".ljust(width)


def normalize(text: str, tmp: Path, *subs: tuple[str, str]) -> str:
    """Dates -> DATE, the test's directory -> TMP, then the caller's exact substitutions."""
    text = CTIME.sub("DATE", text)
    text = RUN_AT.sub("DAY at HH:MM", text)
    text = text.replace(str(tmp), "TMP")
    for old, new in subs:
        text = text.replace(old, new)
    return text


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs:\n{text}"
