"""OpenTelemetry tracing, off unless the standard ``OTEL_*`` variables ask for an exporter.

Tracing turns on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
is set or ``OTEL_TRACES_EXPORTER=otlp``, and off again with ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. The protocol follows ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``
(``grpc``, the default, or ``http/protobuf``), so Jaeger's OTLP ports (4317/4318) work as is.
W3C ``traceparent`` carries the trace from client to router to worker. When tracing is off the
OpenTelemetry API hands out non-recording spans and all of this costs next to nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

__all__ = ["SpanKind", "extract", "inject", "record_stage_spans", "recording", "setup_tracing",
           "shutdown_tracing", "span", "tracer", "tracing_enabled"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer("fastvlm_engine")
_provider: Any = None


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "") == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_TRACES_EXPORTER") == "otlp")


def setup_tracing(default_service: str, **attributes: str) -> bool:
    """Install the SDK with an OTLP exporter if the environment asks for one; True if it did."""
    global _provider
    if _provider is not None or not tracing_enabled():
        return _provider is not None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or default_service,
                                **attributes})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: OTLP over %s as %s", protocol, resource.attributes.get("service.name"))
    return True


def recording() -> bool:
    """Is an exporter installed? When not, spans record nothing and hot paths may skip them entirely."""
    return _provider is not None


def shutdown_tracing() -> None:
    """Flush and stop the exporter (call on shutdown, so the last spans are not lost)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(headers)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span to outgoing headers."""
    propagate.inject(headers)


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[trace.Span]:
    with tracer.start_as_current_span(name, kind=kind, attributes=_clean(attributes)) as current:
        yield current


def record_stage_spans(stages: Sequence[tuple[str, float]], started_ns: int | None = None) -> None:
    """Child spans for stages whose time was accumulated inside one pass (e.g. decoding and cut
    detection interleave frame by frame): laid end to end, each as long as its total."""
    cursor = started_ns if started_ns is not None else time.time_ns()
    for name, seconds in stages:
        end = cursor + int(seconds * 1e9)
        tracer.start_span(name, start_time=cursor, attributes={"fastvlm.timing": "accumulated"}).end(end_time=end)
        cursor = end


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}
