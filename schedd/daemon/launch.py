"""What an agent is told to run: a :class:`~schedd.protocol.LaunchSpec` per rank.

The daemon decides the whole environment here (PBS and Slurm variables, the
torch.distributed rendezvous for gangs) so that agents stay simple and every
rank of a job sees the same values.
"""

from __future__ import annotations

import os

from schedd.protocol import LaunchSpec
from schedd.daemon.records import JobRecord

__all__ = ["full_id", "master_port", "output_names", "rank_specs"]


def full_id(rec: JobRecord, server: str) -> str:
    """``17.server``, ``17[3].server``: the PBS_JOBID users see."""
    return f"{rec.id}.{server}"


def master_port(rec: JobRecord) -> int:
    """A rendezvous port per job, stable across its ranks (29500 is torch's default)."""
    return 29500 + (rec.order * 7919) % 20000


def rank_specs(rec: JobRecord, server: str, addrs: dict[str, str], kill_delay_s: float) -> list[LaunchSpec]:
    """One spec per rank, rank 0 first; ``addrs`` maps node name -> address."""
    nodes = [c.node for c in rec.exec_nodes]
    jid = full_id(rec, server)
    world = len(rec.exec_nodes)
    base = dict(rec.env)
    base.update(
        PBS_O_WORKDIR=rec.workdir,
        PBS_ACCOUNT=rec.account,
        SLURM_SUBMIT_DIR=rec.workdir,
        SLURM_JOB_ACCOUNT=rec.account,
        SLURM_JOB_PARTITION=rec.queue,
        SLURM_JOB_NUM_NODES=str(world),
        SLURM_NNODES=str(world),
    )
    if rec.array_index is not None:
        base.update(
            PBS_ARRAY_INDEX=str(rec.array_index),
            PBS_ARRAY_ID=f"{rec.number}[].{server}",
            SLURM_ARRAY_TASK_ID=str(rec.array_index),
            SLURM_ARRAY_JOB_ID=str(rec.number),
        )
    if world > 1:
        base.update(
            MASTER_ADDR=addrs.get(nodes[0], nodes[0]),
            MASTER_PORT=str(master_port(rec)),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE="1",
        )
    names = output_names(rec)
    specs = []
    for rank, chunk in enumerate(rec.exec_nodes):
        env = dict(base)
        if world > 1:
            env.update(RANK=str(rank), NODE_RANK=str(rank), LOCAL_RANK="0")
        specs.append(
            LaunchSpec(
                job_id=jid, name=rec.name, user=rec.owner, queue=rec.queue, workdir=rec.workdir,
                stdout_path=rec.stdout_path, stderr_path=rec.stderr_path, walltime_s=rec.walltime_s,
                ncpus=chunk.ncpus, mem_mb=chunk.mem_mb, gpus=list(chunk.gpus), script=rec.script,
                argv=rec.argv, shell=rec.shell, env=env, nodes=nodes, kill_delay_s=kill_delay_s,
                warn_signal=rec.warn_signal, warn_before_s=rec.warn_before_s,
                env_spec=rec.env_spec, env_hash=rec.env_hash, container=rec.container,
                stdout_name=names[0], stderr_name=names[1],
            )
        )
    return specs


def output_names(rec: JobRecord) -> tuple[str, str]:
    """The names the node uses inside ``stdout_path`` / ``stderr_path`` should either be
    a directory as the job's owner sees it (``-o DIR``: PBS's default ``NAME.oN``
    in it); "" for the default paths, which are files of the submit directory.
    Joined output (``-j oe``/``eo``) goes to one file, named after the stream kept."""
    suffix = f"{rec.number}" + (f".{rec.array_index}" if rec.array_index is not None else "")
    out, err = f"{rec.name}.o{suffix}", f"{rec.name}.e{suffix}"
    defaults = (os.path.join(rec.workdir, out), os.path.join(rec.workdir, err))
    joined = {"oe": out, "eo": err}.get(rec.join)
    return ("" if rec.stdout_path in defaults else joined or out,
            "" if rec.stderr_path in defaults else joined or err)
