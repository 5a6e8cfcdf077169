"""Prometheus metrics for the router and the workers.

The router's ``/metrics`` is the one place to scrape: its own series (requests, durations,
shedding, workers by state, in-flight per worker, restarts, NVML GPU memory and utilisation)
plus every ready worker's series (batch sizes, queue wait, inference time, video stage times),
fetched at scrape time and labelled ``worker``. GPU series exist only where NVML does: absent,
not zero, on a host without GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..config import CHAT_ENDPOINT

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "EngineCollector", "HttpMetrics", "PoolCollector", "QueueCollector",
           "WorkerMetrics", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
API_ENDPOINTS = ("/predict_image", "/summarize_video", CHAT_ENDPOINT)


class HttpMetrics:
    """Requests by endpoint and outcome, and their durations."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = Counter(f"{prefix}requests_total", "Requests by endpoint and outcome ('ok' or the error "
                                "code).", ["endpoint", "code"], registry=registry)
        self.duration = Histogram(f"{prefix}request_duration_seconds", "Request duration by endpoint.",
                                  ["endpoint"], buckets=DURATION_BUCKETS, registry=registry)
        for endpoint in API_ENDPOINTS:  # series exist from the start, so rate() works at once
            self.duration.labels(endpoint)
            self.requests.labels(endpoint, "ok")

    def observe(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.labels(endpoint, code).inc()
        self.duration.labels(endpoint).observe(seconds)


class WorkerMetrics(HttpMetrics):
    """A worker's own series (scraped through the router, which adds the ``worker`` label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "fastvlm_worker_")
        self.registry = registry
        self.batch_size = Histogram("fastvlm_batch_size", "Sequences in one model step (prefill or decode).",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.inference = Histogram("fastvlm_inference_seconds", "Duration of one model step.", ["kind"],
                                   buckets=STEP_BUCKETS, registry=registry)
        self.queue_wait = Histogram("fastvlm_queue_wait_seconds", "Time a request waited for its first step.",
                                    buckets=DURATION_BUCKETS, registry=registry)
        self.ttft = Histogram("fastvlm_time_to_first_token_seconds", "Time from submission to the first token.",
                              buckets=DURATION_BUCKETS, registry=registry)
        self.tokens = Counter("fastvlm_generated_tokens_total", "Tokens generated.", registry=registry)
        self.video_stage = Histogram("fastvlm_video_stage_seconds", "Time per /summarize_video stage.",
                                     ["stage"], buckets=DURATION_BUCKETS, registry=registry)
        self.job_queue_wait = Histogram("fastvlm_job_queue_wait_seconds", "Time a job waited in the queue before "
                                        "a worker leased it.", ["kind"], buckets=DURATION_BUCKETS, registry=registry)
        self.job_redeliveries = Counter("fastvlm_job_redeliveries_total", "Jobs leased again after an earlier "
                                        "attempt ended without a result.", ["kind"], registry=registry)
        self.jobs_finished = Counter("fastvlm_jobs_finished_total", "Jobs this worker finished, by outcome.",
                                     ["kind", "outcome"], registry=registry)

    def step(self, info: Any) -> None:
        """A step observer for the scheduler (``StepInfo``: kind, sequences, seconds)."""
        self.batch_size.observe(info.sequences)
        self.inference.labels(info.kind).observe(info.seconds)

    def request(self, result: Any) -> None:
        """One finished generation (``GenerationResult``)."""
        self.queue_wait.observe(result.queue_s)
        self.ttft.observe(result.ttft_s)
        self.tokens.inc(result.completion_tokens)

    def watch_engine(self, stats: Callable[[], Any]) -> None:
        """Export the scheduler's counters and gauges, read at scrape time."""
        self.registry.register(EngineCollector(stats))

    def video(self, timing: Mapping[str, float]) -> None:
        for name, seconds in timing.items():
            self.video_stage.labels(name.removesuffix("_sec")).observe(seconds)


class PoolCollector(Collector):
    """Series read from the worker endpoints, the local supervisor and the GPU inventory at scrape time."""

    def __init__(self, workers: Callable[[], Iterable[Any]], states: Iterable[str],
                 gpus: Callable[[], Iterable[Any]], restarts: Callable[[], Mapping[str, int]] = dict) -> None:
        self._workers = workers
        self._states = tuple(states)
        self._gpus = gpus
        self._restarts = restarts

    def collect(self) -> Iterable[Metric]:
        workers = list(self._workers())
        by_state = GaugeMetricFamily("fastvlm_workers", "Workers by state.", labels=["state"])
        for state in self._states:
            by_state.add_metric([state], sum(1 for w in workers if w.state.value == state))
        in_flight = GaugeMetricFamily("fastvlm_requests_in_flight", "Requests a worker holds now.",
                                      labels=["worker"])
        restarts = CounterMetricFamily("fastvlm_worker_restarts", "Times a worker slot of this host was replaced.",
                                       labels=["worker"])
        for worker in workers:
            in_flight.add_metric([worker.id], worker.in_flight)
        for worker_id, count in self._restarts().items():
            restarts.add_metric([worker_id], count)
        yield from (by_state, in_flight, restarts)
        gpus = list(self._gpus())
        if not gpus:
            return  # absent, not zero, without NVML
        used = GaugeMetricFamily("fastvlm_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
        total = GaugeMetricFamily("fastvlm_gpu_memory_total_bytes", "GPU memory (NVML).", labels=["gpu"])
        utilization = GaugeMetricFamily("fastvlm_gpu_utilization_ratio", "GPU busy fraction (NVML).",
                                        labels=["gpu"])
        for gpu in gpus:
            used.add_metric([str(gpu.index)], gpu.used_bytes)
            total.add_metric([str(gpu.index)], gpu.total_bytes)
            if gpu.utilization is not None:
                utilization.add_metric([str(gpu.index)], gpu.utilization)
        yield from (used, total, utilization)


class QueueCollector(Collector):
    """The router's queues at scrape time: jobs by status, queued jobs and waiting requests per kind."""

    def __init__(self, jobs: Callable[[], Mapping[str, int]], depth: Callable[[], Mapping[str, int]],
                 admission: Callable[[], Mapping[str, int]]) -> None:
        self._jobs, self._depth, self._admission = jobs, depth, admission

    def collect(self) -> Iterable[Metric]:
        by_status = GaugeMetricFamily("fastvlm_jobs", "Jobs in the store by status (finished ones until their "
                                      "TTL).", labels=["status"])
        for status, count in sorted(self._jobs().items()):
            by_status.add_metric([status], count)
        depth = GaugeMetricFamily("fastvlm_job_queue_depth", "Queued jobs per kind.", labels=["kind"])
        for kind, count in sorted(self._depth().items()):
            depth.add_metric([kind], count)
        waiting = GaugeMetricFamily("fastvlm_admission_queue_depth", "Requests waiting in the router for a "
                                    "worker slot.", labels=["kind"])
        for kind, count in sorted(self._admission().items()):
            waiting.add_metric([kind], count)
        yield from (by_status, depth, waiting)


class EngineCollector(Collector):
    """The scheduler's state at scrape time: running and waiting sequences, KV use, outcomes."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        gauges = (("fastvlm_engine_running_sequences", "Sequences in the running batch.", stats.active),
                  ("fastvlm_engine_waiting_requests", "Requests waiting for a KV slot.", stats.waiting),
                  ("fastvlm_engine_kv_tokens_in_use", "KV cache tokens held by running sequences.",
                   stats.kv_tokens_in_use),
                  ("fastvlm_engine_kv_token_capacity", "KV cache tokens this worker holds.", stats.kv_token_capacity))
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        steps = CounterMetricFamily("fastvlm_engine_steps", "Model steps run.")
        steps.add_metric([], stats.steps)
        outcomes = CounterMetricFamily("fastvlm_engine_requests", "Requests the engine finished, by outcome.",
                                       labels=["outcome"])
        for outcome in ("completed", "failed", "cancelled"):
            outcomes.add_metric([outcome], getattr(stats, outcome))
        yield from (steps, outcomes)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def render(registry: CollectorRegistry, worker_texts: Mapping[str, str] | None = None) -> bytes:
    """The registry's exposition plus each worker's families, relabelled with ``worker``."""
    merged: dict[str, Metric] = {}
    own = {family.name for family in registry.collect()}
    for worker_id, text in (worker_texts or {}).items():
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            continue  # a worker answered garbage: skip it rather than break the scrape
        for family in families:
            if family.name in own:
                continue
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                target.add_sample(sample.name, {**sample.labels, "worker": worker_id}, sample.value,
                                  sample.timestamp)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Fixed(list(merged.values())))
    return generate_latest(registry) + generate_latest(extra)
