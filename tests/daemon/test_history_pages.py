"""``GET /jobs?finished=1`` (qstat -x, qacct) pages the store's history: every job once, in
submission order, a bounded page per answer, read off the event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from schedd.daemon.reconcile import on_register
from schedd.api import jobs as jobs_api
from schedd.api.app import make_app
from schedd.api.auth import TokenBook
from schedd.config import load_pipeline, load_settings
from schedd.daemon.loop import Loop
from schedd.protocol import Exited, GpuInfo, Launch, Register
from schedd.daemon.records import ChunkRequest, SubmitRequest
from schedd.core.scheduler import run_cycle
from schedd.daemon.state import State
from schedd.store import Store

JOBS = 23


@pytest_asyncio.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    monkeypatch.setattr(jobs_api, "HISTORY_PAGE", 5)
    settings = load_settings()
    store = Store(tmp_path / "schedd.db")
    store.start()
    state = State(settings, load_pipeline(settings.policies_path()), store, lambda: 1000.0)
    state.keep_finished = 3  # most of the history is only in SQLite
    on_register(state, Register("n1", 64, 100_000, [GpuInfo(0, "u0", "fake", 80_000)], True), lambda m: None, "x")
    for _ in range(JOBS):
        state.submit(SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=0)]), "ann")
    while state.pending:
        for _, msg in state.apply(run_cycle(state.snapshot(1000.0), state.pipeline), 1000.0):
            if isinstance(msg, Launch):
                state.rank_exited(Exited(msg.job_id, msg.attempt, msg.rank, 0, "exited", 1000.0, 1000.0))
    state.submit(SubmitRequest(argv=["true"], workdir="/tmp", chunks=[ChunkRequest(ncpus=1, ngpus=0)]), "ann")
    store.flush_sync()
    book = TokenBook(None)
    token = book.create("ann", "user", 0.0)
    async with TestClient(TestServer(make_app(state, Loop(state), book))) as c:
        yield c, token
    store.close()


async def _get(c: TestClient[Any, Any], token: str, path: str) -> Any:
    r = await c.get(path, headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200, await r.text()
    return await r.json()


@pytest.mark.asyncio
async def test_history_comes_in_pages_that_add_up_to_every_job_once(client: tuple[TestClient[Any, Any], str]) -> None:
    c, token = client
    seen: list[str] = []
    answer = await _get(c, token, "/api/v1/jobs?finished=1")
    pages = 1
    while True:
        assert len(answer["jobs"]) <= 5
        seen += [j["id"] for j in answer["jobs"]]
        if "next" not in answer:
            break
        answer = await _get(c, token, f"/api/v1/jobs?finished=1&after={answer['next']}")
        pages += 1
    assert seen == [str(i) for i in range(1, JOBS + 2)]  # the 23 finished and the queued one, in order
    assert pages == 5


@pytest.mark.asyncio
async def test_live_jobs_alone_are_not_paged(client: tuple[TestClient[Any, Any], str]) -> None:
    c, token = client
    answer = await _get(c, token, "/api/v1/jobs")
    assert [j["id"] for j in answer["jobs"]] == [str(JOBS + 1)] and "next" not in answer


@pytest.mark.asyncio
async def test_a_bad_cursor_is_a_400(client: tuple[TestClient[Any, Any], str]) -> None:
    c, token = client
    r = await c.get("/api/v1/jobs?finished=1&after=soon", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 400 and "after" in (await r.json())["error"]["message"]


def test_the_client_follows_every_page(tmp_path: Path) -> None:
    """The stdlib client's pages() as qstat -x uses it, against a scripted pair of answers."""
    from schedd.cli.client import Client

    calls: list[str] = []
    answers = {"/j?finished=1": {"jobs": [1, 2], "next": 2}, "/j?finished=1&after=2": {"jobs": [3]}}

    class Scripted(Client):
        def call(self, method: str, path: str, body: Any = None) -> Any:
            calls.append(path)
            return dict(answers[path])

    assert Scripted("http://127.0.0.1:1").pages("/j?finished=1") == {"jobs": [1, 2, 3]}
    assert calls == ["/j?finished=1", "/j?finished=1&after=2"]
