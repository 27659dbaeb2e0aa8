"""Agents and a daemon of other versions: they work on the highest common protocol, or are
refused with a message naming both sides — never half-understood."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from schedd.protocol import BATCH_VERSION, CLOSE_VERSION_MISMATCH, PROTOCOL_VERSION, Heartbeat, decode_agent
from tests.integration.conftest import Daemon, wait_for


def _register(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "register", "name": name, "cpus": 2, "mem_mb": 1024, "gpus": [], "fake_gpus": True, **extra}


async def _first_answer(sock: str, register: dict[str, Any]) -> tuple[aiohttp.WSMsgType, Any, Any]:
    """Register on a raw WebSocket; what schedd answers first: (type, data, extra)."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        async with http.ws_connect("http://localhost/api/v1/agent") as ws:
            await ws.send_str(json.dumps(register))
            msg = await asyncio.wait_for(ws.receive(), 30)
            return msg.type, msg.data, msg.extra


def test_an_agent_with_no_common_version_is_refused_naming_both(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=1).start()
    try:
        kind, code, reason = asyncio.run(_first_answer(d.url[len("unix://"):],
                                                       _register("future01", version=9, min_version=7,
                                                                 software="nodeagent 9.0")))
        assert kind == aiohttp.WSMsgType.CLOSE and code == CLOSE_VERSION_MISMATCH
        assert "7..9 (nodeagent 9.0)" in reason and f"1..{PROTOCOL_VERSION}" in reason, reason
        assert "future01" not in {n["name"] for n in d.client.call("GET", "/api/v1/nodes")["nodes"]}
        assert "refusing agent future01 speaks protocol 7..9" in d.log.read_text()
    finally:
        d.stop()


def test_a_version_1_agent_is_welcomed_in_version_1_and_a_newer_one_in_ours(tmp_path: Path) -> None:
    d = Daemon(tmp_path, nodes=1).start()
    sock = d.url[len("unix://"):]
    try:
        kind, data, _ = asyncio.run(_first_answer(sock, _register("old01", version=1)))
        welcome = json.loads(data)
        assert kind == aiohttp.WSMsgType.TEXT and welcome["type"] == "welcome"
        assert "version" not in welcome  # a version-1 agent rejects fields it does not know
        kind, data, _ = asyncio.run(_first_answer(sock, _register("new01", version=PROTOCOL_VERSION + 3,
                                                                  future_field={"x": 1})))
        assert json.loads(data)["version"] == PROTOCOL_VERSION
    finally:
        d.stop()


def test_fields_a_newer_peer_adds_are_ignored_and_known_ones_still_checked() -> None:
    msg = decode_agent(b'{"type": "heartbeat", "time": 1.0, "cpu_pct": 2.0, "mem_used_mb": 3, "power_w": 250}')
    assert isinstance(msg, Heartbeat) and msg.mem_used_mb == 3
    try:
        decode_agent(b'{"type": "heartbeat", "time": "soon", "cpu_pct": 2.0, "mem_used_mb": 3}')
    except msgspec.ValidationError as exc:
        assert "$.time" in str(exc)
    else:
        raise AssertionError("a known field of the wrong type was accepted")


async def _raw_agent(sock: str, version: int, submit: Any, jobs: int) -> tuple[list[Any], list[Any]]:
    """A raw agent of protocol ``version`` that runs ``jobs`` jobs (``submit`` queues them once it is
    up) by answering their Launches with one frame of every Started and Exited; the frames schedd
    sent it (decoded JSON) before and after that frame."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        async with http.ws_connect("http://localhost/api/v1/agent") as ws:
            await ws.send_str(json.dumps(_register("raw01", version=version, min_version=1, cpus=jobs)))

            async def frames(until: Any) -> list[Any]:
                got: list[Any] = []
                while not until(got):
                    msg = await asyncio.wait_for(ws.receive(), 30)
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        got.append(json.loads(msg.data))
                return got

            def typed(kind: str) -> Any:
                return lambda got: sum(1 for f in got for m in (f if isinstance(f, list) else [f])
                                       if m["type"] == kind) >= jobs

            before = await frames(lambda got: len(got) >= 1)  # the Welcome
            await asyncio.to_thread(submit)
            before += await frames(typed("launch"))
            launches = [m for f in before for m in (f if isinstance(f, list) else [f]) if m["type"] == "launch"]
            now = 1.7e9
            key = [{"job_id": m["job_id"], "attempt": m["attempt"], "rank": m["rank"]} for m in launches]
            report = [{"type": "started", **k, "time": now} for k in key] + [
                {"type": "exited", **k, "status": 0, "how": "exited", "start_time": now, "end_time": now + 1}
                for k in key]
            await ws.send_str(json.dumps(report if version >= BATCH_VERSION else report[0]))
            for one in report[1:] if version < BATCH_VERSION else []:  # one by one to an older schedd
                await ws.send_str(json.dumps(one))
            after = await frames(typed("ack"))
            return before, after


@pytest.mark.parametrize("version", [BATCH_VERSION, BATCH_VERSION - 1])
def test_a_version_5_session_carries_several_messages_a_frame_both_ways(tmp_path: Path, version: int) -> None:
    """Protocol 5: the Starts and Exits of several ranks in one frame are all taken (each
    acknowledged, each job finished once), and schedd's Launches and Acks that are ready at
    once come in one frame, an array; a version-4 session never sees an array."""
    if True:
        d = Daemon(tmp_path, nodes=0).start()
        try:
            def submit() -> None:
                wait_for("raw01 up", lambda: len(d.up_nodes()) == 1)
                jid = d.submit(script="true\n", array="0-3", hold=True)  # released at once: one cycle, 4 Launches
                d.client.call("POST", f"/api/v1/jobs/{jid}/release", {})

            before, after = asyncio.run(_raw_agent(d.url[len("unix://"):], version, submit, 4))
            welcome = before[0]
            assert welcome["type"] == "welcome" and welcome["version"] == version
            arrays = [f for f in before[1:] + after if isinstance(f, list)]
            if version >= BATCH_VERSION:
                assert arrays, f"no frame held several messages: {before[1:] + after}"
            else:
                assert not arrays, arrays
            acked = sorted(m["job_id"] for f in after for m in (f if isinstance(f, list) else [f]) if m["type"] == "ack")
            assert len(acked) == 4 and len(set(acked)) == 4, acked
            for jid in acked:
                job = d.wait_state(jid, "finished")
                assert job["exit_status"] == 0, job
        finally:
            d.stop()
