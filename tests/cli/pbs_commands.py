"""Running the installed PBS commands (console scripts) against a real daemon.

Shared by test_qsub.py and test_qdel_family.py: one daemon per test module
(starting one costs seconds on a loaded machine), each test in its own
directory. Every wait is for a condition read from the API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.integration.conftest import ROOT, Daemon, _kill_leftovers

BIN = Path(sys.executable).parent  # the venv's bin: qsub, qdel... are console scripts there
COMMANDS = ("qsub", "qdel", "qhold", "qrls", "qalter", "qsig", "qrerun")


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SCHEDD_TOKEN", "PBS_DPREFIX")}
    env.update(SCHEDD_URL=url, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def q(daemon: Daemon, cwd: Path, *argv: str, stdin: str | None = None, url: str | None = None,
      **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run one command (``argv[0]`` is its name) as a user would, in ``cwd``."""
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, input=stdin, capture_output=True, text=True,
                          env=env_for(url or daemon.url, **extra_env), timeout=120)


def sh(daemon: Daemon, cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    """A shell line, e.g. ``jid=$(qsub a.sh); qsub -W depend=afterok:$jid b.sh``."""
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          env=env_for(daemon.url), timeout=120)


def seq(job_id: str) -> str:
    """``17.testsrv`` -> ``17``; ``17[].testsrv`` -> ``17[]``."""
    return job_id.strip().split(".", 1)[0]


def token(daemon: Daemon, user: str) -> str:
    out = subprocess.run([str(BIN / "schedd"), "token", "create", user, "--config", str(daemon.config)],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    return out.stdout.strip()


def module_daemon(tmp: Path) -> Iterator[Daemon]:
    d = Daemon(tmp).start()
    try:
        yield d
    finally:
        d.stop()
        _kill_leftovers(d.state)
