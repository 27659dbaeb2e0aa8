"""What the parts of :class:`schedd.daemon.state.State` share besides the State
itself: a job holding nodes (:class:`Active`), the messages a transition
returns (:data:`Outbox`) and two names for job states. Its own module so that
the State's parts (admission, arrays, commands, plans, accounting) can use
them at run time without importing ``state.py``, which imports them."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from schedd.core.model import FinishReason, JobState, Running
from schedd.protocol import Exited, Launch

__all__ = ["PENDING", "PREPARING", "Active", "Outbox"]

#: Start of the comment of a running job whose environment is being prepared.
PREPARING = "Preparing: "

#: Messages to send once the store has committed: (node name, message).
Outbox = list[tuple[str, msgspec.Struct]]

#: The states of a job that holds no node and has not finished.
PENDING = (JobState.QUEUED, JobState.WAITING, JobState.HELD)


@dataclass(slots=True)
class Active:
    """A job holding nodes: RUNNING, or EXITING while its ranks are being killed."""

    running: Running
    exits: list[Exited | None]
    finish: FinishReason | None = None  # decided by a kill (cancel, preempt, node fail)
    requeue: bool = False  # back to Q when every rank has exited
    gpu_util_sum: float = 0.0
    gpu_util_n: int = 0
    #: A gang's ranks 1.. wait here until rank 0 has started the job's output
    #: afresh (said it started or is preparing): see :meth:`State.release_ranks`
    held: list[tuple[str, Launch]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(e is not None for e in self.exits)

    def is_held(self, rank: int) -> bool:
        return any(launch.rank == rank for _, launch in self.held)
