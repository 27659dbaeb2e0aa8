"""`pip install schedd` (no extras) gives working commands: they import only the standard library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["qsub", "qstat", "qdel", "qhold", "qrls", "qalter", "qsig", "qrerun", "qnodes", "qacct"]


def test_every_command_imports_without_site_packages() -> None:
    """``-S`` leaves site-packages out: aiohttp, msgspec and the rest are not importable."""
    code = ("import importlib, sys\n"
            f"for name in {COMMANDS!r}: importlib.import_module('schedd.cli.' + name)\n"
            "import schedd.main\n"
            "assert 'msgspec' not in sys.modules and 'aiohttp' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr


def test_the_pbs_commands_answer_help_without_site_packages() -> None:
    out = subprocess.run([sys.executable, "-S", "-m", "schedd.cli.qsub", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "qsub" in out.stdout, out.stderr
