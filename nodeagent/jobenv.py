"""The environment a job rank sees: schedd's ``spec.env`` plus what only the node knows.

Precedence, strongest first:

1. what the node decides and a job must not override: ``CUDA_VISIBLE_DEVICES``
   (exactly the granted GPUs; the empty string when none, so a CPU job sees no
   GPU rather than all of them), ``TMPDIR``, ``PBS_NODEFILE`` and the job cookie;
2. ``spec.env`` as schedd sent it (it already holds the submitter's
   environment, array indices, MASTER_ADDR/WORLD_SIZE/RANK for gangs...);
3. defaults filled in only when schedd did not send them: the PBS variables a
   MoM sets (section 1.3 of the reference notes), their Slurm twins, the login
   variables (HOME, USER, LOGNAME, SHELL) and a minimal PATH.

``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is also a default: GPU indices come from NVML,
which numbers by PCI bus, while CUDA's own default order is "fastest first" —
without it ``CUDA_VISIBLE_DEVICES=1`` could name another GPU than NVML's 1.

Job metrics: every rank gets ``SCHEDD_METRICS`` (a file in its scratch the
node follows), and finds ``schedd_report`` on its ``PYTHONPATH`` (after the
job's own entries: a job's module of that name wins) — the agent's own copy
for a process, a copy in the rank's scratch for a container (``helpers``:
the agent's install is not mounted in it, the scratch is).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nodeagent.proctree import COOKIE_ENV
from schedd.protocol import Launch

__all__ = ["DEFAULT_PATH", "HELPERS", "job_environment", "slurm_job_id"]

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The directory holding ``schedd_report.py`` (stdlib only), put on jobs' PYTHONPATH.
HELPERS = str(Path(__file__).resolve().parent / "jobhelpers")
_LEADING_DIGITS = re.compile(r"\d+")  # compiled at import: in the forkserver, once for every rank


def slurm_job_id(job_id: str) -> str:
    """Slurm ids are numbers: the leading digits of the PBS id.

    >>> slurm_job_id("17.srv"), slurm_job_id("17[3].srv"), slurm_job_id("x")
    ('17', '17', 'x')
    """
    match = _LEADING_DIGITS.match(job_id)
    return match.group(0) if match else job_id.split(".")[0]


def job_environment(
    launch: Launch,
    *,
    tmpdir: str,
    nodefile: str,
    cookie: str,
    home: str = "",
    login_shell: str = "",
    metrics: str = "",
    helpers: str = HELPERS,
) -> dict[str, str]:
    """The complete environment of one rank (see the module docstring for precedence).

    >>> from schedd.protocol import LaunchSpec
    >>> spec = LaunchSpec(job_id="17.srv", name="train", user="ann", queue="gpu",
    ...     workdir="/w", stdout_path="/w/o", stderr_path="/w/o", walltime_s=60,
    ...     ncpus=4, mem_mb=0, gpus=[2, 3], nodes=["n1", "n2"], env={"RANK": "1"})
    >>> env = job_environment(Launch(job_id="17.srv", attempt=0, rank=1, spec=spec),
    ...     tmpdir="/t", nodefile="/t/nodes", cookie="c")
    >>> env["CUDA_VISIBLE_DEVICES"], env["PBS_JOBID"], env["SLURM_JOB_ID"], env["RANK"]
    ('2,3', '17.srv', '17', '1')
    >>> env["PBS_NODENUM"], env["SLURM_NTASKS"], env["SLURM_JOB_NODELIST"], env["OMP_NUM_THREADS"]
    ('1', '2', 'n1,n2', '4')
    """
    spec = launch.spec
    rank = str(launch.rank)
    nodes = spec.nodes or [""]
    workdir = spec.env.get("PBS_O_WORKDIR", spec.workdir)
    defaults = {
        "PATH": DEFAULT_PATH,
        "HOME": home or spec.workdir,
        "USER": spec.user,
        "LOGNAME": spec.user,
        "SHELL": login_shell or spec.shell,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "PBS_JOBID": spec.job_id,
        "PBS_JOBNAME": spec.name,
        "PBS_QUEUE": spec.queue,
        "PBS_O_WORKDIR": workdir,
        "PBS_O_QUEUE": spec.queue,
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "PBS_TASKNUM": rank,
        "PBS_NODENUM": rank,
        "NCPUS": str(spec.ncpus),
        "OMP_NUM_THREADS": str(spec.ncpus),
        "SLURM_JOB_ID": slurm_job_id(spec.job_id),
        "SLURM_JOB_NAME": spec.name,
        "SLURM_JOB_PARTITION": spec.queue,
        "SLURM_JOB_USER": spec.user,
        "SLURM_NODEID": rank,
        "SLURM_PROCID": rank,
        "SLURM_NTASKS": str(len(nodes)),
        "SLURM_CPUS_ON_NODE": str(spec.ncpus),
        "SLURM_SUBMIT_DIR": workdir,
        "SLURM_JOB_NODELIST": ",".join(dict.fromkeys(n for n in nodes if n)),
    }
    if spec.nodes and launch.rank < len(spec.nodes):
        defaults["SLURMD_NODENAME"] = spec.nodes[launch.rank]
    env = defaults | spec.env
    env.update(
        CUDA_VISIBLE_DEVICES=",".join(str(g) for g in spec.gpus),
        TMPDIR=tmpdir,
        PBS_NODEFILE=nodefile,
    )
    env[COOKIE_ENV] = cookie
    if metrics:
        env["SCHEDD_METRICS"] = metrics
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{old}{os.pathsep}{helpers}" if old else helpers
    return env
