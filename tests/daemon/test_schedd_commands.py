"""`schedd config check` and `schedd completion`: generated from the parsers, checked by bash itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schedd.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_config_check_prints_what_it_would_run_with(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--policies", str(ROOT / "examples" / "schedd-sjf" / "policies.toml")]) == 0
    out = capsys.readouterr().out
    assert "queue 1xgpu:" in out and "sjf: plugin schedd_sjf:ShortestFirst" in out and "limits: shipped" in out
    assert "pool.toml" in out and out.endswith("ok\n")


@pytest.mark.parametrize(("flag", "text", "named"), [
    ("--config", 'default_queue = "nope"\n', "default_queue: 'nope' is not a queue"),
    ("--policies", "[backfill]\nmode = \"eazy\"\n", "backfill.mode: must be one of none, easy, conservative"),
    ("--policies", "[sjf]\nby = 3\n", "sjf.by"),
    ("--pool", 'driver = "local"\n[[groups]]\ncount = -1\n', "groups"),
])
def test_config_check_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        flag: str, text: str, named: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    assert main(["config", "check", flag, str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and named in err


def _script(shell: str) -> str:
    return subprocess.run([sys.executable, "-m", "schedd.main", "completion", shell], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout


def _complete(script: str, line: str) -> list[str]:
    words = line.split(" ")
    prog = (script + f'\nCOMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n'
            '_schedd_complete; printf "%s\\n" "${COMPREPLY[@]}"\n')
    return subprocess.run(["bash", "-c", prog], capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_follows_the_parsers() -> None:
    script = _script("bash")
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert _complete(script, "schedd to") == ["token"]
    assert sorted(_complete(script, "schedd token ")) == ["create", "list", "revoke"]
    assert _complete(script, "schedd serve --log-format j") == ["json"]
    assert "--policies" in _complete(script, "schedd config check --")
    assert "--env" in _complete(script, "qsub --e")  # from qsub's own --help parser
    assert "-u" in _complete(script, "qstat -")  # qstat prints its help itself: its flags
    assert _complete(script, "schedd completion ") == ["bash", "zsh"]


def test_zsh_completion_is_the_bash_table_through_bashcompinit() -> None:
    script = _script("zsh")
    assert "bashcompinit" in script and "complete -o default -F _schedd_complete schedd qsub" in script
