"""A user's session against the real daemon and agents: jobs run for real."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Daemon, wait_for


def test_script_runs_with_its_gpus_and_writes_pbs_output(daemon: Daemon, tmp_path: Path) -> None:
    script = "#!/bin/bash\necho gpus=$CUDA_VISIBLE_DEVICES id=$PBS_JOBID\necho err >&2\nexit 3\n"
    jid = daemon.submit(script=script, name="hello", queue="1xgpu")
    job = daemon.wait_state(jid, "finished")
    assert (job["exit_status"], job["finish_reason"]) == (3, "failed")
    out = Path(job["stdout_path"])
    assert out == tmp_path / f"hello.o{jid}"
    gpu = job["exec_nodes"][0]["gpus"]
    assert out.read_text() == f"gpus={gpu[0]} id={jid}.testsrv\n"
    assert (tmp_path / f"hello.e{jid}").read_text() == "err\n"


def test_two_one_gpu_jobs_on_one_node_see_different_gpus(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=1, gpus=2).start()
    try:
        ids = [d.submit(argv=["bash", "-c", "echo $CUDA_VISIBLE_DEVICES; sleep 1"], queue="1xgpu", name=f"g{i}") for i in range(2)]
        seen = set()
        for jid in ids:
            job = d.wait_state(jid, "finished")
            assert job["exit_status"] == 0
            seen.add(Path(job["stdout_path"]).read_text().strip())
        assert seen == {"0", "1"}
    finally:
        d.stop()


def test_cancel_kills_a_tree_that_ignores_sigterm(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    script = f"trap '' TERM\n(trap '' TERM; echo $BASHPID > {marker}; exec sleep 300) &\nsleep 300\nwait\n"
    jid = daemon.submit(script=script, name="stubborn")
    daemon.wait_state(jid, "running")
    wait_for("child pid file", lambda: marker.exists() and marker.read_text().strip())
    child = int(marker.read_text())
    daemon.client.call("DELETE", f"/api/v1/jobs/{jid}")
    job = daemon.wait_state(jid, "finished")
    assert job["finish_reason"] == "cancelled"
    assert job["exit_status"] == 256 + 9
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()


def test_walltime_kill_records_minus_29(daemon: Daemon) -> None:
    jid = daemon.submit(argv=["sleep", "300"], walltime_s=1.0, name="slow")
    job = daemon.wait_state(jid, "finished")
    assert (job["exit_status"], job["finish_reason"]) == (-29, "timeout")


def test_afterok_chain_and_array(daemon: Daemon, tmp_path: Path) -> None:
    first = daemon.submit(argv=["true"], name="a")
    second = daemon.submit(argv=["bash", "-c", "echo ran"], name="b", depend=[{"kind": "afterok", "ids": [first]}])
    arr = daemon.submit(argv=["bash", "-c", "echo $PBS_ARRAY_INDEX"], name="arr", array="1-4%2")
    assert daemon.wait_state(second, "finished")["exit_status"] == 0
    parent = daemon.wait_state(arr, "finished")
    assert parent["exit_status"] == 0
    num = arr.split("[")[0]
    assert sorted((tmp_path / f"arr.o{num}.{i}").read_text() for i in range(1, 5)) == ["1\n", "2\n", "3\n", "4\n"]


def test_gang_job_gets_rendezvous_variables(daemon: Daemon, tmp_path: Path) -> None:
    script = "echo $RANK/$WORLD_SIZE $MASTER_ADDR:$MASTER_PORT >> " + str(tmp_path / "ranks.txt") + "\n"
    jid = daemon.submit(script=script, chunks=[{"ncpus": 1, "ngpus": 4, "count": 2}], name="gang")
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == 0 and len({c["node"] for c in job["exec_nodes"]}) == 2
    lines = sorted((tmp_path / "ranks.txt").read_text().split("\n")[:-1])
    assert [l.split()[0] for l in lines] == ["0/2", "1/2"] and len({l.split()[1] for l in lines}) == 1


def test_gang_failure_kills_the_other_rank(daemon: Daemon) -> None:
    script = 'if [ "$RANK" = 1 ]; then exit 7; fi; sleep 300\n'
    jid = daemon.submit(script=script, chunks=[{"ncpus": 1, "ngpus": 1, "count": 2}], name="gangfail")
    job = daemon.wait_state(jid, "finished")
    assert job["exit_status"] == 7 and job["finish_reason"] == "failed"


def test_memory_over_the_request_is_killed_minus_27(daemon: Daemon) -> None:
    hog = "import time; x = bytearray(300 * 1024 * 1024); x[::4096] = b'x' * len(x[::4096]); time.sleep(60)"
    jid = daemon.submit(argv=["python3", "-c", hog], chunks=[{"ncpus": 1, "mem_mb": 64}], name="hog")
    job = daemon.wait_state(jid, "finished")
    assert (job["exit_status"], job["finish_reason"]) == (-27, "out_of_memory")


def test_signal_reaches_the_job(daemon: Daemon, tmp_path: Path) -> None:
    got = tmp_path / "got"
    ready = tmp_path / "ready"
    script = f"trap 'echo usr1 > {got}; exit 0' USR1\ntouch {ready}\nwhile true; do sleep 0.05; done\n"
    jid = daemon.submit(script=script, name="sig")
    wait_for("the trap to be set", ready.exists)
    daemon.client.call("POST", f"/api/v1/jobs/{jid}/signal", {"signal": "USR1"})
    assert daemon.wait_state(jid, "finished")["exit_status"] == 0
    assert got.read_text() == "usr1\n"
