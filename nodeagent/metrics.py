"""Follow every rank's ``SCHEDD_METRICS`` file and forward its points to schedd.

A job appends JSON lines (``{"step": 120, "loss": 0.31, "acc": 0.88}``; ``step``
and ``time`` optional, the time of reading when absent). Every ``POLL_S`` the
follower reads what was appended — at most ``READ_MAX`` bytes per file per
round, so a job writing a million lines is read at the pace schedd takes them
and never fills the agent's memory: what is not read yet waits on disk. Points
go out as :class:`schedd.protocol.Points` of at most ``BATCH_MAX`` points,
naming the rank whose file they come from (schedd files rank R's under
``rankR.`` keys). Every rank has a file of its own (its scratch), so ranks on
one node never interleave lines.

A malformed line (not a JSON object, no number in it, a bad step) is counted and
skipped; the first one is reported once in the job's stderr file. At the
per-job cap (schedd's Welcome) the follower stops reading, says so in the
stderr file and tells schedd (``capped``); the node counts per rank, schedd
per job. The offset and count are kept in
the rank's directory after each batch, so a restarted agent goes on where it
left. The file is opened once (O_NOFOLLOW, a regular file owned by the job's
owner — the agent is root, the file the user's), and read through that
descriptor to the end after the rank exits, though its scratch is gone.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from nodeagent.jobdir import SupervisorSpec, scratch_dir
from schedd.protocol import Points

__all__ = ["METRICS_FILE", "FileKey", "Follower", "keep_metrics", "metrics_path", "parse"]

log = logging.getLogger("nodeagent.metrics")

METRICS_FILE = "metrics.jsonl"
OFFSET_FILE = "metrics.offset"
POLL_S = 0.25
READ_MAX = 4 * 1024 * 1024
BATCH_MAX = 20_000
LINE_MAX = 64 * 1024
KEYS_MAX = 1000  # distinct metric names per job
_decode = msgspec.json.Decoder(dict[str, object]).decode

Pts = dict[str, list[tuple[float, int, float]]]
#: (job id without the server, attempt, rank): one followed file
FileKey = tuple[str, int, int]


def metrics_path(rank_dir: Path, spec: SupervisorSpec, switch_user: bool) -> Path:
    """Where a rank's SCHEDD_METRICS file is: in its scratch dir (the supervisor makes it)."""
    return scratch_dir(rank_dir, spec, switch_user) / METRICS_FILE


def keep_metrics(scratch: Path, rank_dir: Path) -> None:
    """At the rank's end, before its scratch goes: move its metrics file into the
    rank's directory (agent-private), where the follower finds what it did not
    read yet. A rename keeps the inode (an open descriptor stays good); across
    filesystems the content is copied, through a descriptor opened O_NOFOLLOW
    so that a job cannot have root copy another file for it."""
    src, dst = scratch / METRICS_FILE, rank_dir / METRICS_FILE
    try:
        os.rename(src, dst)
        return
    except OSError:
        pass
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            with open(fd, "rb", closefd=False) as f, open(dst, "wb") as out:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
    except OSError:
        pass
    finally:
        os.close(fd)


def parse(line: bytes, now: float, into: Pts, keys_left: int) -> int:
    """Add one line's points to ``into``; returns how many, or -1 if it is malformed.

    >>> pts: Pts = {}
    >>> parse(b'{"step": 3, "loss": 0.5, "acc": 1, "phase": "train"}', 10.0, pts, 100), pts
    (2, {'loss': [(10.0, 3, 0.5)], 'acc': [(10.0, 3, 1.0)]})
    >>> parse(b'nope', 10.0, pts, 100), parse(b'{"step": -1, "x": 1}', 10.0, pts, 100)
    (-1, -1)
    """
    try:
        obj = _decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return -1
    step = obj.pop("step", None)
    t = obj.pop("time", None)
    if step is None:
        step = -1
    elif type(step) is not int or step < 0:
        return -1
    when = float(t) if type(t) in (int, float) and math.isfinite(t) else now  # type: ignore[arg-type]
    n = 0
    for key, v in obj.items():
        if type(v) not in (int, float) or not 0 < len(key) <= 200:
            continue
        pts = into.get(key)
        if pts is None:
            if keys_left <= 0:
                continue
            keys_left -= 1
            pts = into[key] = []
        pts.append((when, step, float(v)))  # type: ignore[arg-type]
        n += 1
    return n if n else -1


@dataclass
class _File:
    job_id: str
    attempt: int
    rank: int
    path: Path
    state: Path  # OFFSET_FILE in the rank's directory
    uid: int | None  # the owner the file must belong to (None: whoever we are)
    fd: int | None = None
    offset: int = 0
    count: int = 0
    malformed: int = 0  # not yet sent
    warned: bool = False
    capped: bool = False
    ended: bool = False  # the rank exited: read to the end, then close
    keys: set[str] = field(default_factory=set)


class Follower:
    """The followed files of this node's ranks, by (job, attempt, rank). Call
    :meth:`follow` when a rank is known, :meth:`end` when it exits, and
    :meth:`poll` every POLL_S."""

    def __init__(self) -> None:
        self.cap = 0  # points per job; 0 = unlimited (from schedd's Welcome)
        self._files: dict[FileKey, _File] = {}
        #: poll runs in a thread, grab on the loop: one at a time (a grab waits one round at most)
        self._lock = threading.Lock()
        #: (job, attempt, text) for the job's stderr file, taken by the agent
        self.warnings: list[tuple[str, int, str]] = []

    def follow(self, key: FileKey, path: Path, rank_dir: Path, uid: int | None) -> None:
        if key in self._files:
            return
        f = _File(*key, path, rank_dir / OFFSET_FILE, uid)
        try:
            off, count = (int(x) for x in f.state.read_text().split())
            f.offset, f.count = off, count
        except (OSError, ValueError):
            pass
        self._files[key] = f

    def end(self, key: FileKey) -> None:
        f = self._files.get(key)
        if f is not None:
            f.ended = True

    def followed(self) -> set[FileKey]:
        return set(self._files)

    def follows(self, key: FileKey) -> bool:
        return key in self._files

    def poll(self, now: float | None = None) -> Iterator[Points]:
        """Read what is new in every file; yields batches. Files of ended ranks are
        read to their end and closed. O(bytes read), at most READ_MAX per file."""
        now = time.time() if now is None else now
        with self._lock:
            out = list(self._poll(now))
        yield from out

    def _poll(self, now: float) -> Iterator[Points]:
        for key, f in list(self._files.items()):
            if f.fd is None and not f.capped:
                f.fd = self._open(f)
            if f.fd is not None and not f.capped:
                yield from self._read(f, now)
            if f.malformed or (f.capped and f.fd is not None):
                yield Points(f.job_id, f.attempt, malformed=f.malformed, capped=f.capped, rank=f.rank)
                f.malformed = 0
                if f.capped and f.fd is not None:
                    os.close(f.fd)
                    f.fd = None
            if f.ended and (f.fd is None or self._at_end(f)):
                if f.fd is not None:
                    os.close(f.fd)
                del self._files[key]

    def grab(self, key: FileKey) -> None:
        """Open the file now, if not yet: its rank's directory is about to go."""
        with self._lock:
            f = self._files.get(key)
            if f is not None:
                if f.fd is None and not f.capped:
                    f.fd = self._open(f)
                f.ended = True

    def _open(self, f: _File) -> int | None:
        fd = -1
        for path in (f.path, f.state.parent / METRICS_FILE):  # in scratch; kept at the end (keep_metrics)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError:
                continue
        if fd < 0:
            return None  # not made yet, or gone
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (f.uid is not None and st.st_uid != f.uid):
            os.close(fd)
            log.warning("job %s: %s is not a regular file of the job's owner; not followed", f.job_id, f.path)
            f.capped = True  # stop trying; nothing is read from it
            return None
        return fd

    def _at_end(self, f: _File) -> bool:
        assert f.fd is not None
        return os.fstat(f.fd).st_size <= f.offset

    def _read(self, f: _File, now: float) -> Iterator[Points]:
        assert f.fd is not None
        try:
            data = os.pread(f.fd, READ_MAX, f.offset)
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= LINE_MAX:  # one endless line: skip it
                f.offset += len(data)
                self._bad(f, data[:80])
            return
        pts: Pts = {}
        n = 0
        pos = 0
        limit = self.cap or -1
        while pos <= end:
            nl = data.index(b"\n", pos)
            line = data[pos:nl]
            pos = nl + 1
            if not line.strip():
                continue
            if limit >= 0 and f.count >= limit:
                f.capped = True
                self.warnings.append((f.job_id, f.attempt,
                                      f"schedd: this job{_of(f)} reached its cap of {self.cap} metric points; "
                                      "SCHEDD_METRICS is not read any more\n"))
                break
            got = parse(line, now, pts, KEYS_MAX - len(f.keys)) if len(line) <= LINE_MAX else -1
            if got < 0:
                self._bad(f, line[:80])
                continue
            f.count += got
            n += got
            if n >= BATCH_MAX:
                f.offset += pos
                yield from self._send(f, pts)
                data, end, pos, n, pts = data[pos:], end - pos, 0, 0, {}
        f.offset += pos
        if pts or f.capped:
            yield from self._send(f, pts)

    def _send(self, f: _File, pts: Pts) -> Iterator[Points]:
        f.keys.update(pts)
        yield Points(f.job_id, f.attempt, series=pts, malformed=f.malformed, capped=f.capped, rank=f.rank)
        f.malformed = 0
        try:
            tmp = f.state.with_suffix(".tmp")
            tmp.write_text(f"{f.offset} {f.count}")
            tmp.replace(f.state)
        except OSError:
            pass

    def _bad(self, f: _File, excerpt: bytes) -> None:
        f.malformed += 1
        if not f.warned:
            f.warned = True
            text = excerpt.decode(errors="replace")
            self.warnings.append((f.job_id, f.attempt,
                                  f"schedd: skipped a malformed line of SCHEDD_METRICS{_of(f)} ({text!r}): each line must be "
                                  'a JSON object of numbers, e.g. {"step": 1, "loss": 0.5}; further ones are '
                                  "skipped silently (counted in the job's metrics)\n"))


def _of(f: _File) -> str:
    """Which rank a warning is about, in the job's one stderr file ("" for rank 0)."""
    return f" (rank {f.rank})" if f.rank else ""
