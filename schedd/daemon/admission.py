"""Admission: what a submission must meet, and where a new job goes (H, W or Q).

A part of :class:`schedd.daemon.state.State`, as are its siblings (arrays,
commands, plans, accounting): functions whose first argument is the State,
bound as its methods there. See ``state.py`` for why functions and not mixins.
One check (:func:`check_admission`) serves a submission and every alteration,
so that moving a job can never reach what submitting it could not.
"""

from __future__ import annotations

import heapq
import os
import pwd
from typing import TYPE_CHECKING

import msgspec

from schedd.config import QueueSettings
from schedd.core.cluster import Cluster
from schedd.core.model import Chunk, FinishReason, JobState, Reason, shape_of
from schedd.daemon.deps import Verdict, verdict
from schedd.daemon.records import (
    Bounds, ChunkRequest, ChunkSpec, JobRecord, SubmitRequest, check_submit, core_job, explain, parse_array,
)
from schedd.errors import HookRejected, InputError, NeverFits, PermissionDenied, UnknownJob, UnknownQueue
from schedd.hooks import Chunk as HookChunk, Submission

if TYPE_CHECKING:
    from schedd.daemon.state import State

__all__ = ["check_admission", "hook_applied", "hook_view", "settle", "submit", "validate", "withdraw"]

#: What a submit hook may change in a submission (besides ``chunks``, ``queue`` and ``walltime_s``).
_HOOK_FIELDS = ("account", "name", "priority", "qos", "container", "env")


def validate(state: State, req: SubmitRequest, user: str,
             privileged: bool = False) -> tuple[str, float, list[ChunkSpec]]:
    """Every check of a submission, with no side effect: (queue, walltime, chunks)."""
    check_submit(req)
    _check_not_root(state, user)
    if req.nice < 0 and not privileged:
        raise PermissionDenied(f"nice: {req.nice}: only operators may give a negative nice (a priority boost)")
    qname = req.queue or state.settings.default_queue
    qs = _queue(state, qname)
    walltime = req.walltime_s if req.walltime_s is not None else qs.default_walltime_s
    chunks = [c.resolve(qs.default_chunk) for c in req.chunks] if req.chunks is not None else [qs.default_chunk]
    state.check_admission(user, qname, walltime, chunks)
    if req.array:
        parse_array(req.array, state.settings.max_array_size)
    if req.qos and req.qos not in state.settings.qos:
        raise InputError(f"qos: unknown QoS {req.qos!r}")
    for d in req.depend:
        for i in d.ids:
            if state.lookup(i) is None:
                raise UnknownJob(f"depend: unknown job {i}")
    return qname, walltime, chunks


def _check_not_root(state: State, user: str) -> None:
    """Refuse jobs owned by a uid-0 account unless ``allow_root_jobs``: the job
    would run as root on a node, where nothing it names is checked as anyone."""
    if state.settings.allow_root_jobs:
        return
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = -1 if user != "root" else 0
    if uid == 0:
        raise PermissionDenied(f"user {user!r} (uid 0) may not own jobs on this server: submit as an ordinary user, "
                               "or set allow_root_jobs = true in schedd.toml (PBS: acl_roots)")


def hook_view(state: State, req: SubmitRequest) -> Submission:
    """The site hook's view of a submission (:mod:`schedd.hooks`): queue,
    walltime and chunks resolved as :func:`validate` would (an unknown queue's
    defaults are a queue's defaults: validate refuses it later, unless the hook
    moves the job)."""
    qname = req.queue or state.settings.default_queue
    qs = state.settings.queues.get(qname) or QueueSettings()
    walltime = req.walltime_s if req.walltime_s is not None else qs.default_walltime_s
    chunks = [c.resolve(qs.default_chunk) for c in req.chunks] if req.chunks is not None else [qs.default_chunk]
    return Submission("submit", qname, walltime, [HookChunk(c.ncpus, c.mem_mb, c.ngpus, c.count) for c in chunks],
                      account=req.account, name=req.name, priority=req.priority, qos=req.qos,
                      container=req.container, env=dict(req.env), array=req.array)


def hook_applied(req: SubmitRequest, before: Submission, after: Submission) -> SubmitRequest:
    """``req`` with what the hook changed (``before`` -> ``after``), decoded
    again as the API decodes a body (types and bounds), for :func:`validate`
    to check as any submission. A walltime or chunks left as resolved stay
    unset in the request, so that they follow a queue the hook moved the job to."""
    if after.array != before.array:
        raise HookRejected("the site's submit hook changed array, which it may only read")
    changes: dict[str, object] = {f: getattr(after, f) for f in _HOOK_FIELDS if getattr(after, f) != getattr(before, f)}
    if after.queue != before.queue:
        changes["queue"] = after.queue
    if after.walltime_s != before.walltime_s:
        changes["walltime_s"] = after.walltime_s
    if after.chunks != before.chunks:
        changes["chunks"] = [ChunkRequest(c.ncpus, c.mem_mb, c.ngpus, c.count) for c in after.chunks]
    if not changes:
        return req
    data = {**msgspec.to_builtins(req), **msgspec.to_builtins(changes)}
    try:
        return msgspec.convert(data, SubmitRequest)
    except msgspec.ValidationError as e:
        raise HookRejected(f"the site's submit hook made an invalid request: {explain(str(e))}") from None


def check_admission(state: State, owner: str, qname: str, walltime_s: float, chunks: list[ChunkSpec]) -> None:
    """What a job must meet to be in queue ``qname``: its users, its and the
    server's walltime limits, a request some node can hold. One check for a
    submission and for every alteration (qalter -q, -l walltime), so that
    moving a job can never reach what submitting it could not."""
    qs = _queue(state, qname)
    if qs.allowed_users and owner not in qs.allowed_users:
        raise PermissionDenied(f"user {owner!r} may not submit to queue {qname!r}")
    if not 0 < walltime_s < float("inf"):
        raise InputError(f"walltime_s: {walltime_s:g}: must be > 0 and finite")
    if qs.max_walltime_s is not None and walltime_s > qs.max_walltime_s:
        raise InputError(f"walltime_s: {walltime_s:g} s is over queue {qname!r}'s maximum of {qs.max_walltime_s:g} s")
    if walltime_s > state.settings.max_walltime_s:
        raise InputError(f"walltime_s: {walltime_s:g} s is over the server's max_walltime_s of "
                         f"{state.settings.max_walltime_s:g} s")
    _check_fits(state, chunks)


def _queue(state: State, qname: str) -> QueueSettings:
    qs = state.settings.queues.get(qname)
    if qs is None:
        raise UnknownQueue(f"unknown queue {qname!r}; queues are: {', '.join(sorted(state.settings.queues))}")
    return qs


def submit(state: State, req: SubmitRequest, user: str, checked: tuple[str, float, list[ChunkSpec]] | None = None,
           privileged: bool = False) -> JobRecord:
    """Validate (unless ``checked`` is :meth:`validate`'s answer) and queue one
    job (or an array); returns the job (or the parent)."""
    qname, walltime, chunks = checked or state.validate(req, user, privileged)
    workdir = req.workdir or _home(user)
    name = req.name or (os.path.basename(req.argv[0]) if req.argv else "STDIN")
    state.number += 1
    now = state.clock()
    rec = JobRecord(
        id=str(state.number), number=state.number, order=_next_order(state), name=name, owner=user,
        account=req.account or "default", queue=qname, chunks=chunks, walltime_s=walltime,
        submit_time=now, workdir=workdir, stdout_path="", stderr_path="", qos=req.qos,
        priority=req.priority, nice=req.nice, script=req.script, argv=req.argv, shell=req.shell,
        env=req.env, join=req.join, depend=req.depend, holds="u" if req.hold else "",
        eligible_time=req.eligible_time, rerunnable=req.rerunnable, warn_signal=req.warn_signal,
        warn_before_s=req.warn_before_s, env_spec=req.env_spec, env_hash=req.env_hash, container=req.container,
    )
    if state.store is not None:
        state.store.put_meta("number", str(state.number))
    if req.array:
        spec = parse_array(req.array)
        rec.id, rec.array = f"{rec.number}[]", spec
        _paths(state, rec, req)
        state.jobs[rec.id] = rec
        state.array_left[rec.id] = len(spec.indices())
        for idx in spec.indices():
            sub = msgspec.structs.replace(rec, id=f"{rec.number}[{idx}]", order=_next_order(state),
                                          array=None, array_index=idx, parent=rec.id)
            _paths(state, sub, req)
            _admit(state, sub, "submit")
        state._refresh_parent(rec.id)
    else:
        _paths(state, rec, req)
        _admit(state, rec, "submit")
    state.counters.submitted += 1
    state.wake()
    return rec


def _next_order(state: State) -> int:
    state.order += 1
    return state.order


def _check_fits(state: State, chunks: list[ChunkSpec]) -> None:
    """Refuse a request no node could ever hold. The answer per shape is cached
    while the pool's node sizes stay the same (a batch of 10k jobs asks once).
    The node count is checked before the request is expanded to one entry
    per node: a gang wants distinct nodes, so more than the pool has never fits."""
    count = sum(c.count for c in chunks)
    if count > Bounds.NODES:
        raise InputError(f"chunks: {count} nodes in all, over the {Bounds.NODES} one job may ask for")
    sizes = state.fleet.sizes()
    if not sizes:
        return  # no node has registered yet: the cycle will say "Can never run" if so
    if count > len(state.fleet):
        raise NeverFits(f"the request asks for {count} nodes; the pool has {len(state.fleet)}")
    shape = shape_of(tuple(Chunk(c.ncpus, c.mem_mb, c.ngpus, c.count) for c in chunks))
    if state._fits_cache[0] != sizes:
        state._fits_cache = (sizes, Cluster([e.node for e in state.fleet], ()), {})
    _, cluster, answers = state._fits_cache
    fits = answers.get(shape)
    if fits is None and cluster is not None:
        fits = answers[shape] = cluster.can_ever_fit(shape)
    if not fits:
        nodes = [e.node for e in state.fleet]
        biggest = max(nodes, key=lambda n: (n.ngpus, n.cpus, n.mem_mb))
        raise NeverFits(
            f"the request (per node: {', '.join(f'ncpus={c} mem={m}mb ngpus={g}' for c, m, g in shape)}) "
            f"exceeds every node; the largest has ncpus={biggest.cpus} mem={biggest.mem_mb}mb ngpus={biggest.ngpus}"
        )


def _paths(state: State, rec: JobRecord, req: SubmitRequest) -> None:
    """PBS's default output files: NAME.oNUMBER[.INDEX] in the submit directory.
    A path given (-o/-e) is kept as given: whether it is a directory, for the
    default name to go inside it, is asked on the node as the job's owner
    (``launch.output_names``); asked here, as root, it would tell users what
    exists in directories they cannot read."""
    suffix = f"{rec.number}" + (f".{rec.array_index}" if rec.array_index is not None else "")
    out = req.stdout_path or os.path.join(rec.workdir, f"{rec.name}.o{suffix}")
    err = req.stderr_path or os.path.join(rec.workdir, f"{rec.name}.e{suffix}")
    rec.stdout_path = out
    rec.stderr_path = out if req.join == "oe" else err
    if req.join == "eo":
        rec.stdout_path = err


def _admit(state: State, rec: JobRecord, event: str) -> None:
    """Place a new or released job in H, W or Q and record it."""
    state.jobs[rec.id] = rec
    for d in rec.depend:
        for i in d.ids:
            state.dependents.setdefault(i, set()).add(rec.id)
    state._settle(rec)
    state._save(rec, event)


def settle(state: State, rec: JobRecord) -> None:
    """Decide H / W / Q for a job that is not running (no store write)."""
    state.pending.pop(rec.id, None)
    if rec.holds:
        rec.state, rec.reason = JobState.HELD.value, Reason.HELD.value
        return
    v, why = verdict(rec.depend, _Lookup(state)) if rec.depend else (Verdict.OK, "")
    if v is Verdict.NEVER:
        if state.settings.cancel_on_failed_dependency:
            rec.comment = f"cancelled: {why}"
            state._finish(rec, FinishReason.CANCELLED, None)
        else:
            rec.holds, rec.comment = "s", f"held: {why}"
            rec.state, rec.reason = JobState.HELD.value, Reason.DEPENDENCY.value
        return
    if v is Verdict.WAIT:
        rec.state, rec.reason, rec.comment = JobState.WAITING.value, Reason.DEPENDENCY.value, why
        return
    if rec.eligible_time is not None and rec.eligible_time > state.clock():
        rec.state, rec.reason = JobState.WAITING.value, Reason.BEGIN_TIME.value
        heapq.heappush(state.begin, (rec.eligible_time, rec.id))
        return
    rec.state, rec.reason, rec.comment = JobState.QUEUED.value, None, ""
    state.pending[rec.id] = core_job(rec)


class _Lookup:
    """A Mapping-like view for :func:`schedd.daemon.deps.verdict` that falls back to the store."""

    def __init__(self, state: State) -> None:
        self.state = state

    def get(self, key: str, /) -> JobRecord | None:
        return self.state.lookup(key)


def _home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return "/tmp"


def withdraw(state: State, recs: list[JobRecord]) -> None:
    """Take back submissions the store could not commit (the API answers 503,
    "nothing was accepted"): each job (an array: its parent and subjobs) leaves
    every index, and its rows still queued in the store are dropped, never
    written (``Store.withdraw_jobs``). Its number stays used. Safe because no
    cycle ran meanwhile (the loop's admission gate, :meth:`Loop.admitting`)
    and nobody was told its id."""
    ids: list[str] = []
    for rec in recs:
        ids.append(rec.id)
        if rec.array is not None:
            ids += [sub.id for sub in state._members(rec)]
    gone = set(ids)
    for jid in ids:
        job = state.jobs.pop(jid, None)
        state.pending.pop(jid, None)
        state.array_left.pop(jid, None)
        state.finish_listeners.pop(jid, None)
        for d in job.depend if job is not None else ():
            for i in d.ids:
                state.dependents.get(i, set()).discard(jid)
    if any(jid in gone for jid in state.finished_ids):  # refused at once (failed dependency)
        state.finished_ids = type(state.finished_ids)(j for j in state.finished_ids if j not in gone)
    state.counters.submitted -= len(recs)
    if state.store is not None:
        state.store.withdraw_jobs(ids)
