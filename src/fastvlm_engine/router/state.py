"""Everything the router's routes share, built once per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector

from ..cluster.endpoint import WorkerState
from ..config import AUTO_ADMISSION_QUEUE_PER_SLOT, Settings
from ..observability.metrics import API_ENDPOINTS, DURATION_BUCKETS, HttpMetrics, PoolCollector, QueueCollector
from ..supervisor.inventory import Inventory, make_inventory
from ..supervisor.pool import Supervisor
from ..web import InFlight
from ..web.upstream import Upstream
from .admission import IMAGE, VIDEO, Admission
from .endpoints import Endpoints
from .jobs import DrainRate
from .live_stats import LiveStats
from .retry_after import RetryAfterEstimator

if TYPE_CHECKING:
    from ..jobs import JobStore

__all__ = ["RouterMetrics", "RouterState", "admission_queue_size", "build_state", "expected_wait"]


def admission_queue_size(settings: Settings, ready_slots: int) -> int:
    """The configured admission queue size, or (0 = auto) AUTO_ADMISSION_QUEUE_PER_SLOT per ready slot.

    The auto size is a memory bound, not the limit that usually applies: a request joins the queue
    only while its expected wait is within ``admission_queue_wait_ms`` (see ``expected_wait``), so a
    burst that the workers can serve within that wait is held whole instead of being turned away
    into retry loops, however many callers it has.
    """
    if settings.admission_queue_size:
        return settings.admission_queue_size
    return AUTO_ADMISSION_QUEUE_PER_SLOT * ready_slots


def expected_wait(estimator: RetryAfterEstimator, admission: Admission, endpoint: str, position: int) -> float:
    """Seconds until the request at ``position`` in the queue gets a slot: Little's law over the
    measured service time (the queue ahead drains at ``capacity`` requests per service time)."""
    capacity = admission.capacity(endpoint)
    if capacity == 0:
        return float("inf")
    return estimator.service[endpoint].get() * position / capacity


class RouterMetrics(HttpMetrics):
    """The router's own series; workers' series are merged in at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "fastvlm_")
        self.busy_rejections = Counter("fastvlm_busy_rejections_total", "Requests shed with 503 because no "
                                       "worker slot was free.", ["endpoint"], registry=registry)
        self.jobs_submitted = Counter("fastvlm_jobs_submitted_total", "Jobs accepted (202).", ["endpoint"],
                                      registry=registry)
        self.admission_wait = Histogram("fastvlm_admission_queue_wait_seconds", "Time a request waited in the "
                                        "admission queue for a slot.", ["endpoint"], buckets=DURATION_BUCKETS,
                                        registry=registry)
        for endpoint in API_ENDPOINTS:
            self.busy_rejections.labels(endpoint)
            self.jobs_submitted.labels(endpoint)


@dataclass
class RouterState:
    settings: Settings
    inventory: Inventory
    upstream: Upstream
    endpoints: Endpoints
    admission: Admission
    retry_after: RetryAfterEstimator
    registry: CollectorRegistry
    metrics: RouterMetrics
    in_flight: InFlight
    jobs: JobStore
    live: LiveStats
    drain_rate: DrainRate = field(default_factory=DrainRate)
    job_counts: dict[str, int] = field(default_factory=dict)  # refreshed by the sweeper
    job_depth: dict[str, int] = field(default_factory=dict)
    purged_total: int = 0
    tasks: list[Any] = field(default_factory=list)
    draining: bool = False

    @property
    def supervisor(self) -> Supervisor | None:
        return self.endpoints.supervisor

    def start_draining(self) -> None:
        """Stop admitting; this router's own workers finish what they hold."""
        self.draining = True
        if self.supervisor is not None:
            self.supervisor.start_draining()

    def timeout_for(self, endpoint: str) -> float:
        return self.settings.video_timeout_s if endpoint == VIDEO else self.settings.image_timeout_s


def build_state(settings: Settings, inventory: Inventory | None = None) -> RouterState:
    inventory = inventory or make_inventory(settings.simulate_gpus, settings.simulate_gpu_worker_mib)
    upstream = Upstream(connect_timeout_s=settings.worker_connect_timeout_s)
    supervisor = Supervisor(settings, inventory, upstream, tags=settings.host_tags) if settings.local_workers else None
    endpoints = Endpoints(supervisor, None)
    if settings.registry_url:
        from ..cluster.registry import Registry
        from ..cluster.signing import ClusterSigner
        from .remote import RemoteWorkers

        secret = settings.cluster_secret.get_secret_value()
        endpoints.remote = RemoteWorkers(settings, Registry.from_settings(settings), upstream,
                                         credential=ClusterSigner(secret.encode()) if secret else None,
                                         on_change=endpoints.changed)
    retry_after = RetryAfterEstimator(
        bounds={IMAGE: (settings.retry_after_image_min_s, settings.retry_after_image_max_s),
                VIDEO: (settings.retry_after_video_min_s, settings.retry_after_video_max_s)},
        priors={IMAGE: 2.0, VIDEO: 30.0})
    admission = Admission(endpoints.all, settings.max_video_concurrent,
                          queue_size=lambda: admission_queue_size(settings, endpoints.slots()),
                          queue_wait_s=settings.admission_queue_wait_ms / 1000,
                          video_aging_s=settings.job_video_aging_s,
                          expected_wait=lambda endpoint, position: expected_wait(retry_after, admission, endpoint,
                                                                                 position))
    endpoints.on_change(admission.dispatch)
    if endpoints.supervisor is not None:
        endpoints.supervisor.on_change = endpoints.changed
    registry = CollectorRegistry()
    registry.register(ProcessCollector(registry=None))
    registry.register(PoolCollector(endpoints.all, [s.value for s in WorkerState],
                                    lambda: [] if inventory.simulated else inventory.gpus(),
                                    restarts=lambda: endpoints.supervisor.restarts() if endpoints.supervisor else {}))
    from ..jobs import open_store_from_settings

    state = RouterState(
        settings=settings, inventory=inventory, upstream=upstream, endpoints=endpoints,
        registry=registry, metrics=RouterMetrics(registry),
        admission=admission, retry_after=retry_after,
        in_flight=InFlight(lambda path: path in API_ENDPOINTS), jobs=open_store_from_settings(settings),
        live=LiveStats(API_ENDPOINTS))
    registry.register(QueueCollector(
        jobs=lambda: state.job_counts, depth=lambda: state.job_depth,
        admission=lambda: {"image": admission.queue_depth(IMAGE), "video": admission.queue_depth(VIDEO)}))
    return state
