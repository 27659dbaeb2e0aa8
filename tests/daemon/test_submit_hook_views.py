"""The submit hook's view of a request and what its changes become (schedd.hooks,
admission.hook_view/hook_applied, commands.alter_view/altered_by_hook), and the
time bound of a call, without a daemon."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from schedd.config import load_pipeline, load_settings
from schedd.daemon import admission, commands
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.daemon.state import State
from schedd.errors import HookRejected
from schedd.hooks import Reject, Submission, Submitter, call_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "hooks"))
import site_submit  # noqa: E402  (the example hook, examples/hooks/site_submit.py)


@pytest.fixture
def state() -> State:
    settings = load_settings()
    return State(settings, load_pipeline(settings.policies_path()), None, lambda: 1000.0)


def test_the_view_is_resolved_and_untouched_values_stay_unset(state: State) -> None:
    req = SubmitRequest(argv=["true"], chunks=[ChunkRequest(ncpus=2)])
    view = admission.hook_view(state, req)
    qs = state.settings.queues[state.settings.default_queue]
    assert view.queue == state.settings.default_queue and view.walltime_s == qs.default_walltime_s
    assert view.chunks[0].ncpus == 2 and view.chunks[0].ngpus == qs.default_chunk.ngpus
    assert admission.hook_applied(req, view, view) is req
    moved = admission.hook_view(state, req)
    moved.queue, moved.account = "1xgpu", "vision"
    out = admission.hook_applied(req, view, moved)
    assert (out.queue, out.account, out.walltime_s) == ("1xgpu", "vision", None)  # the new queue's default walltime
    bad = admission.hook_view(state, req)
    bad.name = "a/b" * 200
    with pytest.raises(HookRejected, match="invalid request"):
        admission.hook_applied(req, view, bad)


def test_an_alteration_may_change_only_what_qalter_can(state: State) -> None:
    rec = state.submit(SubmitRequest(argv=["true"], workdir="/tmp", hold=True), "ann")
    view = commands.alter_view(rec, {"priority": 5})
    assert (view.kind, view.job_id, view.priority) == ("alter", rec.id, 5)
    after = commands.alter_view(rec, {"priority": 5})
    after.walltime_s = 60.0
    assert commands.altered_by_hook(view, after, {"priority": 5}) == {"priority": 5, "walltime_s": 60.0}
    after.account = "other"
    with pytest.raises(HookRejected, match="changed account"):
        commands.altered_by_hook(view, after, {"priority": 5})


def _job() -> Submission:
    return Submission("submit", "default", 3600.0, [])


def test_the_example_hook() -> None:
    assert site_submit.submit(_job(), Submitter("ann")).account == "vision"
    assert site_submit.submit(Submission("submit", "docker", 60.0, []), Submitter("bob")).container
    assert not site_submit.submit(Submission("submit", "docker", 60.0, []), Submitter("op", "operator")).container
    with pytest.raises(Reject, match="cap"):
        site_submit.submit(Submission("submit", "default", 5 * 3600.0, []), Submitter("intern"))


def test_a_call_is_bounded_and_its_failures_reject_or_accept() -> None:
    never = threading.Event()

    def hang(job: Submission, who: Submitter) -> Submission:
        never.wait()
        return job

    def boom(job: Submission, who: Submitter) -> Submission:
        raise ValueError("boom")

    async def main() -> None:
        with pytest.raises(HookRejected, match="did not answer within 0.05 s"):
            await call_hook(hang, "t:hang", _job(), Submitter("ann"), 0.05, False)
        with pytest.raises(HookRejected, match="ValueError: boom"):
            await call_hook(boom, "t:boom", _job(), Submitter("ann"), 5.0, False)
        job = _job()
        assert await call_hook(boom, "t:boom", job, Submitter("ann"), 5.0, True) is job

    asyncio.run(main())
    never.set()
