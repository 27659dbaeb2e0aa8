"""Scheduling policies (nouns), each a small module registered here by name.

The name is the module name, the TOML table in ``conf/policies.toml`` and the
class's ``name``. A new policy = one module + one line in :data:`REGISTRY`.
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
