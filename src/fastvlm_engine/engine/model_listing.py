"""``fastvlm models``: the configured model and the converted checkpoints in the cache."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .convert import CONVERSION_MARKER
from .model_cache import list_cached
from .resolve import ModelSourceError, inspect_source

__all__ = ["format_models_report", "models_report"]


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def models_report(settings: Settings) -> dict[str, Any]:
    """What FASTVLM_MODEL names (without converting or loading) and what the cache holds."""
    configured: dict[str, Any] = {"setting": settings.model}
    try:
        report = inspect_source(settings)
    except ModelSourceError as exc:
        configured["error"] = str(exc)
    else:
        if report.converted is not None:
            ready = (report.converted / CONVERSION_MARKER).is_file()
        else:
            ready = (report.folder / "config.json").is_file()
        configured.update(report.info.public(), source=report.info.source, kind=report.kind,
                          folder=str(report.folder), converted=str(report.converted) if report.converted else None,
                          ready=ready)
    cached = [{**entry.info.public(), "source": entry.info.source, "size_bytes": entry.size_bytes,
               "path": str(entry.path)} for entry in list_cached(settings.cache_path)]
    return {"configured": configured, "cache_dir": str(settings.cache_path), "cached": cached}


def format_models_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines and a table."""
    configured = report["configured"]
    setting = configured["setting"] or "(empty: the built-in tiny model)"
    lines = [f"configured: FASTVLM_MODEL={setting}"]
    if "error" in configured:
        lines.append(f"  error: {configured['error']}")
    else:
        lines.append(f"  {configured['name']} ({configured['format']}, stored as {configured['dtype']})")
        if configured["kind"] == "apple":
            state = "converted" if configured["ready"] else "converted on the first start"
            lines.append(f"  Apple format: {state} into {configured['converted']}")
        elif not configured["ready"]:
            lines.append("  built on the first start")
    lines.append(f"cache: {report['cache_dir']}")
    if not report["cached"]:
        lines.append("  (no converted checkpoints)")
        return "\n".join(lines)
    rows = [("NAME", "FORMAT", "SOURCE HASH", "SIZE", "SOURCE")]
    rows += [(entry["name"], entry["format"], (entry["source_hash"] or "")[:16], _size(entry["size_bytes"]),
              entry["source"]) for entry in report["cached"]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4]
              for row in rows]
    return "\n".join(lines)
