"""``manage = true``: keep the group StatefulSets as pool.toml says, by server-side apply.

Apply (field manager ``schedd``) is idempotent: a restarted daemon applies
the same objects again and the API server keeps one StatefulSet per group,
bumping nothing when nothing changed. An object of the same name that lacks
the ``app.kubernetes.io/managed-by=schedd`` label belongs to someone else and
is never touched; it is reported so that an operator sees why a group does
not come up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from schedd.pool.kube.client import KubeApi
from schedd.pool.kube.manifests import MANAGED_BY, agent_statefulset
from schedd.config import PoolSettings, Settings

__all__ = ["ApplyResult", "apply_groups"]

log = logging.getLogger("schedd.pool.kube")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: list[str]
    foreign: list[str]  # same name, not ours: left alone


async def apply_groups(api: KubeApi, pool: PoolSettings, settings: Settings,
                       replicas: dict[str, int] | None = None) -> ApplyResult:
    """Apply every group's StatefulSet; ``replicas`` overrides a group's count (held up while it drains)."""
    applied, foreign = [], []
    for group in pool.groups:
        body = agent_statefulset(group, pool, settings)
        if replicas and group.name in replicas:
            body["spec"]["replicas"] = replicas[group.name]
        live = await api.get_statefulset(group.name)
        if live is not None and (live["metadata"].get("labels") or {}).get(MANAGED_BY[0]) != MANAGED_BY[1]:
            log.error("StatefulSet %s/%s exists without %s=%s: not schedd's, left alone",
                      api.namespace, group.name, *MANAGED_BY)
            foreign.append(group.name)
            continue
        await api.apply_statefulset(body)
        applied.append(group.name)
    return ApplyResult(applied, foreign)
