"""The virtual nodes as schedd sees them: resources, connection, telemetry.

A node exists from its agent's first ``Register`` on. It takes new work only
while its agent is connected and it is UP; a disconnected node keeps its jobs
(the agent's supervisors keep running them) until ``heartbeat_timeout_s``
passes without a word, when it goes DOWN and its jobs are dealt with.

With a pool driver that watches where the nodes live (Kubernetes), the fleet
also holds the driver's view of each node's pod (:class:`PoolView`): a pod
still Pending is a node ``reserving`` before any agent registered, and a pod
that is gone ends the node's *incarnation* (the pod's UID, which its agent
sends at Register). An incarnation once ended is never taken back: a session
of it is refused, so an old pod's agent in its grace period cannot bring the
node back under a name its successor now owns.

A node that went DOWN for silence remembers the attempts it took with it
(:class:`LostAttempt`): its agent may have been merely stopped, not dead, and
when it registers again still running them (or having finished them), they are
taken back rather than run a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from schedd.core.model import Gpu, Node, NodeState
from schedd.protocol import GpuSample, JobSample, Register

if TYPE_CHECKING:
    from schedd.daemon.state import Active

__all__ = ["Fleet", "LostAttempt", "NodeEntry", "Pod", "PoolView", "Sender"]

#: Puts one message on an agent's socket (non-blocking; the socket task drains it).
Sender = Callable[[msgspec.Struct], None]


@dataclass(frozen=True, slots=True)
class LostAttempt:
    """An attempt requeued because its node went silent, kept until the node's
    agent registers again: the job's ``Active`` as it was, and the ranks the node
    took with it (every rank that had not exited; all were on that node)."""

    active: Active
    attempt: int
    ranks: frozenset[int]


@dataclass(frozen=True, slots=True)
class Pod:
    """What the pool driver last said of a node's pod: its UID (the node's
    incarnation), its phase for the node (``reserving``, ``ready``, ``down``),
    the reason in Kubernetes' words, a short code for metrics, its group."""

    uid: str
    phase: str
    reason: str
    code: str = ""
    group: str = ""


@dataclass(slots=True)
class PoolView:
    """The driver's side of the fleet: pods by node name, wanted sizes by group,
    and the driver's counters (relists, watch failures) for /metrics.

    ``draining`` names the nodes a scale-down is emptying: they take no new
    work, and one whose agent registers only now (its pod was still Pending
    when the drain began) is drained as it registers. ``touched`` is called
    for every message sent to a node (a launch, a kill, an exit's ack): the
    driver's cue that some node's work changed. ``resize`` is the operator's
    scale command, where the driver can resize (None otherwise).
    """

    driver: str
    size: dict[str, int] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    counters: Callable[[], dict[str, int]] = dict
    draining: dict[str, str] = field(default_factory=dict)  # node -> the comment it is drained with
    touched: Callable[[], None] = lambda: None
    resize: Callable[[str, int], dict[str, object]] | None = None


@dataclass(slots=True)
class NodeEntry:
    node: Node
    fake_gpus: bool
    address: str
    send: Sender | None = None
    last_seen: float = 0.0
    #: Set by an operator (offline/drain) and kept across reconnects.
    admin_state: NodeState | None = None
    comment: str = ""
    cpu_pct: float = 0.0
    mem_used_mb: int = 0
    gpu_samples: list[GpuSample] = field(default_factory=list)
    job_samples: dict[tuple[str, int], JobSample] = field(default_factory=dict)
    #: By job id; consumed by the agent's next Register (in memory only).
    lost: dict[str, LostAttempt] = field(default_factory=dict)
    #: The incarnation that registered last ("" for agents that send none).
    incarnation: str = ""
    #: How its agent enforces limits and kills (Register.enforcement): "cgroup2...", "proctree"; "" unsaid.
    enforcement: str = ""

    @property
    def connected(self) -> bool:
        return self.send is not None

    @property
    def shown_state(self) -> NodeState:
        """What users see: the operator's state, else DOWN while the agent is away."""
        if not self.connected and self.admin_state is None:
            return NodeState.DOWN
        return self.effective_state()

    def effective_state(self) -> NodeState:
        """What the scheduler sees: operator state first, then connection."""
        if self.admin_state is not None:
            return self.admin_state
        return self.node.state


class Fleet:
    """Every node ever registered, by name."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeEntry] = {}
        #: Set by a pool driver that knows the nodes' pods (Kubernetes); None otherwise.
        self.pool: PoolView | None = None
        #: Incarnations known to have ended, by node name: their sessions are refused.
        self.retired: dict[str, set[str]] = {}

    def __iter__(self) -> Iterator[NodeEntry]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def sizes(self) -> frozenset[tuple[int, int, int]]:
        """The distinct (cpus, mem_mb, ngpus) of every node ever registered. O(nodes)."""
        return frozenset((e.node.cpus, e.node.mem_mb, e.node.ngpus) for e in self.nodes.values())

    def get(self, name: str) -> NodeEntry | None:
        return self.nodes.get(name)

    def register(self, msg: Register, send: Sender, now: float, address: str) -> NodeEntry:
        """Create or refresh a node from its agent's Register; it is UP and connected."""
        gpus = tuple(Gpu(g.index, g.uuid, g.model, g.mem_mb) for g in msg.gpus)
        entry = self.nodes.get(msg.name)
        node = Node(msg.name, msg.cpus, msg.mem_mb, gpus, dict(msg.labels), NodeState.UP)
        if entry is None:
            entry = self.nodes[msg.name] = NodeEntry(node, msg.fake_gpus, address)
        else:
            entry.node, entry.fake_gpus, entry.address = node, msg.fake_gpus, address
        entry.send, entry.last_seen = send, now
        entry.enforcement = msg.enforcement
        if msg.incarnation and msg.incarnation != entry.incarnation:
            if entry.admin_state is None:
                entry.comment = ""  # why the earlier life ended is not this one's concern
            entry.incarnation = msg.incarnation
        if self.pool is not None and entry.admin_state is None and msg.name in self.pool.draining:
            entry.admin_state, entry.comment = NodeState.DRAINING, self.pool.draining[msg.name]
        self._sync(entry)
        return entry

    def disconnect(self, name: str, send: Sender) -> None:
        """The socket closed. Only the connection that registered may unregister."""
        entry = self.nodes.get(name)
        if entry is not None and entry.send is send:
            entry.send = None

    def mark_down(self, entry: NodeEntry, comment: str) -> None:
        """Give up on the node's session: it goes DOWN until its agent registers
        again (the socket handler closes the old session on its next word)."""
        entry.node.state = NodeState.DOWN
        entry.send = None
        entry.comment = comment

    def is_retired(self, name: str, incarnation: str) -> bool:
        return bool(incarnation) and incarnation in self.retired.get(name, ())

    def retire(self, name: str, incarnation: str) -> None:
        """This life of the node ended (its pod is gone or replaced); never take it back."""
        if incarnation:
            self.retired.setdefault(name, set()).add(incarnation)

    def end_incarnation(self, entry: NodeEntry, comment: str) -> None:
        """The node's pod is going for good: DOWN at once, no new work, but the
        session stays open through the pod's grace period so that the kills
        (the jobs' warning) reach its agent; nothing it took is resumed."""
        entry.node.state = NodeState.DOWN
        entry.comment = comment
        entry.lost = {}
        self.retire(entry.node.name, entry.incarnation)

    def restart_windows(self, now: float) -> None:
        """schedd itself did not run until ``now`` (a stalled loop, a paused VM):
        silence it could not have heard counts against no agent, so every node's
        heartbeat window starts afresh, and what waits on the sockets is read
        before any node is judged."""
        for entry in self.nodes.values():
            entry.last_seen = max(entry.last_seen, now)

    def set_admin(self, entry: NodeEntry, state: NodeState | None, comment: str) -> None:
        entry.admin_state = state
        entry.comment = comment
        self._sync(entry)

    def _sync(self, entry: NodeEntry) -> None:
        if entry.admin_state is not None:
            entry.node.state = entry.admin_state
        elif entry.node.state is not NodeState.DOWN:
            entry.node.state = NodeState.UP

    def schedulable(self) -> list[Node]:
        """Nodes for the cycle; a disconnected node is shown DOWN (takes no new work)."""
        out = []
        for e in self.nodes.values():
            if not e.connected and e.node.state is NodeState.UP:
                out.append(Node(e.node.name, e.node.cpus, e.node.mem_mb, e.node.gpus, e.node.labels, NodeState.DOWN))
            else:
                out.append(e.node)
        return out

    def send(self, name: str, msg: msgspec.Struct) -> bool:
        """Send to a node's agent; False when it is not connected (the caller decides)."""
        entry = self.nodes.get(name)
        if entry is None or entry.send is None:
            return False
        entry.send(msg)
        if self.pool is not None:
            self.pool.touched()
        return True
