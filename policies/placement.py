"""Placement: which nodes and GPUs a job gets, among those that fit.

``pack`` (default) is best-fit: a chunk goes to the node with the *fewest* free
GPUs that still fit it, so partly used nodes fill up first and whole 8-GPU nodes
stay free for the jobs that need a whole node. CPU-only chunks go first to nodes
with no free GPU for the same reason. ``spread`` is worst-fit: the node with the
most free GPUs, which lowers contention for host CPU, memory and PCIe when the
pool is lightly loaded. GPU indices are the lowest free ones of the node.

The order itself is walked by :meth:`schedd.core.cluster.Cluster.candidates` over its
free-GPU buckets, so choosing a node costs O(1) in the common case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Self

import msgspec

from policies.base import Policy, settings_of

if TYPE_CHECKING:
    from schedd.core.context import Context

__all__ = ["Placement", "PlacementSettings"]

Mode = Literal["pack", "spread"]


class PlacementSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``[placement]`` table."""

    mode: Mode = "pack"


class Placement(Policy):
    name = "placement"

    def __init__(self, mode: Mode = PlacementSettings().mode) -> None:
        self.mode = mode

    @classmethod
    def from_config(cls, table: object) -> Self:
        return cls(settings_of(table, PlacementSettings, cls.name).mode)

    def prepare(self, ctx: Context) -> None:
        ctx.spread = self.mode == "spread"
