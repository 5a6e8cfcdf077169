import json
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fastvlm_engine.observability.logs import JsonFormatter, request_id_var, wrap_foreign_line
from fastvlm_engine.observability.metrics import HttpMetrics, WorkerMetrics, render
from fastvlm_engine.observability.tracing import tracing_enabled


def test_json_lines_carry_fields_and_request_id():
    from fastvlm_engine.observability.logs import _ContextFilter

    record = logging.LogRecord("x.y", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.endpoint = "/predict_image"
    token = request_id_var.set("rid-1")
    try:
        _ContextFilter("router").filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world" and line["request_id"] == "rid-1"
    assert line["process"] == "router" and line["endpoint"] == "/predict_image" and line["level"] == "INFO"


def test_foreign_lines_become_json_and_json_passes_through():
    wrapped = json.loads(wrap_foreign_line("[h264 @ 0x1] error while decoding", "w0"))
    assert wrapped["process"] == "w0" and wrapped["message"].startswith("[h264")
    original = '{"level": "INFO", "message": "x"}'
    assert wrap_foreign_line(original, "w0") == original
    assert json.loads(wrap_foreign_line("{not json}", "w0"))["message"] == "{not json}"


def test_worker_series_are_merged_with_a_worker_label():
    from fastvlm_engine.engine.scheduler import StepInfo

    router = CollectorRegistry()
    HttpMetrics(router, "fastvlm_").observe("/predict_image", "ok", 0.2)
    texts = {}
    for worker_id, size in (("w0", 3), ("w1", 5)):
        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        metrics.step(StepInfo(kind="decode", sequences=size, seconds=0.1))
        metrics.video({"captioning_sec": 0.5, "total_sec": 1.0})
        texts[worker_id] = render(registry).decode()
    texts["w2"] = "this is not prometheus text {"
    families = {f.name: f for f in text_string_to_metric_families(render(router, texts).decode())}
    counts = {s.labels["worker"]: s.value for s in families["fastvlm_batch_size"].samples
              if s.name == "fastvlm_batch_size_count"}
    assert counts == {"w0": 1.0, "w1": 1.0}
    assert {s.labels["stage"] for s in families["fastvlm_video_stage_seconds"].samples} == {"captioning", "total"}
    assert any(s.value == 1 for s in families["fastvlm_requests"].samples if s.name == "fastvlm_requests_total")


def test_tracing_is_off_unless_asked_for():
    assert not tracing_enabled({})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
