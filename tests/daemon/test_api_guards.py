"""The REST API's guards, on the real aiohttp app over TCP (no agents, no store):
authentication before any body, bounded query parameters, subjob ranges
answered by the server, and other users' secrets withheld."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from schedd.daemon.reconcile import on_register
from schedd.api.app import make_app
from schedd.api.auth import TokenBook
from schedd.config import load_pipeline, load_settings
from schedd.daemon.loop import Loop
from schedd.protocol import GpuInfo, Register
from schedd.daemon.state import State

pytestmark = pytest.mark.asyncio


class Api:
    """A test client and a token per user (ann, bob; olga an operator)."""

    def __init__(self, client: TestClient[Any, Any], state: State, tokens: dict[str, str]) -> None:
        self.client, self.state, self.tokens = client, state, tokens

    async def call(self, user: str | None, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["Authorization"] = f"Bearer {self.tokens[user]}"
        r = await self.client.request(method, path, json=body, data=data, headers=hdrs)
        return r.status, await r.json()


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    settings = load_settings()
    state = State(settings, load_pipeline(settings.policies_path()), None, lambda: 1000.0)
    for name in ("n1", "n2"):
        reg = Register(name, 64, 100_000, [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(8)], True)
        on_register(state, reg, lambda m: None, "127.0.0.1")
    book = TokenBook(None)
    tokens = {u: book.create(u, "operator" if u == "olga" else "user", 0.0) for u in ("ann", "bob", "olga")}
    async with TestClient(TestServer(make_app(state, Loop(state), book))) as client:
        yield Api(client, state, tokens)


def error_of(status: int, body: Any) -> tuple[int, str, str]:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return status, body["error"]["code"], body["error"]["message"]


async def test_a_compressed_body_is_refused_after_authentication(api: Api) -> None:
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    status, code, msg = error_of(*await api.call(None, "POST", "/api/v1/jobs", headers=gz, data=b"abcd"))
    assert (status, code) == (401, "unauthenticated")
    status, code, msg = error_of(*await api.call("ann", "POST", "/api/v1/jobs", headers=gz, data=b"abcd"))
    assert (status, code) == (400, "bad_request") and "Content-Encoding 'gzip'" in msg
    assert api.state.jobs == {}


@pytest.mark.parametrize("query", ["timeout_s=nan", "timeout_s=inf", "timeout_s=-1", "timeout_s=1e9", "timeout_s=x"])
async def test_wait_timeout_must_be_finite_and_bounded(api: Api, query: str) -> None:
    _, body = await api.call("ann", "POST", "/api/v1/jobs", {"argv": ["true"], "workdir": "/tmp", "hold": True})
    status, code, msg = error_of(*await api.call("ann", "GET", f"/api/v1/jobs/{body['job']['id']}/wait?{query}"))
    assert (status, code) == (400, "bad_request") and "timeout_s" in msg


@pytest.mark.parametrize("limit", ["-1", "abc", "9" * 5000])
async def test_list_limit_is_a_bounded_number(api: Api, limit: str) -> None:
    status, code, msg = error_of(*await api.call("ann", "GET", f"/api/v1/jobs?limit={limit}"))
    assert (status, code) == (400, "bad_request") and "limit" in msg


async def test_a_range_is_answered_for_the_subjobs_that_exist(api: Api) -> None:
    _, body = await api.call("ann", "POST", "/api/v1/jobs",
                             {"argv": ["true"], "workdir": "/tmp", "hold": True, "array": "1-9:2"})
    n = body["job"]["number"]
    status, got = await api.call("bob", "GET", f"/api/v1/jobs/{n}%5B2-999999999%5D")
    assert status == 200 and [j["id"] for j in got["jobs"]] == [f"{n}[{i}]" for i in (3, 5, 7, 9)]
    status, code, msg = error_of(*await api.call("bob", "DELETE", f"/api/v1/jobs/{n}%5B2-5%5D"))
    assert (status, code, msg) == (403, "permission_denied", f"Unauthorized Request: job {n}[2-5] belongs to ann")
    status, got = await api.call("ann", "DELETE", f"/api/v1/jobs/{n}%5B2-5%5D")
    assert (status, got) == (200, {"ok": True, "ids": [f"{n}[3]", f"{n}[5]"], "errors": []})
    status, got = await api.call("ann", "DELETE", f"/api/v1/jobs/{n}%5B1-5%5D")
    assert got["ids"] == [f"{n}[1]", f"{n}[3]", f"{n}[5]"]
    assert [(e["id"], e["code"]) for e in got["errors"]] == [(f"{n}[3]", "job_finished"), (f"{n}[5]", "job_finished")]
    assert [api.state.jobs[f"{n}[{i}]"].state for i in (1, 7)] == ["finished", "held"]
    status, code, _ = error_of(*await api.call("ann", "DELETE", "/api/v1/jobs/999999%5B1-200000%5D"))
    assert (status, code) == (404, "unknown_job")
    status, code, _ = error_of(*await api.call("ann", "GET", f"/api/v1/jobs/{n}%5B10-20%5D"))
    assert (status, code) == (404, "unknown_job")


async def test_secrets_are_shown_to_the_owner_and_operators_only(api: Api) -> None:
    secret = {"script": "echo s3cret-script\n", "env": {"API_KEY": "s3cret-env"}, "workdir": "/tmp", "hold": True}
    _, body = await api.call("ann", "POST", "/api/v1/jobs", secret)
    jid = body["job"]["id"]
    for user, sees in (("ann", True), ("olga", True), ("bob", False)):
        _, got = await api.call(user, "GET", f"/api/v1/jobs/{jid}")
        _, listed = await api.call(user, "GET", "/api/v1/jobs")
        _, fields = await api.call(user, "GET", "/api/v1/jobs?fields=id,script,env,argv")
        text = f"{got} {listed} {fields}"
        assert ("s3cret" in text) is sees, (user, text)
        assert got["job"]["owner"] == "ann" and got["job"]["name"] == "STDIN"  # the rest is visible
