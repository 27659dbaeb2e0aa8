"""What each rank is told: every rank of a gang sees the same rendezvous, its own RANK."""

from __future__ import annotations

from schedd.daemon.launch import full_id, master_port, rank_specs
from schedd.daemon.records import ChunkSpec, ExecChunk, JobRecord


def _rec(ranks: int, array_index: int | None = None) -> JobRecord:
    jid = f"17[{array_index}]" if array_index is not None else "17"
    rec = JobRecord(jid, 17, 40, "train", "ann", "acct", "2xgpu", [ChunkSpec(ncpus=4, ngpus=2, count=ranks)], 600.0,
                    0.0, "/work/ann", "/work/ann/train.o17", "/work/ann/train.e17", env={"FOO": "bar"},
                    argv=["python", "train.py"], array_index=array_index, parent="17[]" if array_index else None)
    rec.exec_nodes = [ExecChunk(f"n{i}", 4, 0, [2 * i, 2 * i + 1]) for i in range(ranks)]
    return rec


def test_a_gang_shares_its_rendezvous_and_numbers_its_ranks() -> None:
    specs = rank_specs(_rec(3), "srv", {"n0": "10.0.0.5"}, kill_delay_s=5.0)
    assert [s.env["RANK"] for s in specs] == ["0", "1", "2"]
    assert {s.env["MASTER_ADDR"] for s in specs} == {"10.0.0.5"}  # rank 0's node, by its address
    assert {s.env["MASTER_PORT"] for s in specs} == {str(master_port(_rec(3)))}
    assert {s.env["WORLD_SIZE"] for s in specs} == {"3"}
    assert all(s.nodes == ["n0", "n1", "n2"] for s in specs)
    assert [s.gpus for s in specs] == [[0, 1], [2, 3], [4, 5]]
    assert all(s.job_id == "17.srv" and s.kill_delay_s == 5.0 and s.env["FOO"] == "bar" for s in specs)


def test_a_single_rank_gets_no_rendezvous() -> None:
    (spec,) = rank_specs(_rec(1), "srv", {}, kill_delay_s=5.0)
    assert not {"RANK", "MASTER_ADDR", "WORLD_SIZE"} & set(spec.env)
    assert spec.env["PBS_O_WORKDIR"] == "/work/ann" and spec.env["SLURM_JOB_NUM_NODES"] == "1"


def test_an_array_subjob_knows_its_index_and_parent() -> None:
    rec = _rec(1, array_index=4)
    (spec,) = rank_specs(rec, "srv", {}, kill_delay_s=5.0)
    assert spec.job_id == full_id(rec, "srv") == "17[4].srv"
    assert spec.env["PBS_ARRAY_INDEX"] == spec.env["SLURM_ARRAY_TASK_ID"] == "4"
    assert spec.env["PBS_ARRAY_ID"] == "17[].srv" and spec.env["SLURM_ARRAY_JOB_ID"] == "17"


def test_the_rendezvous_port_is_stable_and_in_range() -> None:
    ports = {master_port(_rec(2)) for _ in range(3)}
    assert len(ports) == 1 and 29500 <= ports.pop() < 49500
