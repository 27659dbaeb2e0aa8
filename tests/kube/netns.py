"""Pod networking for the Kubernetes simulator: :mod:`tests.netns`, where it is
shared with the partition tests (tests/integration/test_partition.py)."""

from tests.netns import PodNet, PodNetwork, available, can_cut, sweep

__all__ = ["PodNet", "PodNetwork", "available", "can_cut", "sweep"]
