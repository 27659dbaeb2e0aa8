"""Scheduling policies (nouns), each a small module registered here by name.

The name is the module name, the TOML table in ``conf/policies.toml`` and the
class's ``name``. A new policy = one module + one line in :data:`REGISTRY`.

Policies from outside this package (``docs/policies.md``) are classes of any
installed distribution that declares them in the entry-point group
:data:`ENTRY_POINT_GROUP` (the entry point's name is the table's), or named by
``policy = "module:Class"`` in their table. They are found by the daemon's shell
(:mod:`schedd.plugins`, when ``policies.toml`` is read), never by the core:
the core is handed the resulting registry.
"""

from __future__ import annotations

from policies.backfill import Backfill
from policies.base import Policy
from policies.fairshare import FairShare
from policies.limits import Limits
from policies.placement import Placement
from policies.preemption import Preemption
from policies.priority import Priority

__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "Backfill",
    "FairShare",
    "Limits",
    "Placement",
    "Policy",
    "Preemption",
    "Priority",
]

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Backfill, FairShare, Limits, Placement, Preemption, Priority)
}

#: Where installed distributions declare third-party policies
#: (``[project.entry-points."schedd.policies"] sjf = "schedd_sjf:ShortestFirst"``).
ENTRY_POINT_GROUP = "schedd.policies"
