"""Job metrics over time: the job's own points and the node's samples of it.

:class:`Series` (``book``) ingests and serves them; ``downsample`` is the pure
min/max/last bucketing; ``settings`` the ``[metrics]`` table; the rows live in
the store (:mod:`schedd.store.series`).
"""

from schedd.series.book import Series, kind_of
from schedd.series.settings import MetricsSettings

__all__ = ["MetricsSettings", "Series", "kind_of"]
