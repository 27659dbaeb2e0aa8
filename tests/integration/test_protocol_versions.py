"""Agents and a daemon of other versions: they work on the highest common protocol, or are
refused with a message naming both sides — never half-understood."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from schedd.protocol import CLOSE_VERSION_MISMATCH, PROTOCOL_VERSION, Heartbeat, decode_agent
from tests.integration.conftest import Daemon


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
