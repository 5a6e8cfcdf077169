"""Logs, metrics and traces of a real router and its workers — with a real Prometheus server and an
OTLP receiver (the protocol Jaeger accepts) running on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.otlp import OtlpReceiver
from tests.helpers.procs import free_port, http, start_router, wait_until, wait_workers_ready

pytestmark = pytest.mark.integration

VIDEO_STAGES = {"stats", "scene_detection", "frame_extraction", "dedupe", "captioning", "summary", "tags", "safety",
                "asr", "ocr", "total"}


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    proc = start_router(tmp_path_factory.mktemp("obs"), tiny_model_dir, media_roots=media_root, max_workers=2,
                        max_concurrent=2, admission_queue_wait_ms=0)  # shed at once, so rejections are countable
    try:
        wait_workers_ready(proc, 2)
        yield proc
    finally:
        proc.stop()


def metrics(base_url: str) -> dict[str, list]:
    status, headers, text = http("GET", base_url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_router_metrics_cover_requests_workers_batches_and_video_stages(router):
    before = metrics(router.base_url)
    ok_before = value(before["fastvlm_requests"], "fastvlm_requests_total", endpoint="/predict_image", code="ok")
    for _ in range(3):
        assert http("POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg",
                                                                "max_new_tokens": 4})[0] == 200
    assert http("POST", router.base_url + "/predict_image", {"image_path": "missing.jpg"})[0] == 404
    assert http("POST", router.base_url + "/summarize_video", {"video_path": "sample.mp4"})[0] == 200
    after = metrics(router.base_url)

    requests = after["fastvlm_requests"]
    assert value(requests, "fastvlm_requests_total", endpoint="/predict_image", code="ok") == ok_before + 3
    assert value(requests, "fastvlm_requests_total", endpoint="/predict_image", code="media_not_found") >= 1
    assert value(requests, "fastvlm_requests_total", endpoint="/summarize_video", code="ok") >= 1
    buckets = {s.labels["le"] for s in after["fastvlm_request_duration_seconds"] if s.name.endswith("_bucket")}
    assert {"600.0", "+Inf"} <= buckets
    assert value(after["fastvlm_workers"], "fastvlm_workers", state="ready") == 2
    assert {s.labels["worker"] for s in after["fastvlm_requests_in_flight"]} == {"w0", "w1"}
    assert "fastvlm_worker_restarts" in after and "fastvlm_busy_rejections" in after
    # worker series, merged in with a worker label
    assert value(after["fastvlm_batch_size"], "fastvlm_batch_size_count") >= 4
    assert {s.labels["worker"] for s in after["fastvlm_batch_size"]} <= {"w0", "w1"}
    assert value(after["fastvlm_queue_wait_seconds"], "fastvlm_queue_wait_seconds_count") >= 4
    stages = {s.labels["stage"] for s in after["fastvlm_video_stage_seconds"] if s.name.endswith("_count")}
    assert stages == VIDEO_STAGES
    # no NVML here: the GPU series are absent, not zero
    assert not any(name.startswith("fastvlm_gpu_") for name in after)


def test_busy_rejections_are_counted(router):
    import threading

    before = value(metrics(router.base_url)["fastvlm_busy_rejections"], "fastvlm_busy_rejections_total",
                   endpoint="/predict_image")
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(http(
        "POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg", "max_new_tokens": 400})[0]))
        for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = value(metrics(router.base_url)["fastvlm_busy_rejections"], "fastvlm_busy_rejections_total",
                  endpoint="/predict_image")
    assert after - before == codes.count(503) and codes.count(503) >= 1


def test_every_log_line_is_json_and_router_and_worker_share_the_request_id(router):
    status, _, _ = http("POST", router.base_url + "/predict_image", {"image_path": "rocket.jpg", "max_new_tokens": 3},
                        headers={"X-Request-ID": "log-check-42", "X-Retry-Attempt": "2"})
    assert status == 200
    time.sleep(0.5)
    lines = [line for line in router.log().splitlines() if line.strip()]
    documents = [json.loads(line) for line in lines]  # every line parses
    access = [d for d in documents if d.get("request_id") == "log-check-42" and d["logger"] == "fastvlm_engine.access"]
    by_process = {d["process"]: d for d in access}
    assert "router" in by_process and len(by_process) == 2  # the router and the worker that served it
    line = by_process["router"]
    assert line["endpoint"] == "/predict_image" and line["status"] == 200 and line["worker"] in ("w0", "w1")
    assert line["retry_attempt"] == 2 and line["latency_ms"] > 0 and line["queue_wait_ms"] >= 0
    assert by_process[line["worker"]]["status"] == 200


def test_worker_series_reach_the_router_but_the_worker_port_refuses_others(router):
    port = http("GET", router.base_url + "/healthz")[2]["workers"][0]["port"]
    status, _, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert "fastvlm_worker_requests" in metrics(router.base_url)


PROMETHEUS = shutil.which("prometheus")


def test_a_real_prometheus_scrapes_the_router(router, tmp_path):
    assert PROMETHEUS, "Debian's prometheus package is needed (make test installs it)"
    sent = 5
    before = value(metrics(router.base_url)["fastvlm_requests"], "fastvlm_requests_total",
                   endpoint="/predict_image", code="ok")
    for _ in range(sent):
        assert http("POST", router.base_url + "/predict_image", {"image_path": "chelsea.jpg",
                                                                "max_new_tokens": 2})[0] == 200
    target = router.base_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                      f"scrape_configs: [{{job_name: fastvlm, static_configs: [{{targets: ['{target}']}}]}}]\n")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        query = 'sum(fastvlm_requests_total{endpoint="/predict_image",code="ok"})'
        url = f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(query)
        answer: dict = {}

        def scraped() -> bool:
            nonlocal answer
            status, _, answer = http("GET", url, timeout=5)
            return status == 200 and bool(answer["data"]["result"])

        wait_until(scraped, 60, "Prometheus to scrape the router", interval=0.5)
        assert float(answer["data"]["result"][0]["value"][1]) == before + sent
        query = "sum by (worker) (fastvlm_batch_size_count)"
        status, _, answer = http("GET", f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(query))
        assert {r["metric"]["worker"] for r in answer["data"]["result"]} <= {"w0", "w1"}
        assert answer["data"]["result"]
    finally:
        os.killpg(prometheus.pid, 15)
        prometheus.wait(30)
        log.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_one_request_is_one_trace_across_client_router_and_worker(tmp_path, tiny_model_dir, media_root, protocol):
    from opentelemetry.sdk.trace import TracerProvider

    from fastvlm_engine.client import Client

    with OtlpReceiver("grpc" if protocol == "grpc" else "http") as receiver:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_BSP_SCHEDULE_DELAY": "100"}
        proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, extra_env=otel)
        try:
            wait_workers_ready(proc, 1)
            # the client continues the caller's trace: a span opened here is the root of the request
            caller = TracerProvider().get_tracer("test-client")
            with caller.start_as_current_span("client-call") as root:
                with Client(proc.base_url) as client:
                    document = client.summarize_video(video_path="sample.mp4")
            trace_id = format(root.get_span_context().trace_id, "032x")
            assert document["scenes_detected"] == 3
            expected_router = {"POST /summarize_video", "admission", "proxy"}
            expected_worker = {"POST /summarize_video", "video.analysis", "video.stats", "video.scene_detection",
                               "video.frame_extraction", "video.dedupe", "video.captioning", "inference",
                               "video.summary", "video.tags", "video.safety.nsfw", "video.safety.lexicon"}
            if shutil.which("tesseract"):
                expected_worker.add("video.ocr")

            def arrived() -> bool:
                spans = receiver.store.spans(trace_id)
                router_names = {s.name for s in spans if s.service == "fastvlm-router"}
                worker_names = {s.name for s in spans if s.service == "fastvlm-worker"}
                return expected_router <= router_names and expected_worker <= worker_names

            wait_until(arrived, 30, "the whole trace at the OTLP receiver", proc, interval=0.2)
            spans = receiver.store.spans(trace_id)
            ids = {s.span_id for s in spans} | {format(root.get_span_context().span_id, "016x")}
            assert all(s.parent_span_id in ids for s in spans)  # one tree, rooted at the client's span
            assert not [s for s in receiver.store.spans() if s.trace_id != trace_id
                        and s.name == "POST /summarize_video"]  # the request did not start another trace
        finally:
            proc.stop()
