"""Everything the router's routes share, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.process_collector import ProcessCollector

from ..config import Settings
from ..observability.metrics import API_ENDPOINTS, HttpMetrics, PoolCollector
from ..web import InFlight
from .admission import IMAGE, VIDEO, Admission
from .inventory import Inventory, make_inventory
from .live_stats import LiveStats
from .pool import WorkerPool
from .retry_after import RetryAfterEstimator
from .upstream import Upstream
from .workers import WorkerState

__all__ = ["RouterMetrics", "RouterState", "admission_queue_size", "build_state", "expected_wait"]


def admission_queue_size(settings: Settings, pool: WorkerPool) -> int:
    """The configured admission queue size, or (0 = auto) twice the slots of the ready workers."""
    if settings.admission_queue_size:
        return settings.admission_queue_size
    return 2 * sum(w.slots for w in pool.ready())


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
        for endpoint in API_ENDPOINTS:
            self.busy_rejections.labels(endpoint)


@dataclass
class RouterState:
    settings: Settings
    inventory: Inventory
    upstream: Upstream
    pool: WorkerPool
    admission: Admission
    retry_after: RetryAfterEstimator
    registry: CollectorRegistry
    metrics: RouterMetrics
    in_flight: InFlight
    live: LiveStats

    @property
    def draining(self) -> bool:
        return self.pool.draining

    def timeout_for(self, endpoint: str) -> float:
        return self.settings.video_timeout_s if endpoint == VIDEO else self.settings.image_timeout_s


def build_state(settings: Settings, inventory: Inventory | None = None) -> RouterState:
    inventory = inventory or make_inventory(settings.simulate_gpus, settings.simulate_gpu_worker_mib)
    upstream = Upstream(connect_timeout_s=settings.worker_connect_timeout_s)
    pool = WorkerPool(settings, inventory, upstream)
    retry_after = RetryAfterEstimator(
        bounds={IMAGE: (settings.retry_after_image_min_s, settings.retry_after_image_max_s),
                VIDEO: (settings.retry_after_video_min_s, settings.retry_after_video_max_s)},
        priors={IMAGE: 2.0, VIDEO: 30.0})
    admission = Admission(lambda: pool.workers, settings.max_video_concurrent,
                          queue_size=lambda: admission_queue_size(settings, pool),
                          queue_wait_s=settings.admission_queue_wait_ms / 1000,
                          video_aging_s=settings.job_video_aging_s,
                          expected_wait=lambda endpoint, position: expected_wait(retry_after, admission, endpoint,
                                                                                 position))
    pool.on_change = lambda worker: admission.dispatch()
    registry = CollectorRegistry()
    registry.register(ProcessCollector(registry=None))
    registry.register(PoolCollector(lambda: pool.workers, [s.value for s in WorkerState],
                                    lambda: [] if inventory.simulated else inventory.gpus()))
    return RouterState(
        settings=settings, inventory=inventory, upstream=upstream, pool=pool,
        registry=registry, metrics=RouterMetrics(registry),
        admission=admission, retry_after=retry_after,
        in_flight=InFlight(lambda path: path in API_ENDPOINTS), live=LiveStats(API_ENDPOINTS))
