"""Submit filters: a site's hook that may reject, or change, every submission and alteration.

PBS has queuejob/modifyjob hooks and Slurm job_submit plugins; schedd has one
Python callable, named in ``schedd.toml``::

    [hooks]
    submit = "mysite.hooks:submit"   # module:function, importable by the daemon
    timeout_s = 2.0
    on_error = "reject"              # or "accept": a failing hook lets the job in unchanged

For hook authors this module is the whole API: the function gets a
:class:`Submission` (a copy: changing it changes nothing until returned) and
the :class:`Submitter`, and returns the submission to store (changed or not;
``None`` means unchanged) or raises :class:`Reject` with the message the user
sees (``qsub`` prints it and exits 32, PBS's ``PBSE_HOOKERROR``)::

    from schedd.hooks import Reject, Submission, Submitter

    def submit(job: Submission, who: Submitter) -> Submission:
        if job.queue == "docker" and not job.container:
            raise Reject("queue docker runs containers: give -l container=IMAGE")
        job.account = job.account or TEAMS.get(who.user, "")
        return job

It runs on every single job, every job of a batch, once per array (not per
subjob) and on every ``qalter`` (``job.kind == "alter"``, where only
``walltime_s``, ``priority``, ``name`` and ``queue`` may be changed, as qalter
can). What it returns is checked again, as the user's request was: types and
bounds, queue limits, allowed users, "fits some node" — a hook cannot let a
job past a limit.

**Time-bounded, in a thread.** The hook runs in a worker thread (at most
:data:`WORKERS` at once) so that a slow one never blocks the daemon's event
loop, and the daemon gives up on it after ``timeout_s``. A thread cannot be
killed: a hook that hangs keeps its thread (a daemon thread: it does not keep
schedd from stopping), and once :data:`WORKERS` hang, every later submission
times out waiting for a free one (a visible, logged failure, never a wedged
daemon). A
subprocess pool would isolate better, but each call would pickle the request
and a hook could no longer keep cheap in-process state (a cached user->team
map); hooks are the site's own trusted code, configured by the operator, so
the thread's speed is the better trade. Keep hooks quick and bounded
(timeouts on any I/O they do).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from schedd.errors import HookRejected

__all__ = ["WORKERS", "Chunk", "Reject", "Submission", "Submitter", "SubmitHook", "call_hook", "load"]

log = logging.getLogger("schedd.hooks")

#: Worker threads for hooks: how many may run (or hang) at once.
WORKERS = 4


class Reject(Exception):
    """Raised by a hook to refuse the submission; ``message`` is shown to the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who submits: the authenticated user and their role (user, operator or admin)."""

    user: str
    role: str = "user"


@dataclass(slots=True)
class Chunk:
    """``count`` nodes each giving ``ncpus``, ``mem_mb`` (0: no memory asked) and ``ngpus``."""

    ncpus: int = 1
    mem_mb: int = 0
    ngpus: int = 0
    count: int = 1


@dataclass(slots=True)
class Submission:
    """The job as it would be stored. Values are resolved: ``queue`` is the
    default queue when none was named, ``walltime_s`` and ``chunks`` are the
    queue's defaults when the request gave none (left unchanged, they follow
    the queue a hook moves the job to)."""

    kind: Literal["submit", "alter"]
    queue: str
    walltime_s: float
    chunks: list[Chunk]
    account: str = ""  # "" = "default"
    name: str = ""  # "" = the script's name
    priority: int = 0
    qos: str = ""
    container: str = ""  # -l container=IMAGE; "" = the node's runtime decides
    env: dict[str, str] = field(default_factory=dict)  # qsub -v (submit only)
    array: str = ""  # "1-100%10" for an array (read only)
    job_id: str = ""  # the job altered (alter only)

    @property
    def ngpus(self) -> int:
        """GPUs in all, over every chunk."""
        return sum(c.ngpus * c.count for c in self.chunks)


#: What a hook is: the submission and its submitter in, the submission (or None: unchanged) out.
SubmitHook = Callable[[Submission, Submitter], "Submission | None"]

class _Workers:
    """At most :data:`WORKERS` hook threads at once, on one event loop. Each call
    gets a daemon thread of its own (not a ThreadPoolExecutor's: those are joined
    at exit, so one hung hook would keep the daemon from stopping)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.free = asyncio.Semaphore(WORKERS)

    async def run(self, hook: SubmitHook, job: Submission, who: Submitter) -> Submission | None:
        await self.free.acquire()  # within the caller's timeout: hung hooks make later calls time out
        fut: asyncio.Future[Submission | None] = self.loop.create_future()

        def done(result: Submission | None, error: BaseException | None) -> None:
            self.free.release()
            if fut.done():  # the caller gave up (timeout)
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        def work() -> None:
            try:
                result, error = hook(job, who), None
            except BaseException as e:  # the hook's; handed to the caller, who decides
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is gone
                self.loop.call_soon_threadsafe(done, result, error)

        threading.Thread(target=work, name="schedd-hook", daemon=True).start()
        return await fut


_workers: _Workers | None = None


async def call_hook(hook: SubmitHook, ref: str, job: Submission, who: Submitter, timeout_s: float,
                    accept_on_error: bool) -> Submission:
    """Run ``hook`` (named ``ref``) on a copy of ``job`` in a worker thread, for at
    most ``timeout_s``. A :class:`Reject` always refuses (HookRejected, its message);
    an exception, a timeout or a wrong answer refuses too, or — ``accept_on_error``
    — is logged and lets ``job`` through unchanged."""
    try:
        global _workers
        loop = asyncio.get_running_loop()
        if _workers is None or _workers.loop is not loop:
            _workers = _Workers(loop)
        out = await asyncio.wait_for(_workers.run(hook, copy.deepcopy(job), who), timeout_s)
    except Reject as e:
        log.info("hook %s rejected a %s by %s: %s", ref, job.kind, who.user, e.message)
        raise HookRejected(f"rejected by the site's submit hook: {e.message}") from None
    except TimeoutError:
        error = f"the site's submit hook {ref} did not answer within {timeout_s:g} s"
    except Exception as e:
        error = f"the site's submit hook {ref} failed: {type(e).__name__}: {e}"
    else:
        if out is None:
            return job
        if isinstance(out, Submission) and out.kind == job.kind and out.job_id == job.job_id:
            return out
        error = f"the site's submit hook {ref} returned {type(out).__name__}, not the Submission it was given"
    if accept_on_error:
        log.error("%s; accepted unchanged (on_error = accept)", error)
        return job
    log.error("%s; rejected", error)
    raise HookRejected(error)


_loaded: dict[str, SubmitHook] = {}


def load(ref: str) -> SubmitHook:
    """The hook ``ref`` ("module:function") names, imported once (a reload naming
    another one imports that; an already imported module is not re-imported)."""
    hook = _loaded.get(ref)
    if hook is None:
        from schedd.plugins import import_object  # the daemon's side only: hook authors need none of it

        hook = _loaded[ref] = import_object(ref, "hooks.submit")
    return hook
