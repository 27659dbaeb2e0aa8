"""#PBS directives (schedd.cli.directives) and how qsub merges them with its command
line into the submit body (schedd.cli.qsub.parse / build_request), without a server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.cli import qsub
from schedd.cli.directives import prefix_of, scan

SCRIPT = """#!/bin/bash
# a comment before the directives
#PBS -N hello
#PBS -l select=1:ncpus=1:ngpus=1   # trailing comment
#PBS -l walltime=00:05:00

#PBS -W depend=afterok:12.srv -j oe
#PBSX -N not-a-directive
  #PBS -N indented-is-a-comment
echo "$CUDA_VISIBLE_DEVICES"
#PBS -N after-the-first-command
"""


def words(script: str, prefix: str = "#PBS") -> list[list[str]]:
    return [d.words for d in scan(script, prefix)]


def test_directives_stop_at_the_first_command() -> None:
    assert words(SCRIPT) == [
        ["-N", "hello"], ["-l", "select=1:ncpus=1:ngpus=1"], ["-l", "walltime=00:05:00"],
        ["-W", "depend=afterok:12.srv", "-j", "oe"],
    ]
    assert [d.line for d in scan(SCRIPT)] == [3, 4, 5, 7]


@pytest.mark.parametrize(("script", "prefix", "expected"), [
    ('#PBS -N "my name"\n', "#PBS", [["-N", "my name"]]),
    ("#PBS -v A='x,y'\n", "#PBS", [["-v", "A=x,y"]]),
    ("#PBS\n#PBS   \n#PBS -N a\n", "#PBS", [["-N", "a"]]),
    ("#PBS -N a\r\n#PBS -p 5\r\n", "#PBS", [["-N", "a"], ["-p", "5"]]),
    ("#$ -N sge\n#PBS -N pbs\n", "#$", [["-N", "sge"]]),
    ("#PBS -N a\n", "", []),                     # an empty prefix turns scanning off
    ("\n\n#PBS -N late-but-fine\n", "#PBS", [["-N", "late-but-fine"]]),
    ("set -e\n#PBS -N too-late\n", "#PBS", []),
    ("#PBS # only a comment\n", "#PBS", []),
])
def test_directive_lines(script: str, prefix: str, expected: list[list[str]]) -> None:
    assert words(script, prefix) == expected


def test_an_unbalanced_quote_names_the_line() -> None:
    with pytest.raises(ValueError) as e:
        scan("#!/bin/sh\n#PBS -N 'open\n")
    assert str(e.value) == "line 2: \"#PBS -N 'open\": No closing quotation"


@pytest.mark.parametrize(("option", "environ", "expected"), [
    (None, {}, "#PBS"), (None, {"PBS_DPREFIX": "#SBATCH"}, "#SBATCH"), ("#X", {"PBS_DPREFIX": "#Y"}, "#X"),
    ("", {}, ""), (None, {"PBS_DPREFIX": ""}, ""),
])
def test_prefix_precedence(option: str | None, environ: dict[str, str], expected: str) -> None:
    assert prefix_of(option, environ) == expected


# ------------------------------------------------------------------ qsub's merge, in process


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.delenv("PBS_DPREFIX", raising=False)
    return tmp_path


def body(cwd: Path, *argv: str, script: str | None = None, now: float = 1_800_000_000.0) -> dict[str, Any]:
    if script is not None:
        (cwd / "job.sh").write_text(script)
        argv = (*argv, "job.sh")
    args, part = qsub.parse(list(argv), dict(os.environ))
    out, block = qsub.build_request(args, str(cwd), now)
    out.update(part, block=block)
    return out


def test_directives_become_the_request(cwd: Path) -> None:
    b = body(cwd, script=SCRIPT)
    assert b["name"] == "hello"
    assert b["chunks"] == [{"ncpus": 1, "mem_mb": None, "ngpus": 1, "count": 1}]
    assert b["walltime_s"] == 300.0
    assert b["depend"] == [{"kind": "afterok", "ids": ["12"]}]
    assert b["join"] == "oe"
    assert b["script"] == SCRIPT and "argv" not in b
    assert b["workdir"] == str(cwd) and b["block"] is False


def test_the_command_line_wins_over_directives(cwd: Path) -> None:
    script = "#PBS -N fromscript\n#PBS -p 3\n#PBS -l walltime=01:00:00,select=1:ngpus=1\n#PBS -v A=1,B=2\nrun\n"
    b = body(cwd, "-N", "fromcli", "-l", "walltime=00:10:00", "-v", "B=cli", "-h", script=script)
    assert (b["name"], b["priority"], b["walltime_s"]) == ("fromcli", 3, 600.0)
    assert b["chunks"] == [{"ncpus": None, "mem_mb": None, "ngpus": 1, "count": 1}]  # the directive's select stays
    assert (b["env"]["A"], b["env"]["B"], b["hold"]) == ("1", "cli", True)


def test_c_and_pbs_dprefix_choose_the_prefix(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = "#PBS -N pbs\n#MY -N mine\nrun\n"
    assert body(cwd, script=script)["name"] == "pbs"
    assert body(cwd, "-C", "#MY", script=script)["name"] == "mine"
    assert body(cwd, "-C", "", script=script)["name"] == "job.sh"
    monkeypatch.setenv("PBS_DPREFIX", "#MY")
    assert body(cwd, script=script)["name"] == "mine"


def test_submit_environment_paths_and_flags(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ann")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("FROM_ENV", "yes")
    monkeypatch.delenv("TZ", raising=False)
    b = body(cwd, "-o", "logs/out.txt", "-e", "/abs/err.txt", "-v", "X=1,FROM_ENV", "-q", "1xgpu@srv", "-r", "n",
             "-A", "vision", "-S", "/bin/sh", "-J", "1-4%2", "-W", "block=true", "-p", "-5", "--", "/bin/echo", "hi")
    env = b["env"]
    assert env["PBS_O_WORKDIR"] == str(cwd) and env["PBS_O_HOME"] == "/home/ann" and env["PBS_O_LANG"] == "C.UTF-8"
    assert env["PBS_O_QUEUE"] == "1xgpu" and env["PBS_O_HOST"] == os.uname().nodename
    assert env["PBS_O_PATH"] == os.environ["PATH"] and env["PBS_O_SYSTEM"] == os.uname().sysname
    assert "PBS_O_TZ" not in env  # only where present
    assert (env["X"], env["FROM_ENV"]) == ("1", "yes") and "HOME" not in env  # no -V: only what was asked
    assert b["stdout_path"] == str(cwd / "logs" / "out.txt") and b["stderr_path"] == "/abs/err.txt"
    assert (b["queue"], b["rerunnable"], b["account"], b["shell"]) == ("1xgpu", False, "vision", "/bin/sh")
    assert (b["array"], b["block"], b["priority"], b["argv"], b["name"]) == ("1-4%2", True, -5, ["/bin/echo", "hi"], "STDIN")


def test_big_v_exports_everything_but_another_jobs_identity(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SETTING", "42")
    monkeypatch.setenv("PBS_JOBID", "7.old")       # qsub run from inside a job
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("RANK", "3")
    env = body(cwd, "-V", "--", "true")["env"]
    assert env["MY_SETTING"] == "42" and env["PBS_O_WORKDIR"] == str(cwd)
    assert not {"PBS_JOBID", "SLURM_JOB_ID", "RANK"} & set(env)


def test_a_and_project(cwd: Path) -> None:
    b = body(cwd, "-a", "202612312359", "-P", "proj", "--", "true")
    assert b["account"] == "proj" and b["eligible_time"] > 1_800_000_000.0 - 10 * 365 * 86400


def usage_error(cwd: Path, *argv: str, script: str | None = "echo hi\n") -> tuple[str | None, str]:
    with pytest.raises(qsub.UsageError) as e:
        body(cwd, *argv, script=script)
    return e.value.option, str(e.value)


@pytest.mark.parametrize(("argv", "script", "option", "message"), [
    (["-l", "walltime=1:2:3:4"], "x\n", "-l", "walltime: '1:2:3:4': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    ([], "#PBS -l walltime=forever\nx\n", "-l", "walltime: 'forever': expected [[HH:]MM:]SS, e.g. 01:30:00"),
    (["-W", "depend=beforeok:1"], "x\n", "-W", "depend=beforeok: beforeok dependencies are not supported yet; "
                                               "submit the later job with -W depend=afterok:ID instead"),
    (["-W", "block=maybe"], "x\n", "-W", "block=maybe: expected block=true or block=false"),
    (["-W", "stagein=a@b:c"], "x\n", "-W", "stagein: not supported by schedd (jobs read and write shared storage in place)"),
    (["-W", "color=red"], "x\n", "-W", "color: unknown attribute; schedd knows depend= and block="),
    (["-J", "5-1"], "x\n", "-J", "'5-1': the end must be greater than the start"),
    (["-p", "2000"], "x\n", "-p", "'2000': expected an integer from -1024 to 1023"),
    (["-p", "high"], "x\n", "-p", "'high': expected an integer from -1024 to 1023"),
    (["-j", "x"], "x\n", "-j", "'x': expected oe, eo or n"),
    (["-r", "maybe"], "x\n", "-r", "'maybe': expected y or n"),
    (["-N", "two words"], "x\n", "-N", "'two words': up to 236 printable characters, no white space or '/'"),
    (["-a", "25:00"], "x\n", "-a", "'25:00': expected [[[[CC]YY]MM]DD]hhmm[.SS], e.g. 202612312359.30"),
    (["-v", "1X=2"], "x\n", "-v", "'1X=2': expected VAR or VAR=value"),
    (["-S", "bash"], "x\n", "-S", "'bash': expected an absolute path, e.g. /bin/bash"),
    (["-q", "bad/queue"], "x\n", None, "illegally formed destination: bad/queue"),
    (["-I"], "x\n", None, "-I: schedd does not support interactive jobs"),
    (["-u", "bob"], "x\n", None, "-u: schedd does not support this option"),
    (["-A", "a", "-P", "b"], "x\n", None, "-A and -P: schedd has one account per job; give one of them"),
    (["-Q"], "x\n", None, "invalid option -- 'Q'"),
    (["-l"], None, None, "option requires an argument -- 'l'"),
    (["--verbose"], "x\n", None, "unrecognized option '--verbose'"),
    ([], "#PBS -Q\nx\n", None, "directive error: line 1: #PBS -Q: invalid option -- 'Q'"),
    ([], "#PBS --help\nx\n", None, "directive error: line 1: #PBS --help: unexpected --help"),
    ([], "#PBS -N a b\nx\n", None, "directive error: line 1: #PBS -N a b: unexpected b"),
    ([], "#PBS -N 'a\nx\n", None, "directive error: line 1: \"#PBS -N 'a\": No closing quotation"),
    ([], "", None, "script file is empty"),
    (["--"], None, None, "-- must be followed by a command"),
    (["missing.sh"], None, None, "script file missing.sh: No such file or directory"),
    (["a.sh", "b.sh"], None, None, "unexpected arguments after the script: b.sh"),
])
def test_usage_errors(cwd: Path, argv: list[str], script: str | None, option: str | None, message: str) -> None:
    assert usage_error(cwd, *argv, script=script) == (option, message)


def test_script_and_command_together_is_a_usage_error(cwd: Path) -> None:
    (cwd / "job.sh").write_text("x\n")
    assert usage_error(cwd, "job.sh", "--", "true", script=None) == (None, "give a script or -- command, not both")


def test_mail_options_are_ignored_with_a_warning(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = body(cwd, script="#PBS -m abe\n#PBS -M me@example.com\nx\n")
    assert "mail" not in str(sorted(b))
    err = capsys.readouterr().err
    assert "qsub: warning: -m is ignored" in err and "qsub: warning: -M is ignored" in err


@pytest.mark.parametrize(("job", "status"), [
    ({"state": "finished", "exit_status": 0, "start_time": 1.0, "finish_reason": "completed"}, 0),
    ({"state": "finished", "exit_status": 7, "start_time": 1.0, "finish_reason": "failed"}, 7),
    ({"state": "finished", "exit_status": 271, "start_time": 1.0, "finish_reason": "cancelled"}, 15),  # 256+SIGTERM
    ({"state": "finished", "exit_status": -29, "start_time": 1.0, "finish_reason": "timeout"}, 227),
    ({"state": "finished", "exit_status": None, "start_time": None, "finish_reason": "cancelled"}, 3),
])
def test_block_exit_status(job: dict[str, Any], status: int) -> None:
    assert qsub._exit_status(job) == status


class FakeClient:
    """An older server: no long-poll route; the job finishes on the third look."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        from schedd.cli.client import ApiError

        self.calls.append(path)
        if path.endswith("/wait?timeout_s=30"):
            raise ApiError(404, "not_found", "Not Found")
        looks = len(self.calls) - 1
        return {"job": {"state": "finished" if looks == 3 else "running", "exit_status": 4, "start_time": 1.0}}


def test_block_falls_back_to_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(time, "sleep", lambda s: None)
    fake = FakeClient()
    assert qsub._block(fake, "5[]") == 4  # type: ignore[arg-type]
    assert fake.calls == ["/api/v1/jobs/5%5B%5D/wait?timeout_s=30"] + ["/api/v1/jobs/5%5B%5D"] * 3


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\r\n\x0b\x0c\x1c\"'\\#=:ab-é\u2003")), max_size=20))
def test_directive_words_split_as_shlex_does(text: str) -> None:
    """The fast path for lines without quotes (issue #12) splits as shlex would."""
    import shlex

    from schedd.cli.directives import _words

    try:
        expected: list[str] | str = shlex.split(text, comments=False, posix=True)
    except ValueError:
        expected = "error"
    try:
        got: list[str] | str = _words(text)
    except ValueError:
        got = "error"
    assert got == expected
