"""The ``[metrics]`` table of ``conf/schedd.toml``: job metrics and their keeping."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["MetricsSettings"]


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Defaults equal the commented values in ``conf/schedd.toml``."""

    #: Custom points one job may report (all its metrics together). Past it
    #: the node stops reading the job's SCHEDD_METRICS file, says so in the
    #: job's stderr file, and schedd records a ``metrics_capped`` event.
    max_points_per_job: Annotated[int, Meta(ge=0)] = 1_000_000
    #: Series (and MLflow params) are deleted this long after their last point.
    retention_days: Annotated[float, Meta(gt=0)] = 30.0
    #: How often the newest points of a reporting job are written (seconds).
    flush_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    #: How often the node's samples (GPU, CPU) of a job are written (seconds).
    sample_flush_s: Annotated[float, Meta(gt=0, le=600)] = 15.0
