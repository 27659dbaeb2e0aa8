"""The OpenAPI document names exactly the router's routes, describes bodies
with the handlers' own Structs, is valid JSON Schema, and is served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schedd.api import admin
from schedd.api.app import make_app
from schedd.api.auth import TokenBook
from schedd.api.openapi import ROUTES, UNDOCUMENTED, document
from schedd.config import load_pipeline, load_settings
from schedd.daemon.loop import Loop
from schedd.daemon.reload import Reloader, Sources
from schedd.daemon.state import State
from schedd.daemon.records import Bounds


def _app() -> tuple[web.Application, TokenBook]:
    """The app as the daemon builds it (schedd.daemon.server): make_app, then the admin routes."""
    settings = load_settings()
    state = State(settings, load_pipeline(settings.policies_path()), None, lambda: 1000.0)
    book = TokenBook(None)
    app = make_app(state, Loop(state), book)
    admin.setup(app, Reloader(state, Sources()))
    return app, book


def _routed(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or any(path.startswith(p) for p in UNDOCUMENTED):
            continue
        out.add((route.method, path))
    return out


def test_the_document_and_the_router_name_the_same_routes() -> None:
    routed = _routed(_app()[0])
    doc = {(m.upper(), p) for p, ops in document()["paths"].items() for m in ops}
    assert routed - doc == set(), "routes missing from schedd/api/openapi.py ROUTES"
    assert doc - routed == set(), "documented routes that the app does not serve"
    assert len(ROUTES) == len(doc)


def test_bodies_and_queries_are_the_handlers_structs() -> None:
    """A bound of a Struct the handler decodes shows in the document, unedited."""
    doc = document()
    schemas = doc["components"]["schemas"]
    submit = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert submit == {"$ref": "#/components/schemas/SubmitRequest"}
    props = schemas["SubmitRequest"]["properties"]
    assert props["priority"]["maximum"] == 1023 and schemas["SubmitRequest"]["additionalProperties"] is False
    assert props["name"]["maxLength"] == Bounds.NAME
    assert props["name"]["pattern"].endswith("$") and "\\Z" not in str(doc)  # ECMA regexes, not Python's
    wait = {p["name"]: p for p in doc["paths"]["/api/v1/jobs/{id}/wait"]["get"]["parameters"]}
    assert wait["timeout_s"]["schema"]["maximum"] == 3600 and wait["id"]["in"] == "path"
    assert doc["paths"]["/api/v1/pool/{group}/scale"]["post"]["requestBody"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/ScaleBody"}


def test_every_schema_is_valid_json_schema_and_every_ref_resolves() -> None:
    doc = document()
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    names = {f"#/components/schemas/{n}" for n in doc["components"]["schemas"]}
    assert set(refs(doc)) <= names
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith("/api/"):
                assert op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


@pytest.mark.asyncio
async def test_served_with_the_apis_authentication() -> None:
    app, book = _app()
    token = book.create("ann", "user", 0.0)
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/api/v1/openapi.json")
        assert r.status == 401 and set(await r.json()) == {"error"}
        r = await client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"})
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == document()


def test_the_fuzz_run_reports_a_5xx_a_bad_error_shape_and_an_answer_off_its_schema() -> None:
    """bench.fuzz can fail: against a small app that answers wrongly in each way
    (in a thread of its own: the fuzzer's client is synchronous)."""
    import asyncio
    import threading

    from bench.fuzz import fuzz

    ref = {"$ref": "#/components/schemas/ErrorBody"}
    err = {"4XX": {"description": "e", "content": {"application/json": {"schema": ref}}}}

    def answer(schema: dict[str, Any]) -> dict[str, Any]:
        return {"responses": {"200": {"description": "ok", "content": {"application/json": {"schema": schema}}}, **err}}

    spec = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "components": {"schemas": {"ErrorBody": document()["components"]["schemas"]["ErrorBody"],
                                       "ErrorDetail": document()["components"]["schemas"]["ErrorDetail"]}},
            "paths": {"/api/v1/openapi.json": {"get": answer({"type": "object"})},
                      "/boom": {"get": answer({"type": "object"})},
                      "/text": {"get": answer({"type": "object"})},
                      "/drift": {"get": answer({"type": "object", "properties": {"n": {"type": "integer"}},
                                                "required": ["n"]})}}}
    def route(reply: Callable[[], web.Response]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return reply()  # a new answer each time: one is sent once

        return handler

    app = web.Application()
    app.router.add_get("/api/v1/openapi.json", route(lambda: web.json_response(spec)))
    app.router.add_get("/boom", route(lambda: web.json_response({"error": {"code": "x", "message": "x"}}, status=500)))
    app.router.add_get("/text", route(lambda: web.Response(status=400, text="plain")))
    app.router.add_get("/drift", route(lambda: web.json_response({"n": "seven"})))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        tally = fuzz(f"http://127.0.0.1:{port}", "t", max_examples=2)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.run_until_complete(runner.cleanup())
        loop.close()
    text = "\n".join(tally.failures)
    assert "/boom" in text and "Server error" in text, text
    assert "/text" in text and "error_shape" in text, text
    assert "/drift" in text and "/api/v1/openapi.json" not in text, text


# ------------------------------------------------ what the fuzz runs found, kept as plain regressions


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", ["³", "٣", "SIG_IGN", "_DFL", "sig"])
async def test_a_signal_that_is_no_signal_is_a_400_not_a_500(sig: str) -> None:
    """``'³'.isdigit()`` is true and ``int('³')`` raises (a 500 with a traceback,
    found by bench.fuzz with a random seed); ``SIG_IGN`` is in the signal module
    but no signal."""
    app, book = _app()
    auth = {"Authorization": f"Bearer {book.create('ann', 'user', 0.0)}"}
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/api/v1/jobs", json={"argv": ["true"], "workdir": "/tmp", "hold": True}, headers=auth)
        jid = (await r.json())["job"]["id"]
        r = await client.post(f"/api/v1/jobs/{jid}/signal", json={"signal": sig}, headers=auth)
        body = await r.json()
        assert r.status == 400 and body["error"]["code"] == "bad_request", body
        assert "not a signal name or number" in body["error"]["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("op", "body"), [("runs/log-metric", [1]), ("runs/log-batch", {"metrics": [7]}),
                                          ("runs/set-tag", "text"), ("experiments/create", 5)])
async def test_an_mlflow_body_of_the_wrong_shape_is_mlflows_400_not_a_500(op: str, body: Any) -> None:
    """The MLflow routes are outside the document (MLflow's own API, reached
    by a job's tracking URI), so no fuzz run reaches them: a JSON body that is
    not an object (or holds a number for an object) was an AttributeError, a 500."""
    from schedd.api.keys import STATE
    from schedd.api.mlflow import MLFLOW, capability

    app, book = _app()
    auth = {"Authorization": f"Bearer {book.create('ann', 'user', 0.0)}"}
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/api/v1/jobs", json={"argv": ["true"], "workdir": "/tmp", "hold": True}, headers=auth)
        jid = (await r.json())["job"]["id"]
        attempt = app[STATE].jobs[jid].attempt
        key = capability(app[MLFLOW].secret, jid, attempt)
        r = await client.post(f"/mlflow/{jid}/{attempt}/{key}/api/2.0/mlflow/{op}", json=body)
        answer = await r.json()
        assert r.status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer


@pytest.mark.asyncio
async def test_the_answers_of_a_pool_with_nodes_and_jobs_match_the_document() -> None:
    """The fuzz runs check every documented answer against its schema; this does
    it for the read routes of a state with registered nodes (GPUs, a job placed
    on one) without a daemon, so a Struct of the document that drifts from a
    handler's dict fails here first."""
    from schedd.daemon.reconcile import on_register
    from schedd.protocol import GpuInfo, Register

    app, book = _app()
    from schedd.api.keys import STATE

    state = app[STATE]
    for name in ("n1", "n2"):
        reg = Register(name, 8, 64_000, [GpuInfo(i, f"{name}-u{i}", "fake", 80_000) for i in range(2)], True)
        on_register(state, reg, lambda m: None, "127.0.0.1")
    auth = {"Authorization": f"Bearer {book.create('ann', 'user', 0.0)}"}
    doc = document()
    registry_doc = {"components": doc["components"]}

    def check(path: str, method: str, status: int | str, answer: Any) -> None:
        op = doc["paths"][path][method]
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(answer, {**schema, **registry_doc}, cls=jsonschema.Draft202012Validator)

    async with TestClient(TestServer(app)) as client:
        r = await client.post("/api/v1/jobs", json={"argv": ["true"], "workdir": "/tmp", "array": "1-3", "hold": True},
                              headers=auth)
        check("/api/v1/jobs", "post", 201, await r.json())
        jid = (await r.json())["job"]["id"]
        for path, route in (("/api/v1/nodes", "/api/v1/nodes"), ("/api/v1/nodes/n1", "/api/v1/nodes/{name}"),
                            ("/api/v1/server", "/api/v1/server"), ("/api/v1/queues", "/api/v1/queues"),
                            ("/api/v1/usage", "/api/v1/usage"), ("/api/v1/jobs", "/api/v1/jobs"),
                            (f"/api/v1/jobs/{jid}", "/api/v1/jobs/{id}"),
                            (f"/api/v1/jobs/{jid.replace('[]', '[1-2]')}", "/api/v1/jobs/{id}"),
                            (f"/api/v1/jobs/{jid}/events", "/api/v1/jobs/{id}/events"),
                            (f"/api/v1/jobs/{jid}/metrics", "/api/v1/jobs/{id}/metrics")):
            r = await client.get(path, headers=auth)
            assert r.status == 200, (path, await r.text())
            check(route, "get", 200, await r.json())
        r = await client.get("/api/v1/nodes/nope", headers=auth)
        check("/api/v1/nodes/{name}", "get", "4XX", await r.json())
