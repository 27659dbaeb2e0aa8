"""qstat's layouts on hand-made jobs: PBS's widths, truncation, wrapping and dates, exactly.

The expected texts are PBS's own (the reference's examples, generated with
qstat.c's format strings); the daemon-backed goldens are in test_qstat.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

from schedd.cli.pbsfmt import attrs_json, attrs_text, hms, trunc
from schedd.cli.qstat_attrs import Context, comment, job_attrs, ranges
from schedd.cli.qstat_format import alt_table, cnv_size, default_table, est_start, queue_table, rows, server_table

NOW = 1_800_000_000.0


def job(jid: str, name: str, owner: str, queue: str, state: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": jid, "name": name, "owner": owner, "queue": queue, "state": state, "account": "default",
        "chunks": [{"ncpus": 1, "mem_mb": 0, "ngpus": 0, "count": 1}], "walltime_s": 3600.0,
        "submit_time": NOW - 100, "workdir": "/home/u", "stdout_path": "/home/u/x.o1", "stderr_path": "/home/u/x.e1",
        "holds": "", "attempt": 0, "reason": None, "comment": "", "planned_start": None, "start_time": None,
        "end_time": None, "exit_status": None, "finish_reason": None, "exec_nodes": [], "env": {}, "depend": [],
        "used": {"cpu_s": 0.0, "peak_rss_mb": 0, "gpu_s": 0.0, "gpu_util_pct": 0.0}, "priority": 0,
    }
    base.update(kw)
    return base


def ctx(nodes: list[dict[str, Any]] | None = None, **subjobs: list[dict[str, Any]]) -> Context:
    c = Context("sched", nodes, dict(subjobs))
    c.now = NOW
    return c


def test_default_layout_is_the_reference_example_byte_for_byte() -> None:
    jobs = [
        job("1042", "train-resnet50", "alice", "1xgpu", "running", start_time=NOW - 900, used={"cpu_s": 751.0}),
        job("1043[]", "hparam-sweep", "alice", "2xgpu", "running", start_time=NOW - 900),
        job("1044", "preprocess", "bob", "cpu", "queued"),
        job("1045", "eval-ckpt", "bob", "1xgpu", "held"),
        job("1046", "llama-finetune-13b", "carol", "8xgpu", "running", start_time=NOW, used={"cpu_s": 43495.0}),
    ]
    assert default_table(rows(jobs, ctx()), "sched") == (
        "Job id            Name             User              Time Use S Queue\n"
        "----------------  ---------------- ----------------  -------- - -----\n"
        "1042.sched        train-resnet50   alice             00:12:31 R 1xgpu           \n"
        "1043[].sched      hparam-sweep     alice                    0 B 2xgpu           \n"
        "1044.sched        preprocess       bob                      0 Q cpu             \n"
        "1045.sched        eval-ckpt        bob                      0 H 1xgpu           \n"
        "1046.sched        llama-finetune-* carol             12:04:55 R 8xgpu           \n"
    )


def test_default_truncation_marks_each_column_with_a_star() -> None:
    j = job("123456789012345", "n" * 16, "u" * 17, "q" * 17, "running", start_time=NOW,
            used={"cpu_s": 3876 * 3600.0 + 18 * 60})
    row = default_table(rows([j], ctx()), "server.example.org").splitlines()[2]
    jid, name, user, used, state, queue = row.split()
    assert (jid, name, user, used, state, queue) == ("123456789012345.*", "n" * 15 + "*", "u" * 15 + "*",
                                                     "3876:18*", "R", "q" * 15 + "*")
    assert default_table(rows([job("7", "n" * 15, "u", "q", "queued")], ctx()), "s").splitlines()[2].split()[1] == \
        "n" * 15


def test_nothing_at_all_when_no_job_matches() -> None:
    assert default_table([], "sched") == ""
    assert alt_table([], ctx()) == ""


def test_wide_layout() -> None:
    text = default_table(rows([job("17", "a-rather-long-job-name", "alice", "default", "queued")], ctx()), "sched",
                         wide=True)
    assert text.splitlines() == [
        "Job id                         Name            User             Time Use S Queue",
        "-----------------------------  --------------- ---------------  -------- - ---------------",
        "17.sched                       a-rather-long-* alice                   0 Q default        ",
    ]


def test_alternate_layout_like_the_reference_capture() -> None:
    j = job("315230", "job.pbs", "z1234567", "general1", "running", start_time=NOW - 200, walltime_s=3600.0,
            chunks=[{"ncpus": 1, "mem_mb": 1024, "ngpus": 0, "count": 1}],
            exec_nodes=[{"node": "k019", "ncpus": 1, "mem_mb": 1024, "gpus": []}])
    c = Context("kman.restech.unsw.edu.au")
    c.now = NOW
    text = alt_table([j], c, nodes=True)
    assert text == (
        "\nkman.restech.unsw.edu.au: \n"
        "                                                            Req'd  Req'd   Elap\n"
        "Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n"
        "--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n"
        "315230.kman.re* z1234567 general1 job.pbs       --    1   1    1gb 01:00 R 00:03\n"
        "   k019/0*1\n"
    )


def test_est_start_column_sorts_running_first_then_by_estimate() -> None:
    c = ctx()
    soon = job("3", "later", "bob", "gpu", "queued", planned_start=NOW + 600)
    sooner = job("2", "sooner", "bob", "gpu", "queued", planned_start=NOW + 60)
    unknown = job("4", "unknown", "bob", "gpu", "queued")
    running = job("1", "run", "bob", "gpu", "running", start_time=NOW - 10)
    lines = alt_table([soon, unknown, sooner, running], c, est=True).splitlines()
    assert lines[:4] == ["", "sched: ", " " * 75 + "Est", " " * 60 + "Req'd  Req'd   Start"]
    assert [line.split()[0] for line in lines[6:]] == ["1.sched", "2.sched", "3.sched", "4.sched"]
    assert lines[7].endswith(f"Q {est_start(NOW + 60, NOW):>5}")
    assert lines[9].endswith("Q    --")


def test_est_start_formats() -> None:
    now = time.mktime((2026, 11, 24, 9, 0, 0, 0, 0, -1))  # a Tuesday morning
    assert est_start(None, now) == "--" and est_start(0, now) == "?" and est_start(now - 1, now) == "--"
    assert est_start(now + 3600, now) == "10:00"
    assert est_start(now + 2 * 86400, now) == "Th 09"
    assert est_start(now + 20 * 86400, now) == "Dec"
    assert est_start(now + 60 * 86400, now) == "2027"
    assert est_start(now + 6 * 365 * 86400, now) == ">5yrs"


def test_comment_gives_pbs_r_a_t_for_a_job_waiting_on_gpus() -> None:
    nodes = [{"name": f"n{i}", "state": "up", "cpus": 32, "cpus_assigned": 4, "mem_mb": 65536,
              "mem_assigned_mb": 0, "ngpus": 4, "ngpus_free": 0} for i in range(2)]
    pending = job("9", "big", "ann", "2xgpu", "queued", reason="Resources",
                  chunks=[{"ncpus": 4, "mem_mb": 0, "ngpus": 2, "count": 1}])
    assert comment(pending, ctx(nodes)) == "Not Running: Insufficient amount of resource: ngpus (R: 2 A: 0 T: 8)"
    nodes[1]["ngpus_free"] = 4
    assert comment(dict(pending, reason="Priority"), ctx(nodes)) == \
        "Not Running: Job would conflict with reservation or top job"
    gang = dict(pending, chunks=[{"ncpus": 1, "mem_mb": 0, "ngpus": 2, "count": 2}])
    assert comment(gang, ctx(nodes)) == "Not Running: Not enough free nodes available"
    never = dict(pending, reason="Can never run", chunks=[{"ncpus": 1, "mem_mb": 0, "ngpus": 16, "count": 1}])
    assert comment(never, ctx(nodes)) == "Can Never Run: Insufficient amount of resource: ngpus (R: 16 A: 4 T: 8)"
    held = job("10", "h", "ann", "q", "held", holds="u", reason="JobHeldUser")
    assert comment(held, ctx()) == "Job held by ann"


def test_long_format_wraps_like_prt_attr() -> None:
    """The reference's real ``qstat -x -f``: Variable_List and comment wrap at 78 columns with a TAB."""
    variables = ("PBS_O_HOME=/home/testuser,PBS_O_LOGNAME=testuser,PBS_O_PATH=/usr/local/bin:/bin:/usr/bin:"
                 "/usr/local/sbin:/usr/sbin:/opt/pbs/bin:/home/testuser/.local/bin:/home/testuser/bin,"
                 "PBS_O_MAIL=/var/spool/mail/testuser,PBS_O_SHELL=/bin/bash,PBS_O_WORKDIR=/home/testuser,"
                 "PBS_O_SYSTEM=Linux,PBS_O_QUEUE=debug,PBS_O_HOST=e5a207891675")
    text = attrs_text("Job Id: 0.e5a207891675", [
        ("Variable_List", None, variables),
        ("comment", None, "Job run at Thu May 14 at 07:04 on (e5a207891675:ncpus=1) and finished"),
    ])
    assert text == (
        "Job Id: 0.e5a207891675\n"
        "    Variable_List = PBS_O_HOME=/home/testuser,PBS_O_LOGNAME=testuser,\n"
        "\tPBS_O_PATH=/usr/local/bin:/bin:/usr/bin:/usr/local/sbin:/usr/sbin:/opt\n"
        "\t/pbs/bin:/home/testuser/.local/bin:/home/testuser/bin,\n"
        "\tPBS_O_MAIL=/var/spool/mail/testuser,PBS_O_SHELL=/bin/bash,\n"
        "\tPBS_O_WORKDIR=/home/testuser,PBS_O_SYSTEM=Linux,PBS_O_QUEUE=debug,\n"
        "\tPBS_O_HOST=e5a207891675\n"
        "    comment = Job run at Thu May 14 at 07:04 on (e5a207891675:ncpus=1) and fini\n"
        "\tshed\n"
        "\n"
    )
    one = attrs_text("Job Id: 1", [("comment", None, "x" * 100)], one_line=True)
    assert one == f"Job Id: 1\n    comment = {'x' * 100}\n\n"


def test_job_attrs_of_a_finished_gpu_job_and_its_json() -> None:
    j = job("17", "train", "ann", "1xgpu", "finished", start_time=NOW - 3600, end_time=NOW, exit_status=0,
            finish_reason="completed", chunks=[{"ncpus": 8, "mem_mb": 32768, "ngpus": 1, "count": 1}],
            exec_nodes=[{"node": "gpu01", "ncpus": 8, "mem_mb": 32768, "gpus": [3]}],
            used={"cpu_s": 7200.0, "peak_rss_mb": 2048, "gpu_s": 3600.0, "gpu_util_pct": 87.4})
    attrs = {(n, r): v for n, r, v in job_attrs(j, ctx())}
    assert attrs[("Resource_List", "select")] == "1:ncpus=8:mem=32gb:ngpus=1"
    assert attrs[("exec_vnode", None)] == "(gpu01:ncpus=8:mem=33554432kb:ngpus=1)"
    assert attrs[("resources_used", "gpu_util")] == "87" and attrs[("resources_used", "cput")] == "02:00:00"
    assert attrs[("resources_used", "walltime")] == "01:00:00" and attrs[("resources_used", "mem")] == "2097152kb"
    assert attrs[("run_count", None)] == "1" and attrs[("Exit_status", None)] == "0"
    assert attrs[("job_state", None)] == "F"
    obj = attrs_json(job_attrs(j, ctx()))
    assert obj["Resource_List"]["ngpus"] == 1 and obj["Exit_status"] == 0 and obj["Job_Name"] == "train"
    assert obj["resources_used"]["walltime"] == "01:00:00"
    assert obj["Variable_List"] == {"PBS_O_WORKDIR": "/home/u", "PBS_O_QUEUE": "1xgpu"}
    json.dumps(obj)


def test_array_attributes_count_subjobs() -> None:
    parent = job("5[]", "sweep", "ann", "q", "running", array={"start": 1, "end": 10, "step": 1, "max_running": 2})
    subs = [job(f"5[{i}]", "sweep", "ann", "q", s, array_index=i, parent="5[]")
            for i, s in [(3, "running"), (4, "running"), (5, "queued"), (6, "queued"), (7, "queued"), (10, "held")]]
    attrs = {(n, r): v for n, r, v in job_attrs(parent, ctx(**{"5[]": subs}))}
    assert attrs[("array_indices_submitted", None)] == "1-10"
    assert attrs[("array_indices_remaining", None)] == "5-7,10"
    assert attrs[("array_state_count", None)] == "Queued:4 Running:2 Exiting:0 Expired:4"
    assert attrs[("max_run_subjobs", None)] == "2" and attrs[("job_state", None)] == "B"
    assert ranges([]) == ""


def test_queue_and_server_summaries() -> None:
    queues = {"1xgpu": {"settings": {}, "jobs": {"queued": 1, "running": 2, "held": 1, "finished": 9}}}
    assert queue_table(queues) == (
        "Queue              Max   Tot Ena Str   Que   Run   Hld   Wat   Trn   Ext Type\n"
        "---------------- ----- ----- --- --- ----- ----- ----- ----- ----- ----- ----\n"
        "1xgpu                0     4 yes yes     1     2     1     0     0     0 Exe*\n"
    )
    srv = {"server_name": "sched", "jobs": {"queued": 3, "running": 2, "waiting": 1, "finished": 4}}
    assert server_table(srv).splitlines()[2] == "sched                0     6     3     2     0     1     0     0 Active    "


def test_small_helpers() -> None:
    assert trunc("abc", 3) == "abc" and trunc("abcd", 3) == "ab*"
    assert hms(0) == "00:00:00" and hms(360000) == "100:00:00"
    assert cnv_size(1048576) == "1tb" and cnv_size(0 + 1) == "1mb"
