"""The fleet: what a node is to users and to the scheduler, through connects, silence and operators."""

from __future__ import annotations

from typing import Any

from schedd.daemon.fleet import Fleet
from schedd.core.model import NodeState
from schedd.protocol import GpuInfo, Register


def _reg(name: str = "n1", gpus: int = 2, **kw: Any) -> Register:
    return Register(name, 8, 16_000, [GpuInfo(i, f"u{i}", "fake", 80_000) for i in range(gpus)], True, **kw)


def _sender(into: list[object]) -> Any:
    return into.append


def test_a_registered_node_is_up_connected_and_schedulable() -> None:
    fleet, sent = Fleet(), list[object]()
    entry = fleet.register(_reg(labels={"zone": "a"}), _sender(sent), 10.0, "10.0.0.1")
    assert (entry.connected, entry.shown_state, entry.last_seen, entry.address) == (True, NodeState.UP, 10.0, "10.0.0.1")
    assert [n.name for n in fleet.schedulable() if n.state is NodeState.UP] == ["n1"]
    assert fleet.sizes() == frozenset({(8, 16_000, 2)}) and entry.node.labels == {"zone": "a"}
    assert fleet.send("n1", _reg()) and len(sent) == 1
    assert not fleet.send("n9", _reg())  # unknown node: the caller decides


def test_a_disconnected_node_keeps_its_jobs_but_takes_no_new_work() -> None:
    fleet = Fleet()
    send = _sender([])
    fleet.register(_reg(), send, 0.0, "a")
    fleet.disconnect("n1", lambda m: None)  # another socket's close changes nothing
    assert fleet.nodes["n1"].connected
    fleet.disconnect("n1", send)
    entry = fleet.nodes["n1"]
    assert entry.shown_state is NodeState.DOWN and entry.node.state is NodeState.UP  # shown down, not lost
    assert [n.state for n in fleet.schedulable()] == [NodeState.DOWN]
    assert not fleet.send("n1", _reg())


def test_down_for_silence_until_the_agent_registers_again() -> None:
    fleet = Fleet()
    entry = fleet.register(_reg(), _sender([]), 0.0, "a")
    fleet.mark_down(entry, "no heartbeat for 31 s")
    assert (entry.node.state, entry.connected, entry.comment) == (NodeState.DOWN, False, "no heartbeat for 31 s")
    fleet.register(_reg(), _sender([]), 40.0, "a")
    assert entry.node.state is NodeState.UP and entry.connected


def test_an_operator_state_outlives_reconnects_and_is_what_users_see() -> None:
    fleet = Fleet()
    entry = fleet.register(_reg(), _sender([]), 0.0, "a")
    fleet.set_admin(entry, NodeState.OFFLINE, "bad GPU 3")
    fleet.register(_reg(), _sender([]), 5.0, "a")  # the agent restarted: still offline
    assert entry.effective_state() is NodeState.OFFLINE and entry.comment == "bad GPU 3"
    fleet.disconnect("n1", entry.send)  # type: ignore[arg-type]
    assert entry.shown_state is NodeState.OFFLINE
    fleet.set_admin(entry, None, "")
    assert entry.effective_state() is NodeState.UP


def test_a_stall_of_schedd_restarts_every_window_but_never_moves_one_back() -> None:
    fleet = Fleet()
    a = fleet.register(_reg("a"), _sender([]), 5.0, "x")
    b = fleet.register(_reg("b"), _sender([]), 50.0, "x")
    fleet.restart_windows(20.0)
    assert (a.last_seen, b.last_seen) == (20.0, 50.0)


def test_a_new_register_replaces_resources_and_address() -> None:
    fleet = Fleet()
    fleet.register(_reg(gpus=2), _sender([]), 0.0, "10.0.0.1")
    entry = fleet.register(_reg(gpus=4), _sender([]), 1.0, "10.0.0.2")
    assert (entry.node.ngpus, entry.address, len(fleet)) == (4, "10.0.0.2", 1)
    assert fleet.sizes() == frozenset({(8, 16_000, 4)})
