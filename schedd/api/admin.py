"""Operating the daemon over HTTP: what is not a job or a node.

* ``schedd_policy_errors{policy,hook}`` on ``/metrics``: calls of plugin
  policies' hooks that raised (:data:`schedd.plugins.ERRORS`).

Set up by :func:`setup`, which the daemon calls on the app :func:`make_app`
built, before the app starts (and is frozen).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from schedd import plugins

__all__ = ["setup"]


class _PluginErrors(Collector):
    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("schedd_policy_errors", "Calls of a plugin policy's hook that raised (the call was ignored)",
                                  labels=["policy", "hook"])
        for (policy, hook), n in sorted(plugins.ERRORS.items()):
            fam.add_metric([policy, hook], n)
        yield fam


def setup(app: web.Application) -> None:
    """Register the admin routes and metrics on ``app`` (built by make_app, not yet started)."""
    registry: CollectorRegistry = app["schedd.metrics"][0]
    registry.register(_PluginErrors())
