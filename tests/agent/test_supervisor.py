"""nodeagent.supervisor: one rank from spawn to exit.json, enforced on its own."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from nodeagent import proctree
from nodeagent.jobdir import STARTED, write_control
from schedd.protocol import EXIT_LAUNCH_FAILED, EXIT_MEM, EXIT_RERUN, EXIT_WALLTIME, Kill, Signal
from tests.agent.conftest import Fifo, Sup, gone, identity, launch, py, run


def test_exit_code_and_separate_outputs(tmp_path: Path) -> None:
    exited = run(tmp_path, launch(tmp_path, script="echo to-out; echo to-err >&2; exit 7"))
    assert (exited.status, exited.how, exited.job_id, exited.attempt, exited.rank) == (7, "exited", "7.srv", 0, 0)
    assert (tmp_path / "out.txt").read_text() == "to-out\n"
    assert (tmp_path / "err.txt").read_text() == "to-err\n"
    assert exited.end_time >= exited.start_time > 0
    assert (tmp_path / "job" / STARTED).exists()


def test_the_started_record_names_the_job_as_proc_does_and_the_log_says_what_ran(tmp_path: Path) -> None:
    """The job's create time in started.json, taken from the clock around its fork, is
    the one /proc gives (the agent trusts a pid only with it); the rank's log line
    at its end is laid out as the supervisor's other lines."""
    up, go = Fifo(tmp_path / "up"), Fifo(tmp_path / "go")
    sup = Sup(tmp_path / "job", launch(tmp_path, script=f"echo up > {up.path}; read x < {go.path}; exit 3"))
    assert up.readline() == "up"
    deadline = time.monotonic() + 30
    while (started := sup.started()) is None and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for a condition: the record follows the job's exec by a few syscalls
    assert started is not None and started.create_time == proctree.create_time(started.pid)
    go.write("go\n")
    assert sup.wait().status == 3
    last = (tmp_path / "job" / "supervisor.log").read_text().splitlines()[-1]
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} supervisor\[{sup.proc.pid}\] INFO exit recorded: status 3 \(exited\) ; "
                        rf"pid {started.pid} ran /bin/bash \S+/script", last), last


def test_a_create_time_from_the_clock_around_a_fork_is_procs() -> None:
    """proctree.created_between: for processes forked between two readings of the boot
    clock in one tick, exactly the create time /proc shows; None across a tick."""
    told = 0
    for _ in range(200):
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        pid = os.posix_spawn("/bin/true", ["/bin/true"], {})
        created = proctree.created_between(before, time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        try:
            if created is not None:
                assert created == proctree.create_time(pid)
                told += 1
        finally:
            os.waitpid(pid, 0)
    assert told > 0
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert proctree.created_between(5 * tick - 1, 5 * tick) is None


def test_joined_output_is_one_file(tmp_path: Path) -> None:
    out = str(tmp_path / "joined.txt")
    exited = run(tmp_path, launch(tmp_path, script="echo a; echo b >&2; echo c", stdout_path=out, stderr_path=out))
    assert exited.status == 0
    assert (tmp_path / "joined.txt").read_text() == "a\nb\nc\n"


def test_environment(tmp_path: Path) -> None:
    code = (
        "import json, os, sys\n"
        "env = dict(os.environ)\n"
        "env['_tmp_is_dir'] = os.path.isdir(env['TMPDIR'])\n"
        "env['_nodefile'] = open(env['PBS_NODEFILE']).read()\n"
        "env['_cwd'] = os.getcwd()\n"
        "json.dump(env, sys.stdout)\n"
    )
    msg = launch(tmp_path, argv=py(code), gpus=[1, 3], ncpus=6, rank=1, nodes=["n0", "n1"],
                 env={"PBS_JOBNAME": "from-schedd", "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    exited = run(tmp_path, msg)
    assert exited.status == 0, (tmp_path / "err.txt").read_text()
    env = json.loads((tmp_path / "out.txt").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"  # the node decides, not spec.env
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["PBS_JOBID"] == "7.srv" and env["SLURM_JOB_ID"] == "7"
    assert env["PBS_JOBNAME"] == "from-schedd"  # given by schedd: kept
    assert env["WORLD_SIZE"] == "2"
    assert env["PBS_QUEUE"] == "batch" and env["PBS_ENVIRONMENT"] == "PBS_BATCH"
    assert env["NCPUS"] == env["OMP_NUM_THREADS"] == env["SLURM_CPUS_ON_NODE"] == "6"
    assert env["PBS_NODENUM"] == env["PBS_TASKNUM"] == env["SLURM_PROCID"] == env["SLURM_NODEID"] == "1"
    assert env["SLURM_NTASKS"] == "2" and env["SLURM_JOB_NODELIST"] == "n0,n1"
    assert env["PBS_O_WORKDIR"] == env["SLURM_SUBMIT_DIR"] == env["_cwd"] == str(tmp_path)
    assert env["_nodefile"] == "n0\nn1\n"
    assert env["_tmp_is_dir"] is True
    assert not Path(env["TMPDIR"]).exists()  # removed once the job ended
    assert not Path(env["PBS_NODEFILE"]).exists()


def test_no_gpus_means_an_empty_cuda_visible_devices(tmp_path: Path) -> None:
    code = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    assert run(tmp_path, launch(tmp_path, argv=py(code), gpus=[])).status == 0
    assert (tmp_path / "out.txt").read_text() == "''\n"


def test_walltime(tmp_path: Path) -> None:
    t0 = time.monotonic()
    exited = run(tmp_path, launch(tmp_path, script="sleep 30", walltime_s=1.0, kill_delay_s=0.5))
    assert (exited.status, exited.how) == (EXIT_WALLTIME, "walltime")
    assert "walltime" in exited.comment
    assert time.monotonic() - t0 < 15  # 1 s of walltime, not the 30 s of sleep


def test_warning_signal_before_walltime(tmp_path: Path) -> None:
    script = "trap 'echo warned' USR1\nsleep 30 & wait\nsleep 30 & wait\n"
    # the warning comes 1 s after the start: bash has installed its trap by then, even on a loaded machine
    exited = run(tmp_path, launch(tmp_path, script=script, walltime_s=3.0, warn_signal="USR1", warn_before_s=2.0))
    assert exited.status == EXIT_WALLTIME
    assert (tmp_path / "out.txt").read_text() == "warned\n"


def test_memory(tmp_path: Path) -> None:
    code = "import time\nblock = b'x' * (200 << 20)\ntime.sleep(60)\n"
    t0 = time.monotonic()
    exited = run(tmp_path, launch(tmp_path, argv=py(code), mem_mb=50))
    assert (exited.status, exited.how) == (EXIT_MEM, "memory")
    assert exited.peak_rss_mb > 50
    assert "50 MB" in exited.comment
    assert time.monotonic() - t0 < 20


# A leader that ignores SIGTERM and a grandchild that escapes its group and its
# parent (double fork + setsid); both report their pid on the FIFO when ready.
ESCAPER = """
import os, signal, sys, time
fifo = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        with open(fifo, "w") as f:
            f.write(f"{os.getpid()}\\n")
        while True:
            time.sleep(1)
    os._exit(0)
os.wait()
with open(fifo, "w") as f:
    f.write(f"{os.getpid()}\\n")
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("subreaper", [True, False], ids=["subreaper", "cookie-sweep"])
@pytest.mark.parametrize("status", [None, EXIT_RERUN], ids=["plain", "requeue"])
def test_kill_leaves_no_survivor(tmp_path: Path, subreaper: bool, status: int | None) -> None:
    fifo = Fifo(tmp_path / "fifo")
    sup = Sup(tmp_path / "job", launch(tmp_path, argv=py(ESCAPER, str(fifo.path))), subreaper=subreaper,
              sample_interval_s=0.1)
    procs = {identity(int(fifo.readline())), identity(int(fifo.readline()))}
    sup.kill(delay_s=0.3, status=status)
    exited = sup.wait()
    assert exited.how == "killed"
    assert exited.status == (status if status is not None else 256 + signal.SIGKILL)
    assert all(gone(p) for p in procs), procs


def test_kill_of_a_job_that_obeys_sigterm(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    sup = Sup(tmp_path / "job", launch(tmp_path, script=f"echo ready > {fifo.path}; sleep 30 & wait", kill_delay_s=30))
    assert fifo.readline() == "ready"
    t0 = time.monotonic()
    sup.kill(delay_s=30)
    exited = sup.wait()
    assert (exited.status, exited.how) == (256 + signal.SIGTERM, "killed")
    assert time.monotonic() - t0 < 15  # it died of SIGTERM: no 30 s grace wait


def test_signal_request(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    script = f"trap 'exit 5' USR1\necho ready > {fifo.path}\nsleep 30 & wait\n"
    sup = Sup(tmp_path / "job", launch(tmp_path, script=script))
    assert fifo.readline() == "ready"
    sup.request(Signal(job_id="7.srv", attempt=0, rank=0, signal="USR1"))
    exited = sup.wait()
    assert (exited.status, exited.how) == (5, "exited")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_by_a_signal_records_256_plus_n(tmp_path: Path, sig: signal.Signals) -> None:
    exited = run(tmp_path, launch(tmp_path, script=f"kill -{sig.name[3:]} $$"))
    assert (exited.status, exited.how) == (256 + sig, "signaled")
    assert sig.name in exited.comment


def test_missing_workdir_is_a_launch_failure(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    exited = run(tmp_path, launch(tmp_path, workdir=str(missing)))
    assert (exited.status, exited.how) == (EXIT_LAUNCH_FAILED, "launch_failed")
    assert str(missing) in exited.comment and "does not exist" in exited.comment
    assert not (tmp_path / "job" / STARTED).exists()


def test_missing_executable_is_a_launch_failure(tmp_path: Path) -> None:
    exited = run(tmp_path, launch(tmp_path, argv=[str(tmp_path / "no-such-binary")]))
    assert (exited.status, exited.how) == (EXIT_LAUNCH_FAILED, "launch_failed")
    assert "no-such-binary" in exited.comment and "No such file" in exited.comment


def test_unwritable_output_is_a_launch_failure(tmp_path: Path) -> None:
    exited = run(tmp_path, launch(tmp_path, stdout_path=str(tmp_path / "no-dir" / "out")))
    assert exited.status == EXIT_LAUNCH_FAILED and "no-dir" in exited.comment


def test_kill_before_start(tmp_path: Path) -> None:
    """A kill queued before the supervisor looked: the job never starts."""
    msg = launch(tmp_path, script="echo ran")
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    write_control(jobdir, Kill(job_id="7.srv", attempt=0, rank=0, status=EXIT_RERUN))
    exited = Sup(jobdir, msg).wait()
    assert (exited.status, exited.how) == (EXIT_RERUN, "killed")
    assert not (jobdir / STARTED).exists() and not (tmp_path / "out.txt").exists()


def test_sigterm_to_the_supervisor_kills_the_job(tmp_path: Path) -> None:
    fifo = Fifo(tmp_path / "fifo")
    sup = Sup(tmp_path / "job", launch(tmp_path, script=f"echo ready > {fifo.path}; sleep 30 & wait"))
    assert fifo.readline() == "ready"
    sup.proc.terminate()
    exited = sup.wait()
    assert exited.how == "killed" and "SIGTERM" in exited.comment


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="needs root and a 'nobody' user")
def test_runs_as_the_job_user_when_root(tmp_path: Path) -> None:
    public = Path(tempfile.mkdtemp(prefix="schedd-test-"))  # tmp_path is root-only
    try:
        public.chmod(0o777)
        script = 'id -un; touch "$TMPDIR/x" && echo tmp-ok; echo "$USER $HOME"; test -r "$PBS_NODEFILE" && echo nodes-ok'
        msg = launch(public, script=script, user="nobody", workdir=str(public))
        exited = run(tmp_path, msg)
        assert exited.status == 0, (public / "err.txt").read_text()
        nobody = _nobody()
        assert nobody is not None
        assert (public / "out.txt").read_text() == f"nobody\ntmp-ok\nnobody {nobody.pw_dir}\nnodes-ok\n"
        assert (public / "out.txt").stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(public)


def test_unknown_user_as_root_is_a_launch_failure(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root switches users")
    exited = run(tmp_path, launch(tmp_path, user="no-such-user-here"))
    assert exited.status == EXIT_LAUNCH_FAILED and "no-such-user-here" in exited.comment
