"""One admission check for a submission and for every alteration (issue #17, item 6),
on the state with a virtual clock: what submitting could not reach, moving a job
cannot reach either, and a refused alteration changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

import schedd.daemon.admission
from schedd.daemon.reconcile import on_register
from schedd.config import QueueSettings, load_pipeline, load_settings
from schedd.errors import InputError, NeverFits, PermissionDenied, RequestError
from schedd.core.model import Shape, shape_of
from schedd.protocol import GpuInfo, Register
from schedd.daemon.records import ChunkRequest, ChunkSpec, SubmitRequest
from schedd.daemon.state import State

TEN_DAYS = 10 * 86400.0


@pytest.fixture
def state() -> State:
    settings = load_settings()  # the shipped queues: 1xgpu allows at most 3 days
    settings.queues["mine"] = QueueSettings(default_chunk=ChunkSpec(1, 0, 0), allowed_users=["ann"])
    st = State(settings, load_pipeline(settings.policies_path()), None, lambda: 1000.0)
    for name in ("n1", "n2"):
        reg = Register(name, 64, 100_000, [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(8)], True)
        on_register(st, reg, lambda m: None, "127.0.0.1")
    return st


def held(**kw: object) -> SubmitRequest:
    kw.setdefault("walltime_s", TEN_DAYS)
    return SubmitRequest(argv=["true"], workdir="/tmp", hold=True, **kw)  # type: ignore[arg-type]


ALTERATIONS: list[tuple[str, dict[str, object], bool, type[RequestError], str]] = [
    ("a move past the queue's max walltime", {"queue": "1xgpu"}, False, InputError, "over queue '1xgpu'"),
    ("by an operator too", {"queue": "1xgpu"}, True, InputError, "over queue '1xgpu'"),
    ("a move into a queue the owner may not use", {"queue": "mine"}, True, PermissionDenied, "'bob' may not submit"),
    ("a raise past the server's max", {"walltime_s": 400 * 86400.0}, True, InputError, "max_walltime_s"),
    ("a raise by a user", {"walltime_s": 11 * 86400.0}, False, PermissionDenied, "only lower"),
    ("a valid change with a refused one", {"priority": 9, "queue": "1xgpu"}, False, InputError, "over queue"),
    ("a name with a slash", {"name": "a/b"}, False, InputError, "name"),
    ("a walltime that is not a number", {"walltime_s": "long"}, False, InputError, "walltime_s"),
]


@pytest.mark.parametrize(("label", "changes", "privileged", "error", "message"), ALTERATIONS,
                         ids=[a[0] for a in ALTERATIONS])
def test_a_refused_alteration_changes_nothing(state: State, label: str, changes: dict[str, object], privileged: bool,
                                              error: type[RequestError], message: str) -> None:
    rec = state.submit(held(), "bob")
    before = msgspec.structs.asdict(rec)
    with pytest.raises(error, match=message):
        state.alter(rec.id, changes, "olga" if privileged else "bob", privileged)
    assert msgspec.structs.asdict(state.jobs[rec.id]) == before, label


def test_the_same_move_as_a_submission_is_refused_alike(state: State) -> None:
    with pytest.raises(InputError, match="over queue '1xgpu'") as submitted:
        state.submit(held(queue="1xgpu"), "bob")
    rec = state.submit(held(), "bob")
    with pytest.raises(InputError, match="over queue '1xgpu'") as altered:
        state.alter(rec.id, {"queue": "1xgpu"}, "bob", False)
    assert str(submitted.value) == str(altered.value)


def test_an_allowed_move_applies_every_change(state: State) -> None:
    rec = state.submit(held(), "bob")
    state.alter(rec.id, {"walltime_s": 3600.0, "queue": "1xgpu", "name": "short"}, "bob", False)
    assert (rec.walltime_s, rec.queue, rec.name) == (3600.0, "1xgpu", "short")


def test_altering_an_array_reaches_its_pending_subjobs_and_never_queues_the_parent(state: State) -> None:
    parent = state.submit(held(array="1-3"), "bob")
    state.alter(parent.id, {"walltime_s": 60.0}, "bob", False)
    assert [state.jobs[f"{parent.number}[{i}]"].walltime_s for i in (1, 2, 3)] == [60.0] * 3
    assert parent.id not in state.pending  # the parent is a summary, never a job to start
    sub = f"{parent.number}[2]"
    with pytest.raises(InputError, match="over queue"):  # a subjob on its own: the same check
        state.alter(sub, {"queue": "1xgpu", "walltime_s": TEN_DAYS}, "olga", True)
    assert state.jobs[sub].queue == "default"


def test_a_negative_nice_is_for_operators(state: State) -> None:
    with pytest.raises(PermissionDenied, match="negative nice"):
        state.submit(held(nice=-10), "bob")
    assert state.submit(held(nice=-10), "olga", privileged=True).nice == -10
    assert state.submit(held(nice=10), "bob").nice == 10


def test_more_nodes_than_the_pool_is_refused_before_any_expansion(state: State,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    expanded: list[int] = []
    real: Callable[..., Shape] = shape_of  # what admission calls, patched there below

    def counting(chunks: tuple[object, ...]) -> Shape:
        shape = real(chunks)
        expanded.append(len(shape))
        return shape

    monkeypatch.setattr(schedd.daemon.admission, "shape_of", counting)
    req = SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(count=5000)] * 2)
    with pytest.raises(NeverFits, match="asks for 10000 nodes; the pool has 2"):
        state.submit(req, "bob")
    assert expanded == [] and state.jobs == {}


def test_the_server_walltime_limit_applies_to_every_queue(state: State) -> None:
    with pytest.raises(InputError, match="over the server's max_walltime_s of 3.1536e\\+07 s"):
        state.submit(held(walltime_s=366 * 86400.0), "bob")


@pytest.mark.parametrize("privileged", [False, True])
def test_root_may_not_own_jobs_by_default(state: State, privileged: bool) -> None:
    """PBS's acl_roots: root's job would run as root on a node (issue #11); even an
    admin's root submission is refused, and nothing is queued."""
    assert state.settings.allow_root_jobs is False  # the shipped schedd.toml's value
    before = dict(state.jobs)
    with pytest.raises(PermissionDenied, match=r"'root' \(uid 0\) may not own jobs.*allow_root_jobs = true"):
        state.submit(held(), "root", privileged=privileged)
    assert state.jobs == before


def test_allow_root_jobs_lets_root_submit(state: State) -> None:
    state.settings.allow_root_jobs = True
    assert state.submit(held(), "root").owner == "root"


def test_job_records_are_not_walked_by_the_cyclic_gc(state: State) -> None:
    """A record is never tracked (``gc=False``): with tens of thousands held, every full
    collection walked each one's 47 fields, up to half of a 10,000-job batch request
    (bench/RESULTS.md, "Batch submission after the end-to-end runs"). Submitted, a
    subjob, and decoded from the store's blob alike; its lists stay tracked."""
    import gc

    one = state.submit(held(), "ann")
    parent = state.submit(held(array="1-3"), "ann")
    reloaded = msgspec.json.decode(msgspec.json.encode(one), type=type(one))
    for rec in (one, parent, state.jobs[f"{parent.number}[2]"], reloaded):
        assert not gc.is_tracked(rec), rec.id
        assert gc.is_tracked(rec.chunks)
