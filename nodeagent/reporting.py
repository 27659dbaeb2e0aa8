"""The agent's side of protocol 3: a job's metrics to schedd, its output's tail back.

One task per session (:meth:`Reporting.run`) keeps the :class:`Follower` in
step with the table's ranks (rank 0 only on a session older than protocol 4,
whose daemon would take another rank's points as rank 0's) and sends its
batches; reading and parsing run in
a thread (a round reads up to a few MB), sending on the loop, one round at a
time — a slow socket slows the reading, never grows a buffer. The reading
thread runs at nice :data:`READER_NICE`: parsing metric lines is background
work, and the node's jobs (and, on a small head node, schedd itself) come
first when the CPU is contended; idle CPU still reads at full speed. ``Tail``
requests are answered from :mod:`nodeagent.asuser`, as the job's owner.

:meth:`job_env` is what rank 0's environment gets from the session: MLflow's
tracking URI (a capability for that job attempt, see schedd.api.mlflow) and
run id.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import pwd
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import msgspec

from pathlib import Path

from nodeagent import asuser
from nodeagent.jobdir import SupervisorSpec
from nodeagent.jobs import JobTable, RankKey
from nodeagent.metrics import METRICS_FILE, POLL_S, FileKey, Follower, metrics_path
from schedd.protocol import Launch, Points, Tail, TailReply, Welcome

__all__ = ["Reporting"]

log = logging.getLogger("nodeagent.reporting")

Send = Callable[[msgspec.Struct], Awaitable[None]]
#: Niceness of the thread that reads and parses the metrics files (Linux: per thread).
READER_NICE = 10
#: How long a user's uid is taken from the cache (a passwd lookup per rank was
#: ~5 % of an agent's CPU on short jobs); a changed account is seen after this.
UID_TTL_S = 60.0


def _lower_priority() -> None:
    """The reader thread's initializer: nice it (only it: on Linux a thread id is a
    PRIO_PROCESS target). Best effort — never a reason not to read."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
    except (OSError, AttributeError):
        pass


class Reporting:
    def __init__(self, table: JobTable) -> None:
        self.table = table
        self.follower = Follower()
        self.version = 1
        self.tracking_url = ""
        self.secret = ""
        #: HMAC keyed with the secret once a session: copied per job (~3 us) rather than
        #: keyed anew (~7-10 us)
        self._mac = hmac.new(b"", digestmod="sha256")
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader = ThreadPoolExecutor(1, "metrics-reader", initializer=_lower_priority)
        #: (job, attempt) -> (user, switch user, stderr path, stderr name): where warnings go
        self._stderr: dict[tuple[str, int], tuple[str, bool, str, str]] = {}
        #: user -> (uid or None, monotonic time looked up)
        self._uids: dict[str, tuple[int | None, float]] = {}
        table.before_forget = self._forget

    def welcome(self, msg: Welcome) -> None:
        self.version = msg.version
        self.follower.cap = msg.metrics_max_points
        self.tracking_url, self.secret = msg.tracking_url, msg.metrics_secret
        self._mac = hmac.new(self.secret.encode(), digestmod="sha256")

    def job_env(self, msg: Launch) -> dict[str, str]:
        """MLflow variables for rank 0 (none before a protocol-3 Welcome)."""
        if msg.rank != 0 or not self.tracking_url or not self.secret:
            return {}
        jid = msg.job_id.split(".")[0]  # "17[3].srv" -> "17[3]"
        mac = self._mac.copy()
        mac.update(f"{jid}.{msg.attempt}".encode())
        key = mac.hexdigest()[:32]
        path = jid if jid.isascii() and jid.isdigit() else quote(jid, safe="")  # "17[3]" -> "17%5B3%5D"
        return {"MLFLOW_TRACKING_URI": f"{self.tracking_url}/mlflow/{path}/{msg.attempt}/{key}",
                "MLFLOW_RUN_ID": jid.replace("[", "-").replace("]", "")}

    def _followed_rank(self, rank: int) -> bool:
        return rank == 0 or self.version >= 4

    def _forget(self, key: RankKey, rank_dir: Path, spec: SupervisorSpec) -> None:
        """A rank's directory is about to go: follow it if it came and went between
        two rounds, and open its file now (read to the end by the next round).

        A rank that came and went unfollowed and left no metrics in its file
        (most short jobs write none; the supervisor makes the file empty) is
        not followed at all: it has exited, so nothing more will be written,
        and following it would cost the reading thread a round of opens and
        reads for nothing. Only the file in the rank's directory is looked at:
        the exit is recorded, and a supervisor moves the file there from the
        scratch directory before it removes that and records the exit."""
        if not self._followed_rank(key.rank):
            return
        fk = _file_key(key)
        if not self.follower.follows(fk):
            if not _has_data(f"{rank_dir}/{METRICS_FILE}"):
                return
            self._follow(key, rank_dir, spec)
        self.follower.grab(fk)

    def _uid_of(self, spec: SupervisorSpec) -> int | None:
        """The uid a rank runs as when the agent switches users (None when it does not)."""
        if not (self.table.switch_user and spec.switch_user):
            return None
        user, now = spec.launch.spec.user, time.monotonic()
        hit = self._uids.get(user)
        if hit is not None and now - hit[1] < UID_TTL_S:
            return hit[0]
        uid = _uid(user)
        self._uids[user] = (uid, now)
        while len(self._uids) > 1_000:  # bounded: the oldest entries go first
            del self._uids[next(iter(self._uids))]
        return uid

    def _follow(self, key: RankKey, rank_dir: Path, spec: SupervisorSpec) -> None:
        switch = self.table.switch_user and spec.switch_user
        ls = spec.launch.spec
        fk = _file_key(key)
        if self.follower.follows(fk):
            return
        uid = self._uid_of(spec)
        self.follower.follow(fk, metrics_path(rank_dir, spec, uid not in (None, 0)), rank_dir, uid if uid else None)
        path = ls.stderr_path if ls.stderr_path.startswith("/") else f"{ls.workdir}/{ls.stderr_path}"
        self._stderr[fk[:2]] = (ls.user, switch, path, ls.stderr_name)
        while len(self._stderr) > 10_000:  # bounded: the oldest jobs' warnings are long written
            del self._stderr[next(iter(self._stderr))]

    def _sync(self) -> None:
        """Follow every rank that runs here; end those that exited."""
        followed = self.follower.followed()
        for key, rank_dir, spec, exited in self.table.rank_dirs():
            if not self._followed_rank(key.rank):
                continue
            fk = _file_key(key)
            if exited:
                if fk in followed:
                    self.follower.end(fk)
            elif fk not in followed:
                self._follow(key, rank_dir, spec)

    async def run(self, send: Send) -> None:
        """Every POLL_S: read the files (in a thread), send the batches, write warnings."""
        while True:
            self._sync()
            if not self.follower.followed():  # nothing to read: no round trip through the reading thread
                await asyncio.sleep(POLL_S)
                continue
            batches = await asyncio.get_running_loop().run_in_executor(self._reader,
                                                                       lambda: list(self.follower.poll()))
            for batch in batches:
                await send(batch)
            while self.follower.warnings:
                self._warn(*self.follower.warnings.pop(0))
            await asyncio.sleep(POLL_S)

    def _warn(self, job_id: str, attempt: int, text: str) -> None:
        where = self._stderr.get((job_id, attempt))
        if where is not None:
            self._spawn(asuser.append_stderr(*where, text))

    def tail(self, msg: Tail, send: Send) -> None:
        """Answer a Tail in the background (a child process reads the file)."""
        async def answer() -> None:
            path = msg.path if msg.path.startswith("/") else f"{msg.workdir}/{msg.path}"
            got = await asyncio.shield(asuser.tail(msg.user, self.table.switch_user, path, msg.name, msg.lines,
                                                   msg.max_bytes))
            if "error" in got:
                reply = TailReply(msg.request, error=str(got["error"]))
            else:
                lines = got.get("lines", [])
                reply = TailReply(msg.request, lines=[str(x) for x in lines] if isinstance(lines, list) else [],
                                  truncated=bool(got.get("truncated")))
            await send(reply)

        self._spawn(answer())

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:  # a lost reply times out at schedd; the session goes on
                log.warning("background reply failed", exc_info=True)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _file_key(key: RankKey) -> FileKey:
    """The follower's key of a rank: the job id as schedd's Points name it ("17[3]", no server)."""
    return key.job_id.split(".")[0], key.attempt, key.rank


def points_of(msg: Points) -> int:
    return sum(len(v) for v in msg.series.values())


def _has_data(path: str | Path) -> bool:
    """The file (or a link of that name: the follower refuses links when it opens) holds
    something. lstat, not stat: the job owns the directory, root follows none of its links."""
    try:
        return os.lstat(path).st_size > 0
    except OSError:
        return False


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None
