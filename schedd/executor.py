"""Run Python functions as schedd jobs: a :class:`concurrent.futures.Executor`, as submitit does for Slurm.

::

    from schedd.executor import SchedExecutor

    with SchedExecutor(queue="1xgpu", walltime="00:30:00") as ex:
        fut = ex.submit(train, lr=1e-3)           # one job
        losses = list(ex.map(train, [1e-3, 1e-4]))  # one array job, results in order
    fut.result()     # the return value, or the function's exception re-raised with the
                     # remote traceback as its __cause__
    fut.stdout()     # what the function printed (the job's .o file)

**Where payloads go: the job's work directory, a shared filesystem** (as submitit).
Each call is written with ``cloudpickle`` to ``FOLDER/<batch>/<i>.in.pkl``; the
job (``python -m schedd.executor FOLDER/<batch>``) writes ``<i>.out.pkl`` next to
it, atomically (a rename). Not through the daemon: results are often large (a
model, an array) and the daemon's request bodies are bounded and its store is
for jobs, not blobs; the work directory is already shared, since jobs write their
``.o``/``.e`` files there. ``folder`` must therefore be visible at the same path
to the nodes (the default is ``./schedd-executor`` in the current directory).

A future is done when its job has finished: with its result file, or — if the
job ended without one (killed, timed out, node lost, cancelled) — with a
:class:`JobFailed` saying how. ``fut.cancel()`` cancels the job (qdel).

``env="auto"`` captures the submitter's environment as ``qsub --env auto``
does (interpreter, packages, git commit and diff); the node rebuilds it and the
function runs there with ``python``. The default, ``env="none"``, runs the
submitting interpreter's path, which suits nodes sharing this machine's files.
Works from a notebook: cloudpickle pickles functions defined in ``__main__`` by value.
Needs ``pip install 'schedd[executor]'`` (cloudpickle).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from schedd.client import Client, Job, parse_walltime

__all__ = ["JobFailed", "RemoteTraceback", "SchedExecutor", "SchedFuture"]

_POLL_S = 0.2


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a job: the ``__cause__`` of the re-raised one."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class JobFailed(Exception):
    """The job ended without a result (killed, timed out, cancelled, node lost, the runner failed)."""


class SchedFuture(concurrent.futures.Future[Any]):
    """A future bound to a job: ``job_id``, ``stdout()``, ``stderr()``; ``cancel()`` cancels the job."""

    def __init__(self, executor: SchedExecutor, job_id: str, result_path: Path) -> None:
        super().__init__()
        self.executor, self.job_id, self.result_path = executor, job_id, result_path
        self.info: dict[str, Any] = {}

    def job(self) -> Job:
        return Job(Client(self.executor.url), {"id": self.job_id}).refresh()

    def _read(self, key: str) -> str:
        path = self.info.get(key) or self.job().info.get(key, "")
        try:
            return Path(path).read_text(errors="replace") if path else ""
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        """What the function printed to stdout (so far, while it runs)."""
        return self._read("stdout_path")

    def stderr(self) -> str:
        return self._read("stderr_path")

    def cancel(self) -> bool:
        """Cancel the job (queued: removed; running: SIGTERM then SIGKILL) and the future."""
        if not super().cancel():  # first, so the watcher cannot settle it meanwhile
            return False
        self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED: what futures.wait() counts as done
        try:
            with Client(self.executor.url) as client:
                client.call("DELETE", f"/api/v1/jobs/{self.job_id}")
        except Exception:  # already gone: the future is cancelled all the same
            pass
        return True


class SchedExecutor(concurrent.futures.Executor):
    """Functions as jobs of ``queue`` (see the module docstring)."""

    def __init__(self, queue: str = "", walltime: str | float | None = None, *, folder: str | os.PathLike[str] = "schedd-executor",
                 name: str = "", env: str = "none", url: str | None = None, chunks: list[dict[str, int]] | None = None,
                 job_fields: Mapping[str, Any] | None = None) -> None:
        _pickler()  # fail at construction, not at the first submit

        self.queue, self.walltime_s, self.name, self.env = queue, parse_walltime(walltime), name, env
        self.folder = Path(folder).absolute()
        self.url = url
        self.fields: dict[str, Any] = dict(job_fields or {})
        if chunks is not None:
            self.fields["chunks"] = chunks
        self._client = Client(url)
        self._futures: list[SchedFuture] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._env_spec: dict[str, Any] | None = None
        self._watcher = threading.Thread(target=self._watch, name="schedd-executor", daemon=True)
        self._watcher.start()

    # -- submitting ----------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> SchedFuture:
        return self._batch(fn, [(args, kwargs)])[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """One array job with a subjob per call; results in order, as Executor.map."""
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(args, {}) for args in zip(*iterables)]
        futures = self._batch(fn, calls) if calls else []

        def results() -> Iterator[Any]:
            for fut in futures:
                yield fut.result(timeout)
        return results()

    def map_array(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[SchedFuture]:
        """As :meth:`map`, but the futures (one array job)."""
        return self._batch(fn, [(args, {}) for args in zip(*iterables)])

    def _batch(self, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[SchedFuture]:
        cloudpickle = _pickler()

        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        batch = self.folder / uuid.uuid4().hex[:12]
        batch.mkdir(parents=True)
        for i, (args, kwargs) in enumerate(calls, start=1):
            (batch / f"{i}.in.pkl").write_bytes(cloudpickle.dumps((fn, args, kwargs)))
        python = "python" if self.env != "none" else sys.executable
        body: dict[str, Any] = {"argv": [python, "-m", "schedd.executor", str(batch)], "queue": self.queue,
                                "name": self.name or getattr(fn, "__name__", "fn")[:15] or "fn",
                                "workdir": str(batch), **self.fields}
        if self.walltime_s is not None:
            body["walltime_s"] = self.walltime_s
        spec = self._environment(body["argv"])
        if spec is not None:
            body["env_spec"] = spec
        if len(calls) > 1:
            body["array"] = f"1-{len(calls)}"
        with self._lock:
            job = self._client.call("POST", "/api/v1/jobs", body)["job"]
            jid = str(job["id"])
            ids = [jid] if len(calls) == 1 else [f"{jid.split('[')[0]}[{i}]" for i in range(1, len(calls) + 1)]
            futures = [SchedFuture(self, j, batch / f"{i}.out.pkl") for i, j in enumerate(ids, start=1)]
            self._futures += futures
        self._wake.set()
        return futures

    def _environment(self, argv: list[str]) -> dict[str, Any] | None:
        """``env="auto"`` (or a requirements file): the captured spec, once per executor."""
        if self.env == "none":
            return None
        if self._env_spec is None:
            from schedd.cli.envcapture import capture

            self._env_spec = capture(self.env, [sys.executable, *argv[1:]], os.getcwd(), [], dict(os.environ),
                                     lambda msg: print(f"schedd executor: {msg}", file=sys.stderr))
        return self._env_spec

    # -- watching ------------------------------------------------------------------

    def _watch(self) -> None:
        """One thread, one connection: settle every future whose job finished."""
        client = Client(self.url)
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
                self._futures = pending
            if not pending:
                if self._closed:
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for fut in pending:
                try:
                    info = client.call("GET", f"/api/v1/jobs/{fut.job_id}")["job"]
                except Exception as e:  # the daemon went away: keep trying, the jobs live on
                    if getattr(e, "status", 0) == 404:
                        with contextlib.suppress(concurrent.futures.InvalidStateError):
                            _settle(fut, None)
                    continue
                fut.info = info
                if info["state"] == "finished":
                    try:
                        _settle(fut, info)
                    except concurrent.futures.InvalidStateError:
                        pass  # cancelled meanwhile
                    except Exception as e:  # an unreadable result: that future fails, the others go on
                        fut.set_exception(JobFailed(f"job {fut.job_id}: its result could not be read: {e!r}"))
            self._wake.wait(_POLL_S)
            self._wake.clear()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            for fut in list(self._futures):
                fut.cancel()
        self._wake.set()
        if wait:
            concurrent.futures.wait(list(self._futures))
            self._watcher.join()
        self._client.close()


def _pickler() -> Any:
    """cloudpickle (the ``executor`` extra), typed loosely: it ships no stubs."""
    import cloudpickle  # type: ignore[import-untyped,unused-ignore]

    return cloudpickle


def _settle(fut: SchedFuture, info: Mapping[str, Any] | None) -> None:
    cloudpickle = _pickler()

    if fut.done():
        return
    try:
        data = fut.result_path.read_bytes()
    except FileNotFoundError:
        how = "is gone" if info is None else (f"ended ({info.get('finish_reason')}, exit status "
                                              f"{info.get('exit_status')}) without a result")
        fut.set_exception(JobFailed(f"job {fut.job_id} {how}; see {(info or {}).get('stderr_path', 'its .e file')}"))
        return
    ok, value, tb = cloudpickle.loads(data)
    if ok:
        fut.set_result(value)
    else:
        value.__cause__ = RemoteTraceback(tb)
        fut.set_exception(value)


# -- the job's side: python -m schedd.executor FOLDER/<batch> ----------------------------


def run(batch: Path, index: int) -> int:
    """Load call ``index``, run it, write its outcome; 0 unless the outcome could not be written."""
    cloudpickle = _pickler()

    fn, args, kwargs = cloudpickle.loads((batch / f"{index}.in.pkl").read_bytes())
    try:
        outcome: tuple[bool, Any, str] = (True, fn(*args, **kwargs), "")
    except BaseException as e:  # the function's failure is its result
        tb = traceback.format_exc()
        traceback.print_exc()
        try:
            cloudpickle.dumps(e)
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e} (the exception itself could not be pickled)")
        outcome = (False, e, tb)
    tmp = batch / f".{index}.out.pkl.{os.getpid()}"
    tmp.write_bytes(cloudpickle.dumps(outcome))
    tmp.rename(batch / f"{index}.out.pkl")
    sys.stdout.flush()
    return 0 if outcome[0] else 1


if __name__ == "__main__":
    raise SystemExit(run(Path(sys.argv[1]), int(os.environ.get("PBS_ARRAY_INDEX") or 1)))
