"""The per-rank directory: the only channel between the agent and a supervisor.

Files rather than a socket, because either side may die at any moment and the
other must be able to pick up from what is on disk::

    STATE/jobs/<job_id>.<attempt>.<rank>/
      spec.json        SupervisorSpec          agent, before spawning
      supervisor.pid   ProcessRecord           supervisor first thing (agent if it exec'd one)
      started.json     StartedRecord           supervisor, once the job process exists
      ctl/<ns>-<n>     Kill | Signal message   agent: one file per request
      exit.json        schedd.protocol.Exited  supervisor at the end (agent if it died)
      supervisor.log                           the supervisor's stderr
      scratch/         TMPDIR, nodefile, script (unless a scratch root is configured)

Every record is written atomically (temp file, then rename), so a reader sees
either nothing or a whole record, whoever was killed mid-write. Atomic, not
durable: nothing is fsync'd. A power cut ends every rank on the node anyway;
what must outlive one is in schedd's store, which the agent reports to (an
exit not yet reported is then re-reported as a rank that died with its
supervisor). Two fsyncs per record cost a rank ~1 ms of CPU and up to tens of
ms of waiting before it says "started" (bench/RESULTS.md, #12). A record that
a power cut left empty or torn reads as absent (:func:`read_record`).
A control request is a file first and a wake-up signal second
(:data:`WAKE_SIGNAL`): a lost signal only delays it.

A supervisor the agent launched also tells it on a pipe (the notify pipe),
one line per write, atomic up to PIPE_BUF (:func:`notify_line`):
``P<text>`` while the job's environment is prepared, ``S<started record>``
once the job started and ``E<exit record>`` once the exit is on disk — the
very bytes of ``started.json`` and ``exit.json``, so that the agent need not
read them back (two opens, reads and decodes a rank). The files stay the
truth: a re-adopted rank has no pipe, a record too long for one write is
sent as the bare letter, and an agent that lost the pipe reads the files.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import msgspec

from nodeagent.cgroups import Layout
from nodeagent.runtime.engine import container_name
from schedd.protocol import Exited, Kill, Launch, Signal

__all__ = [
    "CTL",
    "EXIT",
    "LOG",
    "PID",
    "SPEC",
    "STARTED",
    "WAKE_SIGNAL",
    "ProcessRecord",
    "StartedRecord",
    "SupervisorSpec",
    "decode_record",
    "notify_line",
    "parse_signal",
    "rank_dirname",
    "read_control",
    "read_exit",
    "read_record",
    "scratch_dir",
    "write_atomic",
    "write_control",
    "write_record",
]

SPEC = "spec.json"
PID = "supervisor.pid"
STARTED = "started.json"
EXIT = "exit.json"
CTL = "ctl"
LOG = "supervisor.log"

#: The agent's "look at ctl/" nudge. SIGWINCH because its default action is to
#: be ignored: a supervisor that has not installed its handler yet is not
#: killed by an early nudge (SIGUSR1 would kill it), and it scans ctl/ right
#: after installing the handler, so the request is not lost either.
WAKE_SIGNAL = signal.SIGWINCH


class SupervisorSpec(msgspec.Struct, forbid_unknown_fields=True):
    """What the agent hands a supervisor: the Launch plus agent-side choices."""

    launch: Launch
    #: Random per launch; put in the environment of the supervisor and the job
    #: (SCHEDD_JOB_COOKIE) so that stray processes can be found by it.
    cookie: str
    node: str = ""
    #: Where the per-rank scratch dir goes; "" = JOBDIR/scratch, or the system
    #: temp dir when the job runs as another user (JOBDIR is agent-private).
    scratch_root: str = ""
    sample_interval_s: float = 0.5
    #: As root, run the job as ``launch.spec.user`` (False: as root, e.g. in a
    #: container whose /etc/passwd does not know the submitters).
    switch_user: bool = True
    #: Become a child subreaper so that no descendant escapes (tests turn it off
    #: to exercise the fallback tracking).
    subreaper: bool = True
    #: Where captured environments are rebuilt and cached (nodeagent.env.pack);
    #: "" = no cache configured: a job with an environment spec fails to launch.
    env_cache: str = ""
    env_cache_mb: int = 20 * 1024
    env_installer: str = "auto"  # auto (uv when on PATH) | uv | pip
    #: "process", or "docker": every rank in a container (of ``docker_image``
    #: unless the job names one with ``-l container=``)
    runtime: str = "process"
    docker_image: str = ""
    docker_host: str = ""  # engine URL; "" = DOCKER_HOST or the default socket
    #: the node's GPUs are real (NVML): hand them to containers as nvidia
    #: device requests; False (fake GPUs): there is no device to hand over
    docker_gpus: bool = False
    #: the agent's cgroups (nodeagent.cgroups): the rank gets groups of its own
    #: there, its limits in them; None: RSS sampling and the process tree
    cgroups: Layout | None = None

    def image(self) -> str:
        """The image this rank runs in; "" = a plain process."""
        return self.launch.spec.container or (self.docker_image if self.runtime == "docker" else "")

    def container(self) -> str:
        """The name of this rank's container; "" = it runs as a plain process."""
        m = self.launch
        return container_name(self.node, m.job_id, m.attempt, m.rank) if self.image() else ""


class ProcessRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A pid plus its creation time: the pair cannot be reused, a pid alone can."""

    pid: int
    create_time: float


class StartedRecord(msgspec.Struct, forbid_unknown_fields=True):
    pid: int
    pgid: int
    create_time: float
    start_time: float


_T = TypeVar("_T")

_control_decoder = msgspec.json.Decoder(Kill | Signal)
_exit_decoder = msgspec.json.Decoder(Exited)
#: Decoders of the records, built at import: building one compiles the type's
#: description, which a forked supervisor would otherwise redo per rank (~1 ms).
_record_decoders: dict[type, msgspec.json.Decoder[object]] = {
    t: msgspec.json.Decoder(t) for t in (SupervisorSpec, ProcessRecord, StartedRecord, Exited)
}
_encoder = msgspec.json.Encoder()


def rank_dirname(job_id: str, attempt: int, rank: int) -> str:
    """The directory name of one rank; job ids are user-visible, so quote them.

    >>> rank_dirname("17[3].srv", 2, 0)
    '17[3].srv.2.0'
    >>> rank_dirname("a/b", 0, 1)
    'a%2Fb.0.1'
    """
    return f"{quote(job_id, safe='.-_@[]+')}.{attempt}.{rank}"


def scratch_dir(jobdir: Path, spec: SupervisorSpec, switch_user: bool) -> Path:
    """Where the rank's scratch (TMPDIR, nodefile, script) lives; deterministic,
    so the agent can remove it after a supervisor crash."""
    root = spec.scratch_root
    if not root and switch_user:
        root = os.environ.get("TMPDIR", "/tmp")
    return Path(root) / f"schedd-{spec.cookie}" if root else jobdir / "scratch"


def parse_signal(name: str) -> signal.Signals:
    """``"USR1"``, ``"SIGUSR1"``, ``"usr1"`` or ``"10"`` -> the signal; ValueError otherwise.

    >>> parse_signal("USR1").name, parse_signal("sigterm").name, parse_signal("9").name
    ('SIGUSR1', 'SIGTERM', 'SIGKILL')
    >>> parse_signal("NOPE")
    Traceback (most recent call last):
    ...
    ValueError: unknown signal 'NOPE'
    """
    text = name.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {name!r}") from None


def write_atomic(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``
    (for any reader while this machine runs; see the module docstring on power cuts).
    ``durable``: also after a power cut (file and directory fsync'd), for what
    outlives the node's processes — a built environment's marker, say.
    Paths as strings: a supervisor writes three records per rank."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".tmp-{name}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(head or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_record(path: str | os.PathLike[str], record: msgspec.Struct) -> bytes:
    """Write ``record`` atomically; its bytes (a supervisor tells some on its notify pipe too)."""
    data = _encoder.encode(record)
    write_atomic(path, data)
    return data


def read_record(path: str | os.PathLike[str], kind: type[_T]) -> _T | None:
    """The record at ``path``, or None when absent or unreadable (never half-written)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_record(data, kind)


def decode_record(data: bytes, kind: type[_T]) -> _T | None:
    """The record ``data`` holds (a file's bytes, or a notify line's), or None when it is malformed."""
    try:
        decoder = _record_decoders.get(kind)
        return decoder.decode(data) if decoder is not None else msgspec.json.decode(data, type=kind)  # type: ignore[return-value]
    except msgspec.DecodeError:
        return None


def notify_line(kind: bytes, record: bytes = b"") -> bytes:
    """The notify pipe's line ``kind`` (``S``, ``E``) carrying ``record``'s bytes; the bare
    letter when the line would be longer than one atomic pipe write (the agent then
    reads the record's file). Encoded JSON holds no newline: the line ends at the first."""
    line = kind + record + b"\n"
    return line if len(line) <= select.PIPE_BUF else kind + b"\n"


def read_exit(jobdir: Path) -> Exited | None:
    try:
        return _exit_decoder.decode((jobdir / EXIT).read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def write_control(jobdir: Path, request: Kill | Signal) -> Path:
    """Queue a request for the supervisor; file names sort in arrival order."""
    ctl = jobdir / CTL
    ctl.mkdir(exist_ok=True)
    path = ctl / f"{time.time_ns():020d}-{os.getpid()}"
    write_atomic(path, _encoder.encode(request))
    return path


def read_control(jobdir: str | os.PathLike[str]) -> list[Kill | Signal]:
    """Take (read and delete) the queued requests, oldest first; skips garbage."""
    ctl = os.path.join(jobdir, CTL)
    try:
        names = sorted(n for n in os.listdir(ctl) if not n.startswith("."))
    except FileNotFoundError:
        return []
    out: list[Kill | Signal] = []
    for name in names:
        path = os.path.join(ctl, name)
        try:
            with open(path, "rb") as f:
                out.append(_control_decoder.decode(f.read()))
        except (FileNotFoundError, msgspec.DecodeError):
            pass
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return out
