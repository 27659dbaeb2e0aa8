"""Wire types between schedd and its node agents (WebSocket, JSON via msgspec).

Every message is a tagged msgspec Struct (``{"type": "launch", ...}``): decoding
validates types and required fields in one step, so a malformed agent message is
a precise error, never a KeyError deep in the daemon. This module imports only
msgspec: ``nodeagent`` depends on it and on nothing else of ``schedd``.

Conversation::

    agent                                   schedd
      | -- Register(resources, running, finished) -->
      | <-- Welcome(heartbeat_s, keep, kill) --------   reconcile both ways
      | -- Heartbeat(telemetry) -------------------->   every heartbeat_s
      | <-- Launch(spec) ----------------------------
      | -- Started(job, attempt, rank) ------------->
      | <-- Kill / Signal ---------------------------
      | -- Exited(job, attempt, rank, status) ------>   durable on the agent until Ack
      | <-- Ack(job, attempt, rank) -----------------
      | -- Points(job, series) --------------------->   protocol 3: a job's metrics, batched
      | <-- Tail(request, file) ---------------------   protocol 3: the end of a job's output
      | -- TailReply(request, lines) --------------->

``Exited`` is kept by the agent (the per-job supervisor writes it to disk) until
schedd acknowledges it, so an exit that happens while schedd is down or the
socket is broken is reported on reconnect — never lost, never reported twice to
the state (schedd ignores an exit for an attempt it has already closed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

__all__ = [
    "Ack",
    "AgentMessage",
    "EnvFile",
    "EnvGit",
    "EnvPackage",
    "EnvPython",
    "EnvSpec",
    "Exited",
    "GpuInfo",
    "GpuSample",
    "Heartbeat",
    "JobSample",
    "Kill",
    "Launch",
    "LaunchSpec",
    "Preparing",
    "Register",
    "RunningJob",
    "ServerMessage",
    "Signal",
    "Points",
    "Started",
    "Tail",
    "TailReply",
    "Welcome",
    "decode_agent",
    "decode_agent_frame",
    "decode_server",
    "decode_server_frame",
    "encode",
    "encode_frame",
    "join_frame",
    "negotiate",
]

#: Versions of this protocol. 1: the first. 2: peers ignore fields they do not
#: know (a newer peer's optional additions), Register says the oldest version the
#: agent speaks and its software, Welcome the version chosen. A daemon and an agent
#: work together on the highest version both speak; with none in common the
#: daemon refuses the agent with a message naming both (close code 4001), so a
#: rolling upgrade either works or says exactly why not — it never strands jobs
#: on a half-understood conversation. 3: Points (a job's own metrics, from its
#: SCHEDD_METRICS file) and Tail/TailReply (the end of a job's output file, read
#: by the node as the job's owner); sent only on sessions that chose 3. 4:
#: Points.rank — the points of every rank's file, not only rank 0's (ranks > 0
#: only on sessions that chose 4: an older daemon would take them as rank 0's). 5:
#: a frame may carry a JSON array of messages, each as before, handled in order
#: (:func:`encode_frame`): what one side has ready at once — the Started and Exited
#: of several ranks, schedd's Launches and Acks — goes in one frame, one
#: WebSocket frame and one turn of each side's loop instead of one per message;
#: sent only on sessions that chose 5 (an older peer's decoder wants one object).
PROTOCOL_VERSION = 5
#: The first version whose frames may be arrays of messages.
BATCH_VERSION = 5
MIN_PROTOCOL_VERSION = 1
#: WebSocket close code: no protocol version in common (the reason says both ranges)
CLOSE_VERSION_MISMATCH = 4001

#: Exit statuses recorded as PBS records them (``Exit_status``); a job killed by
#: signal N records 256 + N. See ../shared/reference, section 1.8.
EXIT_LAUNCH_FAILED = -1  # JOB_EXEC_FAIL1: could not start (bad workdir, no shell...)
EXIT_RERUN = -11  # JOB_EXEC_RERUN: killed to be requeued (preemption, node lost)
EXIT_MEM = -27  # JOB_EXEC_KILL_MEM: over its memory request
EXIT_WALLTIME = -29  # JOB_EXEC_KILL_WALLTIME: over its walltime


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True):
    """Base of every wire message: tagged by ``type``. Unknown fields are ignored (a
    newer peer's optional additions, protocol 2); unknown types and wrong types of
    known fields are still errors. New fields must be optional with a default that
    means "as before", and are sent (omit_defaults) only when set."""


# ---------------------------------------------------------------- resources


class GpuInfo(msgspec.Struct):
    """One GPU as NVML names it (or the fake backend, which says so in ``model``)."""

    index: int
    uuid: str
    model: str
    mem_mb: int


class GpuSample(msgspec.Struct):
    """One GPU's reading at a heartbeat (NVML ``utilization.gpu`` etc.)."""

    index: int
    util_pct: float
    mem_used_mb: int
    power_w: float = 0.0
    temp_c: float = 0.0


class JobSample(msgspec.Struct):
    """One running job's usage on this node: its whole process tree (psutil)."""

    job_id: str
    attempt: int
    rank: int
    cpu_pct: float
    rss_mb: int
    peak_rss_mb: int


# ---------------------------------------------------------------- agent -> schedd


class RunningJob(msgspec.Struct):
    """A job rank the agent still runs (reported on register, for reconciliation)."""

    job_id: str
    attempt: int
    rank: int
    start_time: float


class Register(_Msg, tag="register"):
    """First message on every connection, including reconnects."""

    name: str
    cpus: int
    mem_mb: int
    gpus: list[GpuInfo]
    #: True when ``gpus`` are made up (the agent runs with ``--fake-gpus N``, even 0;
    #: pool.toml's ``fake_gpus`` is that N), not NVML's. A bool under this name since
    #: protocol version 1, whose agents send it so.
    fake_gpus: bool
    running: list[RunningJob] = []
    finished: list[Exited] = []
    version: int = PROTOCOL_VERSION  # the newest protocol version the agent speaks
    labels: dict[str, str] = {}
    min_version: int = 1  # the oldest it still speaks
    software: str = ""  # e.g. "schedd 0.1.0", for the messages that name both sides
    incarnation: str = ""  # e.g. the pod's UID: a new one means the node's earlier life (and its jobs) ended
    #: how the node enforces limits and kills: "cgroup2", "cgroup2+memory-v1"..., "proctree"; "" unsaid (older agents)
    enforcement: str = ""


class Heartbeat(_Msg, tag="heartbeat"):
    time: float
    cpu_pct: float
    mem_used_mb: int
    gpus: list[GpuSample] = []
    jobs: list[JobSample] = []


class Started(_Msg, tag="started"):
    job_id: str
    attempt: int
    rank: int
    time: float


class Exited(_Msg, tag="exited"):
    """A job rank ended. ``status`` is PBS's Exit_status (see the EXIT_* constants)."""

    job_id: str
    attempt: int
    rank: int
    status: int
    #: "exited" | "signaled" | "walltime" | "memory" | "killed" | "launch_failed"
    how: str
    start_time: float
    end_time: float
    peak_rss_mb: int = 0
    cpu_s: float = 0.0
    comment: str = ""


class Preparing(_Msg, tag="preparing"):
    """A rank is not started yet because its environment is being prepared (a venv
    or image built, or another job's build of it awaited): the job's comment
    says so until it starts, so a user does not stare at a silent R."""

    job_id: str
    attempt: int
    rank: int
    comment: str


class Points(_Msg, tag="points"):
    """New points of a job's own metrics (protocol 3), read by the node from a
    rank's ``SCHEDD_METRICS`` file: per metric name, ``[time, step, value]`` with
    step -1 for none. ``malformed``: lines skipped since the last batch;
    ``capped``: the node stopped reading at the job's cap (Welcome's).
    ``rank``: whose file (protocol 4; 0 before)."""

    job_id: str
    attempt: int
    series: dict[str, list[tuple[float, int, float]]] = {}
    malformed: int = 0
    capped: bool = False
    rank: int = 0


class TailReply(_Msg, tag="tail_reply"):
    """The answer to :class:`Tail` (protocol 3); ``error`` set when the file could not be read."""

    request: int
    lines: list[str] = []
    truncated: bool = False
    error: str = ""


AgentMessage = Register | Heartbeat | Started | Exited | Preparing | Points | TailReply


# ---------------------------------------------------------------- environment spec


class EnvPython(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The submitter's interpreter: ``version`` is ``major.minor.micro``."""

    version: str
    executable: str = ""  # the interpreter the job named (a venv's python, often)
    base: str = ""  # the interpreter that venv was made from
    implementation: str = "cpython"


class EnvPackage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One installed distribution, pinned. ``editable``: the path of an editable
    install; ``repo_path``/``pth``: such a path inside the git work tree (relative
    to its root) and the import roots its ``.pth`` added — taken from the job's
    checkout on the node, not installed. ``url``: a PEP 508 direct reference
    (``git+https://...@commit``, ``file:///...``) for a non-index install."""

    name: str
    version: str = ""
    editable: str = ""
    repo_path: str = ""
    pth: list[str] = []
    url: str = ""


class EnvGit(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The code: a commit of a repository, plus the uncommitted diff of tracked files.

    ``cwd`` and ``entry_point`` are relative to ``root``; ``entry_index`` is the
    argv index holding an absolute entry point path (-1: none to rewrite)."""

    root: str
    commit: str
    remote: str = ""
    branch: str = ""
    diff: str = ""
    diff_encoding: Literal["utf-8", "base64"] = "utf-8"
    cwd: str = ""
    entry_point: str = ""
    entry_index: int = -1


class EnvFile(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An untracked file sent with ``qsub --env-include``: path relative to the git root."""

    path: str
    data: str  # base64
    mode: int = 0o644


class EnvSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A captured environment (see :mod:`schedd.envspec` for the JSON and the hash)."""

    python: EnvPython
    version: int = 1
    source: Literal["installed", "requirements", "pyproject", "uvlock"] = "installed"
    source_path: str = ""
    packages: list[EnvPackage] = []
    requirements: list[str] = []
    git: EnvGit | None = None
    files: list[EnvFile] = []


# ---------------------------------------------------------------- schedd -> agent


class LaunchSpec(msgspec.Struct, omit_defaults=True):
    """Everything an agent needs to run one rank of a job, and nothing to look up.

    ``script`` (the text of a batch script, run by ``shell``) or ``argv`` (a
    command) — exactly one is set. ``env`` is the complete job environment
    minus what the agent adds itself (CUDA_VISIBLE_DEVICES, TMPDIR, PBS_NODEFILE).
    """

    job_id: str  # "17.srv" form as users see it, for PBS_JOBID
    name: str
    user: str
    queue: str
    workdir: str
    stdout_path: str
    stderr_path: str  # equal to stdout_path when joined (-j oe)
    walltime_s: float
    ncpus: int
    mem_mb: int  # 0 = no memory limit
    gpus: list[int]
    script: str | None = None
    argv: list[str] | None = None
    shell: str = "/bin/bash"
    env: dict[str, str] = {}
    nodes: list[str] = []  # PBS_NODEFILE contents, one per rank, rank 0 first
    kill_delay_s: float = 10.0
    warn_signal: str | None = None  # e.g. "USR1", sent warn_before_s before walltime
    warn_before_s: float = 0.0
    #: the captured environment (an :class:`EnvSpec` as JSON), rebuilt by the
    #: node before the job runs; None: run in the node's own environment
    env_spec: dict[str, Any] | None = None
    env_hash: str = ""
    #: ``-l container=IMAGE``: run the rank in a container of this image (the
    #: node needs a docker runtime); "" = the node's default runtime
    container: str = ""
    #: the file name (PBS's ``NAME.oN``) to use inside ``stdout_path`` /
    #: ``stderr_path`` when the node finds it is a directory as the job's owner
    #: sees it (``-o DIR``); "" = the path is the file. The daemon (root) does
    #: not look: that would tell users what exists where they cannot read.
    stdout_name: str = ""
    stderr_name: str = ""


class Launch(_Msg, tag="launch"):
    job_id: str
    attempt: int
    rank: int
    spec: LaunchSpec


class Kill(_Msg, tag="kill"):
    """SIGTERM to the rank's process group, SIGKILL ``kill_delay_s`` later.

    ``status`` is what the rank records if it dies of this kill (e.g. EXIT_RERUN
    for a preemption requeue); None = 256 + the signal that ended it.
    """

    job_id: str
    attempt: int
    rank: int
    kill_delay_s: float = 10.0
    status: int | None = None


class Signal(_Msg, tag="signal"):
    job_id: str
    attempt: int
    rank: int
    signal: str  # "USR1", "TERM", "9"...


class Welcome(_Msg, tag="welcome"):
    """Reply to Register: keep running what schedd knows, kill what it does not."""

    heartbeat_s: float
    kill: list[RunningJob] = []
    version: int = 1  # the version chosen for this session (omitted, so 1, for a version-1 agent)
    #: custom metric points a job may report; 0 = unlimited (protocol 3)
    metrics_max_points: int = 0
    #: schedd's HTTP base URL and the secret the node derives each job's MLflow
    #: tracking URI from (schedd.api.mlflow; protocol 3; "" = none)
    tracking_url: str = ""
    metrics_secret: str = ""
    #: schedd marks a node down (and requeues its rerunnable jobs) after this much
    #: silence; the agent freezes its jobs well before (nodeagent.fence). 0 = unsaid
    heartbeat_timeout_s: float = 0.0


def negotiate(agent_min: int, agent_max: int) -> int | None:
    """The highest protocol version both sides speak, or None.

    >>> negotiate(1, 1), negotiate(2, 2), negotiate(1, PROTOCOL_VERSION + 1) == PROTOCOL_VERSION
    (1, 2, True)
    >>> negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2) is None
    True
    """
    best = min(agent_max, PROTOCOL_VERSION)
    return best if best >= max(agent_min, MIN_PROTOCOL_VERSION) else None


class Ack(_Msg, tag="ack"):
    """schedd recorded an Exited: the agent may forget it."""

    job_id: str
    attempt: int
    rank: int


class Tail(_Msg, tag="tail"):
    """Read the last ``lines`` lines (at most ``max_bytes``) of a job's output file as
    ``user`` (protocol 3): ``workdir``/``path``, or ``path``/``name`` when that is
    a directory as the user sees it (the LaunchSpec's stdout_name rule)."""

    request: int
    user: str
    workdir: str
    path: str
    name: str = ""
    lines: int = 100
    max_bytes: int = 1024 * 1024


ServerMessage = Welcome | Launch | Kill | Signal | Ack | Tail

_agent_decoder = msgspec.json.Decoder(AgentMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_agent_frame_decoder = msgspec.json.Decoder(AgentMessage | list[AgentMessage])
_server_frame_decoder = msgspec.json.Decoder(ServerMessage | list[ServerMessage])
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def encode_frame(msgs: Sequence[msgspec.Struct]) -> bytes:
    """One frame of messages: a lone one as itself (any version), several as a JSON
    array (protocol 5: only to a peer whose session chose it)."""
    return _encoder.encode(msgs[0] if len(msgs) == 1 else msgs)


def join_frame(encoded: Sequence[bytes]) -> bytes:
    """:func:`encode_frame` of messages already encoded one by one.

    >>> join_frame([b'{"type":"ack"}']), join_frame([b'{"a":1}', b'{"b":2}'])
    (b'{"type":"ack"}', b'[{"a":1},{"b":2}]')
    """
    return encoded[0] if len(encoded) == 1 else b"[" + b",".join(encoded) + b"]"


def decode_agent(data: bytes | str) -> AgentMessage:
    """Decode what an agent sent; raises ``msgspec.ValidationError`` with the field path."""
    return _agent_decoder.decode(data)


def decode_server(data: bytes | str) -> ServerMessage:
    return _server_decoder.decode(data)


def decode_agent_frame(data: bytes | str) -> list[AgentMessage]:
    """The messages of one frame from an agent: one, or (protocol 5) an array of them."""
    got = _agent_frame_decoder.decode(data)
    return got if isinstance(got, list) else [got]


def decode_server_frame(data: bytes | str,
                        bad: Callable[[msgspec.ValidationError], None] | None = None) -> list[ServerMessage]:
    """The messages of one frame from schedd: one, or (protocol 5) an array of them.
    With ``bad``, an array whose messages do not all decode yields those that do, and
    ``bad`` hears of each other one (as a lone malformed message is skipped, not the
    others sent with it); a frame that is not even an array of objects still raises."""
    try:
        got = _server_frame_decoder.decode(data)
    except msgspec.ValidationError as exc:
        if bad is None:
            raise
        try:
            parts = _raw_list_decoder.decode(data)
        except msgspec.ValidationError:
            raise exc from None  # not an array: the first error says what is wrong
        out: list[ServerMessage] = []
        for raw in parts:
            try:
                out.append(_server_decoder.decode(raw))
            except msgspec.ValidationError as one:
                bad(one)
        return out
    return got if isinstance(got, list) else [got]
