"""Configuration: ``conf/schedd.toml``, ``conf/pool.toml`` and ``conf/policies.toml``
in, typed settings and the policy pipeline out — one module, one approach.

msgspec converts the TOML tables into Structs, which checks every type and
rejects unknown keys; its error names the path (``$.queues.1xgpu.priority``),
which becomes a :class:`~schedd.errors.ConfigError` naming file and key. The
policies' tables are Structs of their own (``policies/``), converted the same
way by :meth:`Pipeline.from_config`. This is the one place that reads those
files; the scheduling core gets plain data.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from schedd.core.model import QosDef, QueueDef
from schedd import plugins  # third-party policies are found here, in the shell, never in the core
from schedd.core.scheduler import Pipeline
from schedd.errors import ConfigError, InputError
from schedd.series.settings import MetricsSettings
from schedd.pool.kube.config import (
    KubeSettings, NonNegative, PullPolicy, Toleration, Volume, VolumeMount, check_kube_pool,
)
from schedd.daemon.records import Bounds, ChunkSpec, check_image

__all__ = [
    "CONF_DIR", "DEFAULT_POLICIES", "HooksSettings", "HttpSettings", "NodeGroup", "PoolSettings", "QueueSettings", "Settings", "load_pipeline", "load_pool",
    "load_settings",
]

T = TypeVar("T")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: The shipped policy file, next to the package in a source checkout.
DEFAULT_POLICIES = CONF_DIR / "policies.toml"


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "schedd")


class QueueSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One queue (a resource tier); see conf/schedd.toml for each key's meaning."""

    priority: int = 0
    tier: int = 1
    preempts: list[str] = []
    default_walltime_s: Annotated[float, Meta(gt=0, le=Bounds.WALLTIME_S)] = 3600.0
    max_walltime_s: Annotated[float, Meta(gt=0, le=Bounds.WALLTIME_S)] | None = None
    default_chunk: ChunkSpec = msgspec.field(default_factory=ChunkSpec)
    max_running_per_user: int | None = None
    max_gpus_per_user: int | None = None
    allowed_users: list[str] = []

    def definition(self, name: str) -> QueueDef:
        return QueueDef(
            name, self.priority, self.tier, tuple(self.preempts), self.default_walltime_s,
            self.max_walltime_s, self.max_running_per_user, self.max_gpus_per_user, tuple(self.allowed_users),
        )


class QosSettings(msgspec.Struct, forbid_unknown_fields=True):
    priority: int = 0
    tier: int = 1
    preempts: list[str] = []
    max_running_per_user: int | None = None
    max_gpus_per_user: int | None = None

    def definition(self, name: str) -> QosDef:
        return QosDef(name, self.priority, self.tier, tuple(self.preempts), self.max_running_per_user, self.max_gpus_per_user)


class HooksSettings(msgspec.Struct, forbid_unknown_fields=True):
    """``[hooks]``: the site's submit filter (:mod:`schedd.hooks`)."""

    #: "module:function" run on every submission and alteration; "" = none
    submit: str = ""
    #: give up on the hook after this long (it runs in a worker thread)
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 2.0
    #: a hook that raises or times out: "reject" the job, or "accept" it unchanged
    on_error: Literal["reject", "accept"] = "reject"

    def check(self, source: str) -> None:
        """Import the hook now, so that a typo stops ``serve``, ``config check`` and a reload."""
        if self.submit and not callable(plugins.import_object(self.submit, f"{source}: hooks.submit")):
            raise ConfigError(f"{source}: hooks.submit", f"{self.submit!r} is not callable")


class HttpSettings(msgspec.Struct, forbid_unknown_fields=True):
    """``[http]``: what one client may hold of the daemon's HTTP layer
    (:mod:`schedd.daemon.http_limits`); see conf/schedd.toml for each key."""

    #: open connections on each listener (the TCP/TLS port, the Unix socket) apart;
    #: past it a new connection is answered 503 and closed, and the others go on
    max_connections: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    #: a connection with no request under way is closed after this long (keep-alive)
    idle_timeout_s: Annotated[float, Meta(gt=0)] = 75.0
    #: a request's line and headers must all arrive within this long of its first byte (slow-loris)
    header_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    #: long polls (GET /api/v1/jobs/ID/wait, qsub -W block) waiting at once; past it 503 + Retry-After
    max_waiters: Annotated[int, Meta(ge=0)] = 1000


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    """The daemon's settings (``conf/schedd.toml``)."""

    server_name: str = "schedd"
    listen: str = "127.0.0.1:8330"
    #: PEM certificate chain and key: serve HTTPS on ``listen`` (both or neither)
    tls_cert: str = ""
    tls_key: str = ""
    state_dir: str = msgspec.field(default_factory=default_state_dir)
    policies: str = "policies.toml"
    default_queue: str = "default"
    heartbeat_s: float = 2.0
    heartbeat_timeout_s: float = 30.0
    kill_delay_s: float = 10.0  # SIGTERM->SIGKILL but for preemption victims ([preemption] grace_s)
    tick_s: float = 5.0
    reconnect_grace_s: float = 30.0
    cancel_on_failed_dependency: bool = True
    max_body_mb: int = 64
    #: SQLite's synchronous mode for the state store (WAL). NORMAL: an answered
    #: request survives a crash of schedd (kill -9, OOM), not a power loss or
    #: kernel crash (the WAL is fsynced at checkpoints only). FULL: one fsync per
    #: group commit, and it survives those too. See :mod:`schedd.store.sqlite`.
    store_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    #: Finished jobs are kept this long after they end (days), then deleted with
    #: their events and metrics by :mod:`schedd.daemon.housekeeping`: PBS's
    #: job_history_duration and its default (two weeks). ``qstat -x``, ``tracejob``
    #: and ``qacct`` read this history. 0 keeps it for ever.
    history_days: Annotated[float, Meta(ge=0, le=36_500)] = 14.0
    #: The most subjobs one array (or jobs one batch submission) may have: PBS's
    #: max_array_size, and its default. Every subjob is a record made on the event
    #: loop at submission (10,000 take about 0.1 s; 100,000 a second).
    max_array_size: Annotated[int, Meta(ge=1, le=Bounds.ARRAY)] = 10_000
    #: The longest walltime of any job, whatever its queue (a year: a finite bound for every queue).
    max_walltime_s: Annotated[float, Meta(gt=0, le=Bounds.WALLTIME_S)] = 365 * 86_400.0
    #: Whether root (any uid 0 account) may own jobs. PBS refuses them unless the
    #: administrator lists root in acl_roots: a job runs as its owner on the nodes,
    #: so a root job can write anywhere a mistyped ``-o`` points.
    allow_root_jobs: bool = False
    queues: dict[str, QueueSettings] = msgspec.field(default_factory=lambda: {"default": QueueSettings()})
    qos: dict[str, QosSettings] = {}
    #: Job metrics: the per-job cap, retention, write intervals (``[metrics]``).
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    #: The site's submit hook (``[hooks]``).
    hooks: HooksSettings = msgspec.field(default_factory=HooksSettings)
    #: The HTTP layer's limits: connections, timeouts, long polls (``[http]``).
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    #: Where the file was read from; relative paths (policies) resolve against it.
    base_dir: str = ""

    def queue_defs(self) -> dict[str, QueueDef]:
        return {n: q.definition(n) for n, q in self.queues.items()}

    def qos_defs(self) -> dict[str, QosDef]:
        return {n: q.definition(n) for n, q in self.qos.items()}

    def policies_path(self) -> Path:
        return Path(self.base_dir or CONF_DIR) / self.policies

    def check(self, source: str) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{source}: {'tls_key' if self.tls_cert else 'tls_cert'}",
                              "tls_cert and tls_key go together: set both (HTTPS) or neither (plain HTTP)")
        if self.default_queue not in self.queues:
            raise ConfigError(f"{source}: default_queue", f"{self.default_queue!r} is not a queue in [queues]")
        known = set(self.queues) | set(self.qos)
        for kind, table in (("queues", self.queues), ("qos", self.qos)):
            for name, q in table.items():
                for p in q.preempts:
                    if p not in known:
                        raise ConfigError(f"{source}: {kind}.{name}.preempts", f"{p!r} is not a queue or QoS")
        self.hooks.check(source)


class NodeGroup(msgspec.Struct, forbid_unknown_fields=True):
    """``count`` identical virtual nodes; ``fake_gpus`` = GPUs to fake where NVML is absent.

    The keys after ``docker_host`` are read only by ``driver = "kubernetes"``
    (see :mod:`schedd.pool.kube.config`); each node is then one agent pod.
    """

    name: str = "node"
    count: NonNegative = 2
    cpus: NonNegative = 64  # 0 = what the machine has (kubernetes: no CPU request)
    mem_mb: NonNegative = 0  # 0 = what the machine has (kubernetes: no memory request)
    fake_gpus: int = 8  # a count (nodeagent --fake-gpus N); on the wire, Register.fake_gpus is a bool
    switch_user: bool = True  # agents running as root run each job as its owner
    runtime: Literal["process", "docker"] = "process"  # docker: every job in a container
    docker_image: str = ""  # the image of jobs that name none; base of rebuilt environments
    docker_host: str = ""  # engine URL; "" = DOCKER_HOST or the default socket
    gpus: NonNegative = 0  # GPUs each pod requests (request = limit)
    gpu_resource: str = "nvidia.com/gpu"  # the device plugin's extended resource
    image: str = ""  # the agent image; "" = [kubernetes].image
    image_pull_policy: PullPolicy = ""  # "" = Kubernetes' default for the tag
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    affinity: dict[str, Any] = {}  # as in a pod spec (camelCase), passed through
    priority_class_name: str = ""
    runtime_class_name: str = ""  # e.g. "nvidia"
    volumes: list[Volume] = []  # the shared filesystem of users' work directories
    volume_mounts: list[VolumeMount] = []
    env: dict[str, str] = {}
    service_account: str = ""  # "" = schedd-agent, which render creates
    termination_grace_period_s: NonNegative = 60  # time to warn and requeue jobs of a pod being deleted

    def agent_args(self) -> list[str]:
        """The node agent's runtime flags for this group."""
        args = ["--runtime", self.runtime] if self.runtime != "process" else []
        args += ["--docker-image", self.docker_image] if self.docker_image else []
        return args + (["--docker-host", self.docker_host] if self.docker_host else [])


class PoolSettings(msgspec.Struct, forbid_unknown_fields=True):
    """``conf/pool.toml``: where the virtual nodes come from."""

    driver: Literal["local", "static", "kubernetes"] = "local"
    groups: list[NodeGroup] = msgspec.field(default_factory=lambda: [NodeGroup()])
    kubernetes: KubeSettings | None = None  # [kubernetes]: only with driver = "kubernetes"

    def kube(self) -> KubeSettings:
        """The ``[kubernetes]`` table, its defaults when the file has none."""
        return self.kubernetes or KubeSettings()


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from e


def _convert(data: dict[str, Any], kind: type[T], source: str) -> T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as e:
        text = str(e)
        where = text.rsplit(" - at `$.", 1)[1].rstrip("`") if " - at `$." in text else ""
        raise ConfigError(f"{source}: {where}" if where else source, text.split(" - at ")[0]) from e


def load_settings(path: Path | None = None) -> Settings:
    """Read ``schedd.toml`` (the shipped one when ``path`` is None)."""
    path = path or CONF_DIR / "schedd.toml"
    data = _read(path)
    data.setdefault("base_dir", str(path.resolve().parent))
    settings = _convert(data, Settings, str(path))
    settings.state_dir = os.path.expanduser(settings.state_dir)
    settings.check(str(path))
    return settings


def load_pool(path: Path | None = None) -> PoolSettings:
    path = path or CONF_DIR / "pool.toml"
    pool = _convert(_read(path), PoolSettings, str(path))
    check_kube_pool(pool, str(path))
    for i, g in enumerate(pool.groups):
        if g.runtime == "docker" and not g.docker_image:
            raise ConfigError(f"{path}: groups[{i}].docker_image", 'runtime = "docker" needs the image of jobs that name none')
        if g.docker_image:
            try:
                check_image(g.docker_image, "docker_image")
            except InputError as e:
                raise ConfigError(f"{path}: groups[{i}].docker_image", str(e)) from None
    return pool


def load_pipeline(path: Path = DEFAULT_POLICIES) -> Pipeline:
    """Parse a ``policies.toml`` into a :class:`Pipeline`.

    Raises :class:`ConfigError` naming the file and the TOML path for any bad value.
    """
    data = _read(path)
    try:
        found = plugins.policy_registry(data)
        return plugins.guard(Pipeline.from_config(found.tables, found.registry), found.plugins)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.path}", e.message) from e
