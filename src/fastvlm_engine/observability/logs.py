"""Structured logs: one JSON object per line (or readable text), with request and trace ids.

The request id lives in a context variable set by the HTTP middleware, so every line logged
while serving a request carries it — in the router and, through ``X-Request-ID``, in the worker.
The process name (``router``, ``w0`` ...) tells the lines of one stream apart.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

__all__ = ["configure_logging", "current_request_id", "job_id_var", "log_fields", "request_id_var",
           "wrap_foreign_line"]

request_id_var: ContextVar[str | None] = ContextVar("fastvlm_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("fastvlm_job_id", default=None)
"""Set while a worker runs a job, so every line logged for it carries ``job_id``."""

# Attributes every LogRecord has; anything else passed via ``extra=`` is a structured field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def current_request_id() -> str | None:
    return request_id_var.get()


def _trace_ids() -> tuple[str | None, str | None]:
    try:
        from opentelemetry import trace
    except ImportError:
        return None, None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def log_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (its ``extra=``), without the standard attributes."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class _ContextFilter(logging.Filter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.process
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        if getattr(record, "trace_id", None) is None:
            record.trace_id, record.span_id = _trace_ids()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "process", "message", "request_id"?, "trace_id"?, ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": getattr(record, "process_name", None),
            "message": record.getMessage(),
        }
        for key, value in log_fields(record).items():
            if key != "process_name" and value is not None:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in log_fields(record).items()
                  if k not in ("process_name", "span_id") and v is not None}
        return line + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else "")


def configure_logging(level: str, fmt: str, process: str) -> None:
    """Install one stderr handler on the root logger; idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s [%(process_name)s] %(name)s: %(message)s"))
    handler.addFilter(_ContextFilter(process))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # python-multipart warns about every malformed body: clients must not be able to write our logs.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)


def wrap_foreign_line(line: str, process: str) -> str:
    """A line a child printed outside our logging, as a JSON log line (JSON lines pass through)."""
    stripped = line.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            json.loads(stripped)
            return stripped
        except ValueError:
            pass
    return json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": "INFO",
                       "logger": "stderr", "process": process, "message": line.rstrip()}, ensure_ascii=False)
