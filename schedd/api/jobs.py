"""REST for jobs: submit (one, a batch, an array), list, get, cancel, hold,
release, signal, requeue, alter; and queues and usage.

Every body is decoded by msgspec into its Struct (types, bounds, required
fields and unknown keys checked in one step), and so are query parameters;
job ids are accepted as ``17``, ``17.server``, ``17[]`` and ``17[3]``, and a
subjob range ``17[2-5]`` (see :mod:`schedd.api.ranges`).

A job's secrets — its script, command line, environment and captured
environment spec (which carries files and a diff) — are shown only to its
owner, operators and admins; anyone else sees the rest of the record.

Durable before ack: a submission (one, a batch, an array) is answered only
after the store committed it; the other changes (qdel, qhold, qalter...) after
the commit that holds them, as :meth:`Loop.dispatch` does. While the store is
full every change is refused up front with a 503 that changes nothing; the
submission that finds the disk full is withdrawn, also "nothing was accepted".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Annotated, Any, Literal, TypeVar, cast

import msgspec
from aiohttp import web
from msgspec import Meta

from schedd.api.auth import IDENTITY, Identity, identify
from schedd.api.keys import LOOP, STATE, TOKENS
from schedd.api.ranges import JobRef, parse_ref, subjobs
from schedd.cli.qstat_default import TABLES, header, letter, lines, used
from schedd.errors import InputError, PermissionDenied, RequestError, UnknownJob
from schedd.core.model import JobState
from schedd.daemon.records import (
    BatchRequest, JobName, JobRecord, Priority, QueueName, SubmitRequest, Walltime, explain, parse_array,
)
from schedd.daemon.state import Outbox, State
from schedd.daemon import admission, commands
from schedd.store import StoreError, StoreFull
from schedd.errors import Unavailable
from schedd import hooks

__all__ = ["add_routes", "normalize_id", "shown", "who"]

Q = TypeVar("Q")

_encoder = msgspec.json.Encoder()
_submit = msgspec.json.Decoder(SubmitRequest)
_batch = msgspec.json.Decoder(BatchRequest)
_decoder = msgspec.json.Decoder(JobRecord)


class HoldBody(msgspec.Struct, forbid_unknown_fields=True):
    types: Annotated[str, Meta(max_length=8)] = "u"


class SignalBody(msgspec.Struct, forbid_unknown_fields=True):
    signal: Annotated[str, Meta(max_length=16)]  # "USR1", "SIGTERM", "9"


class AlterBody(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What qalter may change, bounded as at submission."""

    walltime_s: Walltime | None = None
    priority: Priority | None = None
    name: Annotated[JobName, Meta(min_length=1)] | None = None
    queue: QueueName | None = None


class WaitQuery(msgspec.Struct):
    #: finite and bounded: the value becomes a timer on the event loop
    timeout_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0


class ListQuery(msgspec.Struct):
    limit: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None
    #: a page's cursor (``finished=1``): jobs after this submission order
    after: Annotated[int, Meta(ge=-1)] | None = None
    table: Annotated[Literal["qstat", "qstat-wide"], Meta(
        description="the jobs as the lines plain qstat prints (qstat-wide: qstat -w), not as records; "
                    "with Accept: text/plain, the text qstat prints itself (heading included)")] | None = None
    subjobs: Annotated[bool, Meta(
        description="false: without array subjobs (plain qstat shows them only with -t)")] = True


#: Jobs per answer of ``finished=1`` (history can be millions of rows): the
#: answer's ``next`` is the cursor for the rest (``after=``).
HISTORY_PAGE = 5000


def _query(request: web.Request, kind: type[Q]) -> Q:
    """The query parameters ``kind`` names, converted from text and bounded
    (other parameters are the handler's own); a 400 naming the parameter."""
    names = set(getattr(kind, "__struct_fields__", ()))
    given = {k: v for k, v in request.query.items() if k in names}
    try:
        return msgspec.convert(given, kind, strict=False)
    except msgspec.ValidationError as e:
        raise InputError(f"invalid query parameter: {explain(str(e))}") from None


def shown(rec: JobRecord, ident: Identity) -> JobRecord:
    """``rec`` as ``ident`` may see it: the secret-bearing fields (script, argv,
    env values, env_spec with its files and diff) only for the owner, operators
    and admins, as PBS's query_other_jobs and Slurm's PrivateData keep them."""
    if ident.privileged or rec.owner == ident.user:
        return rec
    if rec.script is None and rec.argv is None and not rec.env and rec.env_spec is None:
        return rec
    return msgspec.structs.replace(rec, script=None, argv=None, env={}, env_spec=None)


def who(request: web.Request) -> Identity:
    """The caller (set by the app's authenticating middleware before the handler)."""
    ident = request.get(IDENTITY)
    if ident is None:
        ident = request[IDENTITY] = identify(request, request.app[TOKENS])
    return ident


def normalize_id(raw: str, server: str) -> str:
    """``17.server`` -> ``17``; ``17[3].server`` -> ``17[3]``; one job (no range)."""
    ref = parse_ref(raw)
    if ref.is_range:
        raise InputError(f"{raw}: a range names several jobs; this request takes one")
    return ref.id


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> bytes:
    data = await request.read()
    if not data:
        raise InputError("the request body is empty; expected JSON")
    return data


async def _hooked(state: State, req: SubmitRequest, ident: Identity) -> SubmitRequest:
    """``req`` as the site's submit hook leaves it (``[hooks] submit``; itself
    when none is set); validated afterwards as any request. The hook runs in a
    worker thread while the loop goes on (:mod:`schedd.hooks`)."""
    conf = state.settings.hooks
    if not conf.submit:
        return req
    view = admission.hook_view(state, req)
    out = await hooks.call_hook(hooks.load(conf.submit), conf.submit, view, hooks.Submitter(ident.user, ident.role),
                                conf.timeout_s, conf.on_error == "accept")
    return admission.hook_applied(req, view, out)


async def _writable(state: State) -> None:
    """Refuse a change up front, having changed nothing, while the store holds
    writes it cannot commit (the flush retries them at once: space may be back)."""
    if state.store is not None and state.store.full is not None:
        try:
            await state.store.flush()
        except StoreFull as e:
            raise StoreFull(f"{e}; nothing was accepted") from None


async def _durable(state: State, recs: list[JobRecord]) -> None:
    """Await the commit of new jobs; if it fails, withdraw them (503)."""
    if state.store is None:
        return
    try:
        await state.store.flush()
    except StoreError as e:
        admission.withdraw(state, recs)
        kind = StoreFull if isinstance(e, StoreFull) else Unavailable
        raise kind(f"{e}; nothing was accepted") from None


async def submit(request: web.Request) -> web.Response:
    state, ident = request.app[STATE], who(request)
    req = await _hooked(state, _submit.decode(await _body(request)), ident)
    await _writable(state)
    async with request.app[LOOP].admitting():
        rec = state.submit(req, ident.user, privileged=ident.privileged)
        await _durable(state, [rec])
    return _json({"job": rec, "id": f"{rec.id}.{state.settings.server_name}"}, 201)


async def submit_batch(request: web.Request) -> web.Response:
    """All or nothing: every job is validated before any is queued. The jobs
    together, each array counted as its subjobs, may be at most max_array_size."""
    state, ident = request.app[STATE], who(request)
    batch = _batch.decode(await _body(request))
    limit = state.settings.max_array_size
    if len(batch.jobs) > limit:
        raise InputError(f"jobs: {len(batch.jobs)} jobs, over the server's max_array_size of {limit}")
    checked, total = [], 0
    for i, req in enumerate(batch.jobs):
        try:
            req = batch.jobs[i] = await _hooked(state, req, ident)
            checked.append(state.validate(req, ident.user, ident.privileged))
            total += len(parse_array(req.array).indices()) if req.array else 1
            if total > limit:
                raise InputError(f"{total} jobs and subjobs so far, over the server's max_array_size of {limit}")
        except RequestError as e:
            e.args = (f"jobs[{i}]: {e}",)
            raise
    await _writable(state)
    async with request.app[LOOP].admitting():
        recs = [state.submit(req, ident.user, ok) for req, ok in zip(batch.jobs, checked)]
        await _durable(state, recs)
    ids = [rec.id for rec in recs]
    server = state.settings.server_name
    return _json({"ids": [f"{i}.{server}" for i in ids]}, 201)


_ORDER = attrgetter("order")


def _matching(jobs: list[JobRecord], user: str | None, queue: str | None, wanted: set[str] | None, after: int,
              finished: bool, with_subjobs: bool = True) -> list[JobRecord]:
    """The jobs that pass the filters given, one short pass per filter given:
    plain ``qstat`` has none but "not finished" and "no subjob", and with
    10,000 jobs testing every condition on every job cost a third as much as
    printing them."""
    if not finished:
        done = JobState.FINISHED.value
        jobs = [r for r in jobs if r.state != done]
    if not with_subjobs:
        jobs = [r for r in jobs if r.parent is None]
    if user is not None:
        jobs = [r for r in jobs if r.owner == user]
    if queue is not None:
        jobs = [r for r in jobs if r.queue == queue]
    if wanted is not None:
        jobs = [r for r in jobs if r.state in wanted]
    if after >= 0:
        jobs = [r for r in jobs if r.order > after]
    return jobs


async def _filters(request: web.Request, state: State, page: ListQuery) -> tuple[list[JobRecord], int | None]:
    """The matching jobs in submission order, and the cursor of the next page
    (``finished=1`` only: history is read from SQLite a page at a time, in a
    thread, so a big history neither blocks the event loop nor fills memory)."""
    q = request.query
    user, queue, states = q.get("user"), q.get("queue"), q.get("state")
    finished = q.get("finished", "0") in ("1", "true", "yes")
    wanted = set(states.split(",")) if states else None
    if wanted and wanted - {s.value for s in JobState}:
        raise InputError(f"state: {states!r}: expected some of {', '.join(s.value for s in JobState)}")
    after = page.after if page.after is not None else -1
    out = _matching(list(state.jobs.values()), user, queue, wanted, after, finished, page.subjobs)
    if not finished or state.store is None:
        out.sort(key=_ORDER)
        return out, None
    size = page.limit if page.limit is not None else HISTORY_PAGE
    rows = await asyncio.to_thread(state.store.load_jobs, owner=user, queue=queue, finished=True, after=after,
                                   limit=size + 1)
    seen = {r.id for r in out}
    out += [rec for rec in (_decoder.decode(r.data) for r in rows) if rec.id not in seen
            and (wanted is None or rec.state in wanted) and (page.subjobs or rec.parent is None)]
    out.sort(key=_ORDER)
    more = len(rows) > size or len(out) > size
    return out[:size], (out[size - 1].order if more and size else None)


_FIELDS = frozenset(JobRecord.__struct_fields__)


async def list_jobs(request: web.Request) -> web.Response:
    """Jobs matching the filters. ``fields=id,state,...`` returns only those
    fields of each job; ``table=qstat`` the lines plain ``qstat`` prints (see
    :func:`_printed`). Without either, every field but ``env_spec`` (``env_hash``
    names it; ``GET /jobs/ID`` or ``fields=env_spec`` has it)."""
    state, ident = request.app[STATE], who(request)
    table, fields = request.query.get("table"), request.query.get("fields")
    if table is not None and table not in TABLES:
        raise InputError(f"table: {table!r}: expected {' or '.join(TABLES)}")
    page = _query(request, ListQuery)
    if page.table is not None and fields is not None:
        raise InputError("table and fields: give one of them (a table has its own columns)")
    if page.table is not None:  # no secret-bearing field is printed: shown() has nothing to hide
        return await _table(request, state, page, page.table)
    jobs, cursor = await _filters(request, state, page)
    if page.limit is not None:
        jobs = jobs[:page.limit]
    server = state.settings.server_name
    more = {"next": cursor} if cursor is not None else {}
    jobs = [shown(r, ident) for r in jobs]
    if fields is None:  # env_spec (up to MBs each) only when asked for by name, or per job
        jobs = [msgspec.structs.replace(r, env_spec=None) if r.env_spec is not None else r for r in jobs]
        return _json({"server_name": server, "jobs": jobs, **more})
    names = fields.split(",")
    unknown = [f for f in names if f not in _FIELDS]
    if unknown:
        raise InputError(f"fields: unknown {', '.join(map(repr, unknown))}; a job has {', '.join(sorted(_FIELDS))}")
    return _json({"server_name": server, "jobs": [{f: getattr(r, f) for f in names} for r in jobs], **more})


#: The parameters of plain qstat's listing (and -w, -t): with no other, the
#: jobs are selected by :func:`_plain`.
_PLAIN = frozenset({"table", "subjobs", "limit"})


async def _table(request: web.Request, state: State, page: ListQuery, table: str) -> web.Response:
    """``table=``: the lines qstat prints (see :func:`_printed`), as JSON, or
    with ``Accept: text/plain`` as the text qstat writes (a listing the
    server pages, ``finished=1``, is JSON still: its ``next`` says where the
    rest is)."""
    if _PLAIN.issuperset(request.query):
        keys, cursor = _plain(state, page.subjobs), None
    else:
        jobs, cursor = await _filters(request, state, page)
        keys = _keys(jobs)
    if page.limit is not None:
        keys = keys[:page.limit]
    server, wide = state.settings.server_name, TABLES[table]
    found = _listing(keys, server, wide)
    if cursor is None and "text/plain" in request.headers.get("Accept", ""):
        return web.Response(body=found.text(wide), content_type="text/plain", charset="utf-8")
    more = {"next": cursor} if cursor is not None else {}
    return _json({"server_name": server, "table": table, **found.printed, **more})


#: What a job's line shows, after its submission order: the key of the line
#: in :data:`_PRINTED`, and a listing's sort key (orders are unique).
Key = tuple[int, str, str, str, str, str, float | None, float]


def _keys(jobs: Iterable[JobRecord]) -> list[Key]:
    """The jobs' keys (spelled out: ``attrgetter`` of the eight takes twice as long)."""
    return [(r.order, r.id, r.name, r.owner, r.queue, r.state, r.start_time, r.used.cpu_s) for r in jobs]


def _plain(state: State, with_subjobs: bool) -> list[Key]:
    """The keys of what plain qstat lists (the jobs not finished; subjobs
    only with -t) in submission order: one pass over the jobs, where the
    filters, the sort and the keys took four (a fifth of a 10,000-job listing)."""
    done = JobState.FINISHED.value
    keys = _keys(r for r in state.jobs.values() if r.state != done and (with_subjobs or r.parent is None))
    keys.sort()
    return keys


#: Printed lines, per (server, wide) layout, by what a line shows: formatting
#: costs ~4,000 instructions a line (most of a 10,000-job listing), so a line
#: is formatted when its job is first listed or has changed, not at every
#: ``qstat``. The key is all the line depends on, so a hit is always right;
#: bounded by emptying it when it outgrows what the listings need.
_PRINTED: dict[tuple[str, bool], dict[tuple[Any, ...], str]] = {}

class _Listing:
    """A listing printed lately: what its lines show, in order, and its
    answers. Even a hit in :data:`_PRINTED` costs a lookup a line, and joining
    10,000 lines more: a listing whose every line shows what it showed last
    time (one list comparison, element by element, of the same objects
    mostly) is answered with what was printed then, and one that only has
    jobs more at its end (``qsub`` then ``qstat``: new jobs come last) with
    that and the new jobs' lines."""

    __slots__ = ("_text", "keys", "printed")

    def __init__(self, keys: list[Key], printed: dict[str, str], text: bytes | None = None) -> None:
        self.keys, self.printed = keys, printed
        self._text = text

    def text(self, wide: bool) -> bytes:
        """What ``qstat`` prints of the jobs, heading included (nothing when
        there are none), encoded: the ``text/plain`` answer of a table, which
        the command writes as it comes (plain ``qstat``, ``-w``, ``-t``: the
        server selected the jobs), with no JSON to decode on either side."""
        if self._text is None:
            text = self.printed["text"]
            self._text = (header(wide) + text).encode() if text else b""
        return self._text

    def extended(self, keys: list[Key], server: str, wide: bool) -> _Listing:
        """This listing with the jobs of ``keys`` after its own (``keys``
        starts with its keys), their lines printed, the rest copied."""
        more = _print(keys[len(self.keys):], server, wide, len(keys))
        if not self.keys:
            return _Listing(keys, more)
        printed = {"ids": f"{self.printed['ids']} {more['ids']}", "text": self.printed["text"] + more["text"]}
        text = self._text + more["text"].encode() if self._text is not None else None
        return _Listing(keys, printed, text)


#: The last few listings of each layout (server, wide), the latest first:
#: plain qstat of everyone and ``qstat -u me`` alternate without evicting
#: each other. A few MB each with 10,000 jobs, hence few.
_LISTINGS: dict[tuple[str, bool], list[_Listing]] = {}
_LISTINGS_KEPT = 4


def _listing(keys: list[Key], server: str, wide: bool) -> _Listing:
    """The listing of the jobs of ``keys`` (see :class:`_Listing`), printed
    again only where a line would differ."""
    recent = _LISTINGS.setdefault((server, wide), [])
    found = next((last for last in recent if len(last.keys) == len(keys) and _same(last.keys, keys)), None)
    if found is None:
        before = next((last for last in recent if len(last.keys) < len(keys) and _same(last.keys, keys)), None)
        found = before.extended(keys, server, wide) if before is not None else _Listing(keys, _print(keys, server, wide))
    else:
        recent.remove(found)
    recent.insert(0, found)
    del recent[_LISTINGS_KEPT:]
    return found


def _same(kept: list[Key], keys: list[Key]) -> bool:
    """Whether ``keys`` starts with ``kept`` (is ``kept``, when as long):
    the ends compared first, which tells most listings apart at once."""
    n = len(kept)
    if n > len(keys) or (n and (kept[0] != keys[0] or kept[-1] != keys[n - 1])):
        return False
    return kept == (keys if n == len(keys) else keys[:n])


def _print(keys: list[Key], server: str, wide: bool, listed: int | None = None) -> dict[str, str]:
    """The lines of the jobs whose lines show ``keys``, from :data:`_PRINTED`
    where it has them (``listed``: how many lines the listing has in all,
    ``keys`` being its last ones; what bounds the lines kept)."""
    memo = _PRINTED.setdefault((server, wide), {})
    if len(memo) > 4 * (len(keys) if listed is None else listed) + 10_000:
        memo.clear()
    got: list[str | None] = list(map(memo.get, keys))
    if None in got:
        missing = [i for i, line in enumerate(got) if line is None]
        rows = [(k[1], k[2], k[3], k[4], letter(k[5], k[1]), used(k[1], k[6], k[7]))
                for k in map(keys.__getitem__, missing)]
        for i, line in zip(missing, lines(rows, server, wide)):
            got[i] = memo[keys[i]] = line
    text = "\n".join(cast("list[str]", got))
    return {"ids": " ".join([k[1] for k in keys]), "text": text + "\n" if text else ""}


def _printed(jobs: list[JobRecord], server: str, wide: bool) -> dict[str, str]:
    """Server-side printing (as ``kubectl get`` asks the API server for a
    table): the jobs as the lines of qstat's default layout, printed by the
    same code as the command's (:mod:`schedd.cli.qstat_default`), in one
    ``text`` (a newline after each line), with the jobs' ``ids`` (separated by
    spaces) for what the command still selects itself (arrays with -J, ``-E``,
    history). For 10,000 jobs the command decodes two strings and writes one,
    instead of decoding and formatting 10,000 records in a process that starts
    for each ``qstat``."""
    return _listing(_keys(jobs), server, wide).printed


def _id(request: web.Request) -> str:
    return normalize_id(request.match_info["id"], request.app[STATE].settings.server_name)


def _ref(request: web.Request) -> JobRef:
    return parse_ref(request.match_info["id"])


async def get_job(request: web.Request) -> web.Response:
    """One job (``{"job", "live"}``), or the subjobs of a range that exist
    (``{"jobs"}``; a 404 when none does)."""
    state, ident = request.app[STATE], who(request)
    ref = _ref(request)
    if ref.is_range:
        found = subjobs(state, ref)
        if not found:
            raise UnknownJob(f"Unknown Job Id {ref.id}")
        return _json({"server_name": state.settings.server_name, "jobs": [shown(r, ident) for r in found]})
    rec = state.lookup(ref.id)
    if rec is None:
        raise UnknownJob(f"Unknown Job Id {ref.id}")
    return _json({"job": shown(rec, ident), "live": _live(state, rec)})


def _live(state: State, rec: JobRecord) -> dict[str, float] | None:
    """A running job's usage now, summed over its ranks from the last heartbeats."""
    act = state.active.get(rec.id)
    if act is None:
        return None
    cpu = rss = 0.0
    utils: list[float] = []
    for rank, cp in enumerate(act.running.placement):
        entry = state.fleet.get(cp.node)
        if entry is None:
            continue
        sample = entry.job_samples.get((rec.id, rank))
        if sample is not None:
            cpu += sample.cpu_pct
            rss += sample.rss_mb
        by_index = {g.index: g.util_pct for g in entry.gpu_samples}
        utils += [by_index[g] for g in cp.gpus if g in by_index]
    elapsed = state.clock() - (rec.start_time or state.clock())
    return {"cpu_pct": cpu, "rss_mb": rss, "gpu_util_pct": sum(utils) / len(utils) if utils else 0.0,
            "walltime_s": elapsed, "gpu_s": rec.ngpus * elapsed}


async def job_events(request: web.Request) -> web.Response:
    """A job's history (like PBS tracejob): every recorded transition, oldest first."""
    state = request.app[STATE]
    who(request)
    jid = _id(request)
    if state.lookup(jid) is None:
        raise UnknownJob(f"Unknown Job Id {jid}")
    if state.store is None:
        return _json({"events": []})
    await state.store.flush()
    rows = state.store.events(jid)
    return _json({"events": [{"time": e.time, "kind": e.kind, "data": msgspec.json.decode(e.data)} for e in rows]})


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "0")
    if value not in ("0", "1", "true", "false"):
        raise InputError(f"{name}: {value!r}: expected 1 or 0")
    return value in ("1", "true")


Act = Callable[[str, Identity], Outbox]


async def _each(request: web.Request, act: Act, answer: Callable[[str], dict[str, Any]] | None = None) -> web.Response:
    """Run ``act`` on the job the path names and answer ``{"ok": true}`` (or
    ``answer(id)``); its error is the request's. On a range, run it on each
    subjob of the range that exists, after one ownership check of the array, and
    answer ``{"ok", "ids", "errors": [{"id", "code", "message"}]}``: every
    failure listed, as PBS's commands report each subjob's."""
    state, ident = request.app[STATE], who(request)
    ref = _ref(request)
    await _writable(state)
    if not ref.is_range:
        out = act(ref.id, ident)
        await _dispatch(request, out)
        return _json(answer(ref.id) if answer is not None else {"ok": True})
    parent = state.lookup(ref.parent)
    if parent is not None and not ident.privileged and parent.owner != ident.user:
        raise PermissionDenied(f"Unauthorized Request: job {ref.id} belongs to {parent.owner}")
    found = subjobs(state, ref)
    if not found:
        raise UnknownJob(f"Unknown Job Id {ref.id}")
    out, errors = [], []
    for rec in found:
        try:
            out += act(rec.id, ident)
        except RequestError as e:
            errors.append({"id": rec.id, "code": e.code, "message": str(e)})
    await _dispatch(request, out)
    return _json({"ok": not errors, "ids": [r.id for r in found], "errors": errors})


async def _dispatch(request: web.Request, out: Outbox) -> None:
    """Commit a change and send its messages; a 503 if the disk filled meanwhile.
    The change stays in memory and is written (its messages sent) once space
    returns: it cannot be undone as a submission can, so the message says so."""
    loop = request.app[LOOP]
    if not await loop.dispatch(out):
        full = request.app[STATE].store
        raise StoreFull(f"{full.full if full is not None else 'state store is full'}; the change is made "
                        "but not yet saved: it is written when space returns, lost if schedd stops first")


async def cancel(request: web.Request) -> web.Response:
    """qdel; ``?force=1`` (-W force) ends it without waiting for the agent;
    ``?purge=1`` (-x) also deletes a finished job's history."""
    state = request.app[STATE]
    purge, force = _flag(request, "purge"), _flag(request, "force")
    purged: list[str] = []

    def act(jid: str, ident: Identity) -> Outbox:
        rec = state.owned(jid, ident.user, ident.privileged)
        if purge and rec.state == JobState.FINISHED.value:
            state.purge(jid, ident.user, ident.privileged)
            purged.append(jid)
            return []
        return state.cancel(jid, ident.user, ident.privileged, force=force)

    return await _each(request, act, lambda jid: {"ok": True, "purged": True} if purged else {"ok": True})


class _Waiting:
    """How many long polls are waiting now: each holds a connection, a handler
    task and a timer until its job ends, so their number is bounded
    (``[http] max_waiters``); a finish resolves them by a listener, at no cost per tick."""

    count = 0


WAITING = web.AppKey("waiting", _Waiting)


async def wait_job(request: web.Request) -> web.Response:
    """Long poll: answer when the job has finished, or after ``timeout_s`` (qsub -W block).

    Past ``[http] max_waiters`` at once: 503 with Retry-After (qsub then polls)."""
    state, ident = request.app[STATE], who(request)
    jid = _id(request)
    timeout = _query(request, WaitQuery).timeout_s
    rec = state.lookup(jid)
    if rec is None:
        raise UnknownJob(f"Unknown Job Id {jid}")
    if rec.state != JobState.FINISHED.value:
        waiting, cap = request.app[WAITING], state.settings.http.max_waiters
        if waiting.count >= cap:
            body = {"error": {"code": "too_many_waiters", "message": (
                f"{cap} requests already wait for jobs to finish ([http] max_waiters); "
                "retry later, or poll GET /api/v1/jobs/ID")}}
            resp = _json(body, 503)
            resp.headers["Retry-After"] = "5"
            return resp
        done = asyncio.get_running_loop().create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        state.finish_listeners.setdefault(rec.id, []).append(resolve)
        waiting.count += 1
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            pass
        finally:
            waiting.count -= 1
            listeners = state.finish_listeners.get(rec.id, [])
            if resolve in listeners:
                listeners.remove(resolve)
            if not listeners:
                state.finish_listeners.pop(rec.id, None)
        rec = state.lookup(jid) or rec
    return _json({"job": shown(rec, ident), "finished": rec.state == JobState.FINISHED.value})


async def server(request: web.Request) -> web.Response:
    """The server summary (qstat -B): name, default queue, jobs by state, nodes, GPUs."""
    state = request.app[STATE]
    who(request)
    jobs: dict[str, int] = {}
    for r in state.jobs.values():
        if r.parent is None:  # an array is one job, as in qstat -Q
            jobs[r.state] = jobs.get(r.state, 0) + 1
    nodes: dict[str, int] = {}
    gpus = free = 0
    busy = state.busy_gpus()
    for e in state.fleet:
        st = e.shown_state.value
        nodes[st] = nodes.get(st, 0) + 1
        gpus += e.node.ngpus
        free += sum((e.node.name, g.index) not in busy for g in e.node.gpus) if st == "up" else 0
    return _json({
        "server_name": state.settings.server_name, "default_queue": state.settings.default_queue,
        "jobs": jobs, "total_jobs": sum(jobs.values()), "nodes": nodes, "gpus": gpus, "gpus_free": free,
        "scheduling": True, "cycles": request.app[LOOP].cycles, "started_at": request.app[LOOP].started,
    })


async def _decode(request: web.Request, kind: type[Any]) -> Any:
    data = await request.read()
    return msgspec.json.decode(data or b"{}", type=kind)


async def hold(request: web.Request) -> web.Response:
    """POST .../hold and .../release: the route's last segment says which."""
    state = request.app[STATE]
    body = await _decode(request, HoldBody)
    change = state.hold if request.path.endswith("/hold") else state.release

    def act(jid: str, ident: Identity) -> Outbox:
        change(jid, body.types, ident.user, ident.privileged)
        return []

    return await _each(request, act)


async def signal(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _decode(request, SignalBody)
    _check_signal(body.signal)
    return await _each(request, lambda jid, ident: state.signal(jid, body.signal, ident.user, ident.privileged))


async def requeue(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await _each(request, lambda jid, ident: state.requeue(jid, ident.user, ident.privileged))


async def alter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _decode(request, AlterBody)
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    if not changes:
        raise InputError("nothing to alter: give walltime_s, priority, name or queue")
    conf = state.settings.hooks
    if conf.submit:  # the site's hook sees the job (an array: its parent) as altered, once
        ident, ref = who(request), _ref(request)
        rec = state.owned(ref.parent if ref.is_range else ref.id, ident.user, ident.privileged)
        view = commands.alter_view(rec, changes)
        out = await hooks.call_hook(hooks.load(conf.submit), conf.submit, view,
                                    hooks.Submitter(ident.user, ident.role), conf.timeout_s, conf.on_error == "accept")
        changes = commands.altered_by_hook(view, out, changes)

    def act(jid: str, ident: Identity) -> Outbox:
        state.alter(jid, changes, ident.user, ident.privileged)
        return []

    return await _each(request, act, lambda jid: {"job": state.jobs[jid]})


def _check_signal(sig: str) -> None:
    """A signal number 1..64 or a name of :class:`signal.Signals`. ASCII digits
    only (``str.isdigit`` takes ``'³'``, which ``int`` refuses), and a name must
    be a signal, not any ``SIG`` attribute of the module (``SIG_IGN``)."""
    import signal as sigmod

    name = sig.upper().removeprefix("SIG")
    if name.isascii() and name.isdigit() and 0 < int(name) < 65:
        return
    if not isinstance(getattr(sigmod, f"SIG{name}", None), sigmod.Signals):
        raise InputError(f"signal: {sig!r}: not a signal name or number")


async def queues(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who(request)
    counts: dict[str, dict[str, int]] = {q: {} for q in state.settings.queues}
    for r in state.jobs.values():
        if r.parent is not None:
            continue  # as PBS counts: an array is one job (its parent), not its subjobs
        c = counts.setdefault(r.queue, {})
        c[r.state] = c.get(r.state, 0) + 1
    body = {name: {"settings": q, "jobs": counts.get(name, {})} for name, q in state.settings.queues.items()}
    return _json({"queues": body, "default": state.settings.default_queue})


async def usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who(request)
    now = state.clock()
    values = state.ledger.at(now)
    rows = [{"account": a, "user": u, "usage": v} for (a, u), v in sorted(values.items())]
    factors: dict[str, float] = {}
    if state.fairshare is not None:
        factors = {f"{a}/{u}": f for (a, u), f in state.fairshare.compute(values).items()}
    return _json({"usage": rows, "unit": state.fairshare.usage if state.fairshare else "gpu_seconds", "fairshare": factors})


def add_routes(app: web.Application) -> None:
    app[WAITING] = _Waiting()
    r = app.router
    r.add_post("/api/v1/jobs", submit)
    r.add_post("/api/v1/jobs/batch", submit_batch)
    r.add_get("/api/v1/jobs", list_jobs)
    r.add_get("/api/v1/jobs/{id}", get_job)
    r.add_get("/api/v1/jobs/{id}/events", job_events)
    r.add_get("/api/v1/jobs/{id}/wait", wait_job)
    r.add_get("/api/v1/server", server)
    r.add_delete("/api/v1/jobs/{id}", cancel)
    r.add_patch("/api/v1/jobs/{id}", alter)
    r.add_post("/api/v1/jobs/{id}/hold", hold)
    r.add_post("/api/v1/jobs/{id}/release", hold)
    r.add_post("/api/v1/jobs/{id}/signal", signal)
    r.add_post("/api/v1/jobs/{id}/requeue", requeue)
    r.add_get("/api/v1/queues", queues)
    r.add_get("/api/v1/usage", usage)
