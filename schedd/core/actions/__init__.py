"""The steps of a cycle (verbs), run in the order ``conf/policies.toml`` lists them.

Each action is a function ``run(ctx)`` that starts, reserves or refuses jobs
through the :class:`~schedd.core.context.Context`; policies (nouns) answer its
questions.
"""

from __future__ import annotations

from collections.abc import Callable

from schedd.core.actions import allocate, backfill, preempt
from schedd.core.context import Context

__all__ = ["ACTIONS", "CONFIGURED_BY"]

#: Action name (as written in ``actions = [...]``) -> its step.
ACTIONS: dict[str, Callable[[Context], None]] = {
    "allocate": allocate.run,
    "backfill": backfill.run,
    "preempt": preempt.run,
}

#: Action name -> the policy table that configures it. An action that reads
#: settings names its table here: ``actions`` naming it without that table is a
#: configuration error, never a silent no-op.
CONFIGURED_BY: dict[str, str] = {
    "backfill": "backfill",
    "preempt": "preemption",
}
