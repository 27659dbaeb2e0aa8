"""The daemon's job record and the bodies users send: msgspec Structs.

:class:`JobRecord` is everything schedd keeps about a job — what was asked,
where it ran, how it ended. It is the REST representation (``GET /jobs/ID``)
and the blob the store persists, so both stay the same shape. The pure core
sees a much smaller :class:`schedd.core.model.Job`, derived by :func:`core_job`.

:class:`SubmitRequest` is the validated body of ``POST /api/v1/jobs``: msgspec
checks types and required fields; :func:`check_submit` checks what types cannot
(ranges, one of script/argv, array syntax) and names the field in its message.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schedd.envspec import MAX_SPEC_BYTES, SPEC_VERSION, canonical, spec_hash
from schedd.errors import InputError
from schedd.core.model import Chunk, Job, JobState
from schedd.protocol import EnvSpec

__all__ = [
    "ArraySpec",
    "BatchRequest",
    "Bounds",
    "ChunkRequest",
    "ChunkSpec",
    "Dependency",
    "ExecChunk",
    "JobRecord",
    "SubmitRequest",
    "Usage",
    "check_env",
    "check_submit",
    "core_job",
    "exec_bytes",
    "explain",
    "parse_array",
    "parse_depend",
]

DEPEND_KINDS = ("after", "afterok", "afternotok", "afterany")


class Bounds:
    """The largest values a request may hold, whatever the pool: a body is decoded
    against them before anything is sized by it (a ``count`` of 10^20 is a 400,
    not a list the daemon tries to build). The server-wide limits that an admin
    tunes (``max_array_size``, ``max_walltime_s``) live in ``conf/schedd.toml``."""

    NCPUS = 65_536  # per chunk (node); Linux's largest CONFIG_NR_CPUS is 8192
    NGPUS = 1_024  # per chunk
    MEM_MB = 1 << 30  # per chunk: 1 PiB
    NODES = 10_000  # per job, all chunks together; the pool's own size is checked at admission
    CHUNKS = 256  # select terms (chunk+chunk+...)
    ARRAY = 10_000_000  # the most max_array_size may be set to
    WALLTIME_S = 10 * 365 * 86_400.0  # the most max_walltime_s may be set to
    EPOCH_MAX = 4_102_444_800.0  # 2100-01-01 UTC: eligible times beyond are typos
    NICE = 2_147_483_645  # Slurm's --nice range; negative only for operators
    NAME = 236  # PBS_MAXJOBNAME
    ACCOUNT = 255
    PATH = 4_095  # PATH_MAX less its NUL
    ARG = 131_072  # MAX_ARG_STRLEN: the longest argv item or NAME=value exec takes
    ARGS = 4_096  # argv items
    ENV = 4_096  # environment variables
    EXEC_BYTES = 2 << 20  # argv + env together: ARG_MAX with the usual 8 MiB stack
    DEPEND_IDS = 1_000  # job ids named by all dependencies together


_NO_NUL = r"^[^\x00]*\Z"
#: A string that may reach a file name, a command line or a log: no NUL, no control character.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*\Z"

NCpus = Annotated[int, Meta(ge=0, le=Bounds.NCPUS)]
NGpus = Annotated[int, Meta(ge=0, le=Bounds.NGPUS)]
MemMb = Annotated[int, Meta(ge=0, le=Bounds.MEM_MB)]
Count = Annotated[int, Meta(ge=1, le=Bounds.NODES)]
#: Seconds of walltime: finite, positive; the queue's and the server's maxima are checked at admission.
Walltime = Annotated[float, Meta(gt=0, le=Bounds.WALLTIME_S)]
Priority = Annotated[int, Meta(ge=-1024, le=1023)]  # PBS -p
#: PBS -N: printable, no '/' (it names the output files NAME.oSEQ).
JobName = Annotated[str, Meta(max_length=Bounds.NAME, pattern=r"^[^\x00-\x1f\x7f/]*\Z")]
QueueName = Annotated[str, Meta(max_length=Bounds.ACCOUNT, pattern=_PRINTABLE)]
#: A comment shown on one line (a node's, by pbsnodes -C).
Comment = Annotated[str, Meta(max_length=1024, pattern=_PRINTABLE)]
Path = Annotated[str, Meta(max_length=Bounds.PATH, pattern=_NO_NUL)]
Arg = Annotated[str, Meta(max_length=Bounds.ARG, pattern=_NO_NUL)]
#: An environment variable's name: what ``NAME=value`` can carry (no '=', no NUL, not empty).
EnvKey = Annotated[str, Meta(min_length=1, max_length=Bounds.ARG, pattern=r"^[^=\x00]*\Z")]
JobId = Annotated[str, Meta(max_length=64, pattern=r"^\d{1,18}(\[\d{0,9}\])?(\.[^\x00-\x20]*)?\Z")]

#: What each pattern above means, for error messages users can read.
_MEANING = {
    _NO_NUL: "no NUL byte",
    _PRINTABLE: "no NUL or other control character",
    r"^[^\x00-\x1f\x7f/]*\Z": "no '/', NUL or other control character",
    r"^[^=\x00]*\Z": "no '=' and no NUL byte",
    r"^\d{1,18}(\[\d{0,9}\])?(\.[^\x00-\x20]*)?\Z": "a job id such as 17, 17[] or 17[3]",
    r"^[A-Za-z0-9+]*\Z": "a signal name or number",
    r"^[0-9a-f]*\Z": "lowercase hex digits",
}


def explain(message: str) -> str:
    r"""A msgspec error with its regex replaced by what the regex means.

    >>> explain("Expected `str` matching regex " + repr(r"^[^=\x00]*\Z") + " - at `key` in `$.env`")
    "Expected `str` with no '=' and no NUL byte - at `key` in `$.env`"
    """
    for pattern, meaning in _MEANING.items():
        message = message.replace(f"matching regex {pattern!r}", f"with {meaning}")
    return message


class ChunkSpec(msgspec.Struct, forbid_unknown_fields=True):
    """``count`` nodes each giving ``ncpus``, ``mem_mb`` and ``ngpus`` (one select term)."""

    ncpus: NCpus = 1
    mem_mb: MemMb = 0
    ngpus: NGpus = 0
    count: Count = 1


class ChunkRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A chunk as submitted: a resource left out takes the queue's default chunk's value."""

    ncpus: NCpus | None = None
    mem_mb: MemMb | None = None
    ngpus: NGpus | None = None
    count: Count = 1

    def resolve(self, default: ChunkSpec) -> ChunkSpec:
        """PBS fills unnamed chunk resources from the queue's defaults.

        >>> ChunkRequest(ncpus=2).resolve(ChunkSpec(ncpus=4, mem_mb=0, ngpus=1))
        ChunkSpec(ncpus=2, mem_mb=0, ngpus=1, count=1)
        """
        return ChunkSpec(
            default.ncpus if self.ncpus is None else self.ncpus,
            default.mem_mb if self.mem_mb is None else self.mem_mb,
            default.ngpus if self.ngpus is None else self.ngpus,
            self.count,
        )


class Dependency(msgspec.Struct, forbid_unknown_fields=True):
    """``afterok:12:13`` is ``Dependency("afterok", ["12", "13"])``."""

    kind: Literal["after", "afterok", "afternotok", "afterany"]
    ids: Annotated[list[JobId], Meta(max_length=Bounds.DEPEND_IDS)]


class ArraySpec(msgspec.Struct, forbid_unknown_fields=True):
    """``-J start-end:step%max_running``."""

    start: int
    end: int
    step: int = 1
    max_running: int | None = None

    def indices(self) -> range:
        return range(self.start, self.end + 1, self.step)


class ExecChunk(msgspec.Struct):
    """Where one rank runs: node, CPUs, memory and GPU indices."""

    node: str
    ncpus: int
    mem_mb: int
    gpus: list[int]


class Usage(msgspec.Struct):
    """Resources a job used, summed over its ranks (from the agents' reports)."""

    cpu_s: float = 0.0
    peak_rss_mb: int = 0
    gpu_s: float = 0.0  # GPU-seconds held (ngpus x elapsed)
    gpu_util_pct: float = 0.0  # mean utilisation of its GPUs while it ran


class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One job as a user submits it. Exactly one of ``script`` and ``argv``."""

    script: Annotated[str, Meta(pattern=_NO_NUL)] | None = None  # its size is bounded by max_body_mb
    argv: Annotated[list[Arg], Meta(max_length=Bounds.ARGS)] | None = None
    name: JobName = ""
    queue: QueueName = ""  # "" = the server's default queue
    account: Annotated[str, Meta(max_length=Bounds.ACCOUNT, pattern=_PRINTABLE)] = ""
    qos: QueueName = ""
    chunks: Annotated[list[ChunkRequest], Meta(max_length=Bounds.CHUNKS)] | None = None  # None = the queue's default
    walltime_s: Walltime | None = None  # None = the queue's default walltime
    priority: Priority = 0
    nice: Annotated[int, Meta(ge=-Bounds.NICE, le=Bounds.NICE)] = 0  # points off the priority; < 0: operators only
    workdir: Path = ""
    env: Annotated[dict[EnvKey, Arg], Meta(max_length=Bounds.ENV)] = {}
    shell: Path = "/bin/bash"
    stdout_path: Path = ""
    stderr_path: Path = ""
    join: Literal["oe", "eo", "n"] = "n"
    depend: Annotated[list[Dependency], Meta(max_length=Bounds.DEPEND_IDS)] = []
    array: Annotated[str, Meta(max_length=64)] = ""  # "1-1000%50"
    hold: bool = False
    eligible_time: Annotated[float, Meta(ge=0, le=Bounds.EPOCH_MAX)] | None = None  # -a, seconds since the epoch
    rerunnable: bool = True
    warn_signal: Annotated[str, Meta(max_length=16, pattern=r"^[A-Za-z0-9+]*\Z")] | None = None
    warn_before_s: Annotated[float, Meta(ge=0, le=Bounds.WALLTIME_S)] = 0.0
    #: the captured environment (qsub --env); ``env_hash``, when sent, must be its
    #: hash (check_submit fills it in either way)
    env_spec: dict[str, Any] | None = None
    env_hash: Annotated[str, Meta(max_length=64, pattern=r"^[0-9a-f]*\Z")] = ""
    #: ``-l container=IMAGE``: run in a container of this image (nodes with a
    #: docker runtime); "" = the node's runtime decides
    container: Annotated[str, Meta(max_length=255)] = ""


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Many jobs in one request (bulk submission); every job, subjobs counted, is
    checked against ``max_array_size`` together (see State.validate_batch)."""

    jobs: Annotated[list[SubmitRequest], Meta(max_length=Bounds.ARRAY)]


class JobRecord(msgspec.Struct, gc=False):
    """Everything schedd knows about one job (or array parent, or subjob).

    Not tracked by Python's cyclic garbage collector (``gc=False``): the daemon
    keeps up to ``keep_finished`` + every unfinished record, and a full
    collection walked all 47 fields of each (~4 us a record: 10,000 held jobs
    made a 10,000-job batch request pay 70-140 ms per full collection, several
    per request). Safe because a record cannot be part of a reference cycle:
    its fields are strings, numbers, lists of other Structs and decoded JSON,
    never a record or anything that refers back to one; its lists are
    tracked as ever, and a record is freed by reference counting.
    """

    id: str  # "17", "17[]" for an array parent, "17[3]" for a subjob
    number: int  # the 17 of "17.server"
    order: int  # unique global sequence: the FCFS tie-break
    name: str
    owner: str
    account: str
    queue: str
    chunks: list[ChunkSpec]
    walltime_s: float
    submit_time: float
    workdir: str
    stdout_path: str
    stderr_path: str
    state: str = JobState.QUEUED.value
    qos: str = ""
    priority: int = 0
    nice: int = 0
    script: str | None = None
    argv: list[str] | None = None
    shell: str = "/bin/bash"
    env: dict[str, str] = {}
    join: str = "n"
    depend: list[Dependency] = []
    array: ArraySpec | None = None  # parents only
    array_index: int | None = None  # subjobs only
    parent: str | None = None  # subjobs only
    holds: str = ""  # PBS hold types set: subset of "uos"
    eligible_time: float | None = None
    rerunnable: bool = True
    warn_signal: str | None = None
    warn_before_s: float = 0.0
    attempt: int = 0
    reason: str | None = None  # pending reason, Slurm-named
    comment: str = ""
    planned_start: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    exit_status: int | None = None
    finish_reason: str | None = None
    exec_nodes: list[ExecChunk] = []
    used: Usage = msgspec.field(default_factory=Usage)
    env_spec: dict[str, Any] | None = None  # the captured environment (omitted from job lists)
    env_hash: str = ""  # sha256 of its canonical JSON
    container: str = ""  # -l container=IMAGE

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    @property
    def ngpus(self) -> int:
        return sum(c.ngpus * c.count for c in self.chunks)



def core_job(rec: JobRecord) -> Job:
    """The scheduler's view of a record (what the pure cycle needs, nothing more)."""
    return Job(
        id=rec.id,
        order=rec.order,
        owner=rec.owner,
        chunks=tuple(Chunk(c.ncpus, c.mem_mb, c.ngpus, c.count) for c in rec.chunks),
        walltime_s=rec.walltime_s,
        submit_time=rec.submit_time,
        account=rec.account,
        queue=rec.queue,
        qos=rec.qos,
        priority=rec.priority,
        nice=rec.nice,
        eligible_time=rec.eligible_time,
        array_index=rec.array_index,
        attempt=rec.attempt,
        state=JobState(rec.state),
    )


_ARRAY = re.compile(r"^(\d{1,9})-(\d{1,9})(?::(\d{1,9}))?(?:%(\d{1,9}))?$")


def parse_array(text: str, max_size: int = Bounds.ARRAY) -> ArraySpec:
    """Parse PBS ``-J X-Y[:Z][%max]`` of at most ``max_size`` subjobs (the server's
    ``max_array_size``). Indices have at most 9 digits, so nothing here is slow.

    >>> parse_array("1-10:2%3")
    ArraySpec(start=1, end=10, step=2, max_running=3)
    >>> parse_array("5-1")
    Traceback (most recent call last):
    ...
    schedd.errors.InputError: array: '5-1': the end must be greater than the start
    >>> parse_array("0-100000", max_size=100000)
    Traceback (most recent call last):
    ...
    schedd.errors.InputError: array: '0-100000': 100001 subjobs, over the server's max_array_size of 100000
    """
    m = _ARRAY.match(text.strip())
    if m is None:
        raise InputError(f"array: {text!r}: expected X-Y[:Z][%max], e.g. 1-100%10 (indices of at most 9 digits)")
    start, end = int(m[1]), int(m[2])
    step = int(m[3]) if m[3] else 1
    limit = int(m[4]) if m[4] else None
    if end <= start:
        raise InputError(f"array: {text!r}: the end must be greater than the start")
    if step < 1 or (limit is not None and limit < 1):
        raise InputError(f"array: {text!r}: step and %max must be >= 1")
    size = len(range(start, end + 1, step))
    if size > max_size:
        raise InputError(f"array: {text!r}: {size} subjobs, over the server's max_array_size of {max_size}")
    return ArraySpec(start, end, step, limit)


def parse_depend(text: str) -> list[Dependency]:
    """Parse PBS ``depend=afterok:12:13,afterany:14`` (server suffixes are dropped).

    >>> parse_depend("afterok:12.srv:13,afterany:14")
    [Dependency(kind='afterok', ids=['12', '13']), Dependency(kind='afterany', ids=['14'])]
    """
    out: list[Dependency] = []
    for term in filter(None, text.split(",")):
        kind, *ids = term.split(":")
        if kind not in DEPEND_KINDS:
            raise InputError(f"depend: {kind!r}: expected one of {', '.join(DEPEND_KINDS)}")
        if not ids or not all(ids):
            raise InputError(f"depend: {term!r}: expected {kind}:JOBID[:JOBID...]")
        out.append(Dependency(kind, [i.split(".", 1)[0] for i in ids]))  # type: ignore[arg-type]
    return out


def check_submit(req: SubmitRequest) -> None:
    """Checks that types cannot express; raises InputError naming the field.

    The bounds of every number and string are msgspec constraints on
    :class:`SubmitRequest` (checked while decoding); what is left here relates
    fields to each other, or needs a sum before anything is expanded."""
    if (req.script is None) == (req.argv is None):
        raise InputError("script/argv: give exactly one of a script or a command")
    if req.argv is not None and not req.argv:
        raise InputError("argv: the command is empty")
    if req.chunks is not None and not req.chunks:
        raise InputError("chunks: at least one chunk")
    nodes = sum(c.count for c in req.chunks or ())
    if nodes > Bounds.NODES:
        raise InputError(f"chunks: {nodes} nodes in all, over the {Bounds.NODES} one job may ask for")
    if req.array:
        parse_array(req.array)
    for field, path in (("workdir", req.workdir), ("stdout_path", req.stdout_path), ("stderr_path", req.stderr_path),
                        ("shell", req.shell)):
        if path and not path.startswith("/"):
            raise InputError(f"{field}: {path!r}: must be an absolute path")
    if not req.shell:
        raise InputError("shell: empty; expected an absolute path, e.g. /bin/bash")
    size = exec_bytes(req.argv or [], req.env)
    if size > Bounds.EXEC_BYTES:
        raise InputError(f"argv/env: {size} bytes together, over the {Bounds.EXEC_BYTES >> 20} MiB a program "
                         "can be started with")
    if req.env_spec is not None:
        req.env_hash = check_env(req.env_spec, req.env_hash)
    if req.container:
        check_image(req.container)


def exec_bytes(argv: list[str], env: dict[str, str]) -> int:
    """What ``execve`` would be handed, as the kernel counts it (each string and its NUL).

    >>> exec_bytes(["sh", "-c"], {"A": "1"})
    10
    """
    return sum(len(a.encode()) + 1 for a in argv) + sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())


#: A docker image reference: [registry[:port]/]path[:tag][@sha256:digest], lowercase path.
_IMAGE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


def check_image(ref: str, field: str = "container") -> None:
    """A docker image reference, as ``docker pull`` would take it; raises InputError.

    >>> check_image("pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime")
    >>> check_image("registry.local:5000/team/img@sha256:" + "0" * 64)
    >>> check_image("Ubuntu")
    Traceback (most recent call last):
    ...
    schedd.errors.InputError: container: 'Ubuntu': not a docker image reference (e.g. pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime)
    """
    if len(ref) > 255 or not _IMAGE.fullmatch(ref):
        raise InputError(f"{field}: {ref!r}: not a docker image reference (e.g. pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime)")


def check_env(spec: dict[str, Any], claimed: str = "") -> str:
    """Validate an environment spec (size, shape, paths) and return its hash; raises
    InputError naming the field. ``claimed``: the hash the client computed, if any.

    >>> check_env({"python": {"version": "3.11.7"}})[:12]
    '331c21d54b0f'
    >>> check_env({"python": {"version": "3.11"}})
    Traceback (most recent call last):
    ...
    schedd.errors.InputError: env_spec.python.version: '3.11': expected major.minor.micro, e.g. 3.11.7
    """
    try:
        raw = canonical(spec)
    except (TypeError, ValueError) as e:
        raise InputError(f"env_spec: not plain JSON: {e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise InputError(f"env_spec: {len(raw) / 2**20:.1f} MB, over the {MAX_SPEC_BYTES >> 20} MB limit "
                         "(the uncommitted diff and --env-include files count)")
    try:
        env = msgspec.convert(spec, EnvSpec)
    except msgspec.ValidationError as e:
        raise InputError(f"env_spec: {e}") from None
    if env.version != SPEC_VERSION:
        raise InputError(f"env_spec.version: {env.version}: this server reads version {SPEC_VERSION}")
    if not re.fullmatch(r"\d+\.\d+\.\d+", env.python.version):
        raise InputError(f"env_spec.python.version: {env.python.version!r}: expected major.minor.micro, e.g. 3.11.7")
    for i, p in enumerate(env.packages):
        if not p.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p.name):
            raise InputError(f"env_spec.packages[{i}].name: {p.name!r}: not a distribution name")
        if p.editable and not p.editable.startswith("/"):
            raise InputError(f"env_spec.packages[{i}].editable: {p.editable!r}: must be an absolute path")
        for rel in (p.repo_path, *p.pth):
            _relative(rel, f"env_spec.packages[{i}]")
    if env.git is not None:
        g = env.git
        if not g.root.startswith("/"):
            raise InputError(f"env_spec.git.root: {g.root!r}: must be an absolute path")
        if not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", g.commit):
            raise InputError(f"env_spec.git.commit: {g.commit!r}: expected a full commit id")
        _relative(g.cwd, "env_spec.git.cwd")
        _relative(g.entry_point, "env_spec.git.entry_point")
    elif env.files:
        raise InputError("env_spec.files: files are added to a git checkout; the spec has no git")
    for i, f in enumerate(env.files):
        _relative(f.path, f"env_spec.files[{i}].path")
        if not f.path:
            raise InputError(f"env_spec.files[{i}].path: empty")
    digest = spec_hash(spec)
    if claimed and claimed != digest:
        raise InputError(f"env_hash: {claimed!r} is not the hash of env_spec ({digest})")
    return digest


def _relative(path: str, field: str) -> None:
    """A path inside the checkout: relative, no '..' (the node writes files there)."""
    if path.startswith("/") or ".." in path.split("/") or "\0" in path:
        raise InputError(f"{field}: {path!r}: must be a relative path inside the repository")
