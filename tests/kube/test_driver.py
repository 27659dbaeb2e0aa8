"""The driver's watcher and applier against the stand-in API server over real
HTTP, with the simulator playing controller, scheduler and kubelet: the pool
comes up from nothing, Pending pods say why, deleted pods are gone at once,
410 relists without duplicates, a restart creates nothing twice, foreign
objects are left alone, and every call the driver made is allowed by the Role
that ``schedd pool render`` prints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from schedd.pool.kube.apply import apply_groups
from schedd.pool.kube.client import KubeApi
from schedd.pool.kube.manifests import group_selector, role_rules
from schedd.pool.kube.podstate import Phase
from schedd.pool.kube.watch import NodeEvent, NodeGone, NodeSeen, PodWatcher
from schedd.config import PoolSettings, Settings, load_pool
from tests.kube.apiserver import ApiServer
from tests.kube.cluster import Cluster, SimNode
from tests.kube.conftest import NS

pytestmark = pytest.mark.asyncio

POOL = f"""driver = "kubernetes"
[kubernetes]
namespace = "{NS}"
image = "reg.local/schedd:1"
[[groups]]
name = "gpu8"
count = 3
gpus = 8
"""


class Events:
    """What the watcher emitted, and a way to await a condition on it."""

    def __init__(self) -> None:
        self.items: list[NodeEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: NodeEvent) -> None:
        self.items.append(event)
        self._changed.set()

    async def until(self, predicate: Callable[[list[NodeEvent]], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self.items):
                self._changed.clear()
                await self._changed.wait()

    def seen(self, name: str) -> list[NodeSeen]:
        return [e for e in self.items if isinstance(e, NodeSeen) and e.name == name]

    def last(self, name: str) -> NodeEvent | None:
        return next((e for e in reversed(self.items) if e.name == name), None)

    def ready(self) -> set[str]:
        """Names whose latest event is a READY NodeSeen."""
        names = {e.name for e in self.items}
        return {n for n in names if isinstance(e := self.last(n), NodeSeen) and e.phase is Phase.READY}


@pytest.fixture
def pool(tmp_path: Path) -> PoolSettings:
    (tmp_path / "pool.toml").write_text(POOL)
    return load_pool(tmp_path / "pool.toml")


@pytest.fixture
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    c = Cluster(apiserver, [SimNode("k8s-0"), SimNode("k8s-1")])
    c.start()
    yield c
    c.stop()


@pytest_asyncio.fixture
async def api(kubeconfig: Path) -> AsyncIterator[KubeApi]:
    api = await KubeApi.connect(NS, str(kubeconfig))
    yield api
    await api.close()


async def _start(api: KubeApi, pool: PoolSettings, events: Events) -> asyncio.Task[None]:
    await apply_groups(api, pool, Settings())
    watcher = PodWatcher(api, group_selector([g.name for g in pool.groups]), events)
    return asyncio.create_task(watcher.run())


async def _eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """For conditions no event announces (a counter of the watcher): re-check until the deadline."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_pool_comes_up_from_nothing_and_a_pod_that_does_not_fit_says_why(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    events = Events()
    task = await _start(api, pool, events)
    await events.until(lambda _: events.ready() == {"gpu8-0", "gpu8-1"} and bool(events.seen("gpu8-2"))
                       and "Insufficient" in events.seen("gpu8-2")[-1].reason)
    last = events.seen("gpu8-2")[-1]
    assert (last.phase, last.reason) == (Phase.RESERVING, "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    assert {e.group for e in events.items} == {"gpu8"}
    assert not any(isinstance(e, NodeGone) for e in events.items)
    cluster.nodes["k8s-2"] = SimNode("k8s-2")  # capacity arrives: the Pending pod starts
    cluster.kick()
    await events.until(lambda _: events.ready() == {"gpu8-0", "gpu8-1", "gpu8-2"})
    await _stop(task)


async def test_a_deleted_pod_is_gone_at_once_and_its_replacement_is_a_new_incarnation(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    pool.groups[0].count = 2
    events = Events()
    task = await _start(api, pool, events)
    await events.until(lambda _: events.ready() == {"gpu8-0", "gpu8-1"})
    old = events.seen("gpu8-1")[-1].uid
    cluster.preempt(NS, "gpu8-1")
    await events.until(lambda items: any(isinstance(e, NodeGone) for e in items))
    down = [e for e in events.seen("gpu8-1") if e.phase is Phase.DOWN]
    assert down and down[0].reason.startswith("preempted by Kubernetes") and down[0].uid == old
    gone = [e for e in events.items if isinstance(e, NodeGone)]
    assert gone == [NodeGone("gpu8-1", old, down[0].reason)]
    await events.until(lambda _: (e := events.last("gpu8-1")) is not None and isinstance(e, NodeSeen)
                       and e.uid != old and e.phase is Phase.READY)
    await _stop(task)


async def test_410_relists_without_duplicates_and_reports_what_changed_meanwhile(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    pool.groups[0].count = 2
    events = Events()
    watcher_task = await _start(api, pool, events)
    await events.until(lambda _: events.ready() == {"gpu8-0", "gpu8-1"})
    before = len(events.items)
    calls = len(apiserver.calls)
    # While the watch is cut, a pod disappears for good and the log is compacted.
    apiserver.store.kubelet_finalizes = False
    cluster.stop()
    apiserver.compact()
    apiserver.drop_watches()
    apiserver.store.remove("pods", NS, "gpu8-1")
    apiserver.compact()
    await events.until(lambda items: any(isinstance(e, NodeGone) for e in items))
    new = events.items[before:]
    assert [type(e) for e in new] == [NodeGone] and new[0].name == "gpu8-1"
    assert new[0].reason == "pod deleted (missing when the pods were listed again)"  # found by the relist after 410
    assert sum(1 for v, r, _ in apiserver.calls[calls:] if (v, r) == ("list", "pods")) >= 1
    # gpu8-0 is not reported again by the relist (before it, it may have passed Pending on its way up)
    assert not [e for e in new if getattr(e, "name", "") == "gpu8-0"]
    assert len([e for e in events.seen("gpu8-0") if e.phase is Phase.READY]) == 1
    await _stop(watcher_task)


async def test_a_restarted_driver_creates_nothing_twice_and_leaves_foreign_objects_alone(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    first = await apply_groups(api, pool, Settings())
    sts = apiserver.store.get("statefulsets", NS, "gpu8")
    again = await apply_groups(api, pool, Settings())  # the daemon restarted
    assert first.applied == again.applied == ["gpu8"]
    (only,) = apiserver.store.list("statefulsets", NS)[0]
    assert only["metadata"]["uid"] == sts["metadata"]["uid"] and only["metadata"]["generation"] == 1
    pool.groups[0].count = 1
    await apply_groups(api, pool, Settings())
    assert apiserver.store.get("statefulsets", NS, "gpu8")["spec"]["replicas"] == 1
    apiserver.store.create("statefulsets", NS, {"metadata": {"name": "theirs"}, "spec": {"replicas": 5}})
    pool.groups[0].name = "theirs"
    result = await apply_groups(api, pool, Settings())
    assert result.foreign == ["theirs"] and apiserver.store.get("statefulsets", NS, "theirs")["spec"] == {"replicas": 5}


async def test_api_errors_are_retried_with_backoff_and_never_reported_as_lost_nodes(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    pool.groups[0].count = 1
    await apply_groups(api, pool, Settings())
    apiserver.fail_next(3, 500)
    events = Events()
    watcher = PodWatcher(api, group_selector(["gpu8"]), events)
    task = asyncio.create_task(watcher.run())
    await events.until(lambda _: events.ready() == {"gpu8-0"})
    assert watcher.failures >= 1 and not any(isinstance(e, NodeGone) for e in events.items)
    await _stop(task)


async def test_every_call_the_driver_made_is_allowed_by_the_rendered_role(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    events = Events()
    await apply_groups(api, pool, Settings())
    watcher = PodWatcher(api, group_selector(["gpu8"]), events)
    task = asyncio.create_task(watcher.run())
    await events.until(lambda _: len(events.ready()) == 2)
    apiserver.store.create("configmaps", NS, {"metadata": {"name": "unrelated"}})  # the version moves on...
    apiserver.compact()  # ...and the watcher's version falls out of the log
    apiserver.drop_watches()  # forces a 410 and a relist: those calls count too
    await _eventually(lambda: watcher.relists >= 2 and watcher.gone_410 >= 1)
    await apply_groups(api, pool, Settings())
    await _stop(task)
    allowed = {(v, r) for rule in role_rules(manage=True) for r in rule["resources"] for v in rule["verbs"]}
    made = apiserver.verbs()
    assert {("create", "statefulsets"), ("patch", "statefulsets"), ("get", "statefulsets")} <= made
    assert made - allowed == set(), f"calls the Role does not allow: {made - allowed}"
    assert {ns for _, _, ns in apiserver.calls} == {NS}  # nothing outside its namespace
    watch_only = {(v, r) for rule in role_rules(manage=False) for r in rule["resources"] for v in rule["verbs"]}
    assert {(v, r) for v, r in made if r == "pods"} <= watch_only


async def test_a_periodic_resync_relists_without_repeating_nodes(
        apiserver: ApiServer, cluster: Cluster, api: KubeApi, pool: PoolSettings) -> None:
    pool.groups[0].count = 2
    await apply_groups(api, pool, Settings())
    events = Events()
    watcher = PodWatcher(api, group_selector(["gpu8"]), events, resync_s=1.0)
    task = asyncio.create_task(watcher.run())
    await events.until(lambda _: events.ready() == {"gpu8-0", "gpu8-1"})
    settled = len(events.items)
    await _eventually(lambda: watcher.relists >= 3)
    assert len(events.items) == settled and watcher.gone_410 == 0
    await _stop(task)
