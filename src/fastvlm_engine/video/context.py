"""A video's analysis as bounded text context, for answering a question about the video.

The chat API's ``video_url`` parts go through the /summarize_video pipeline; the model then
answers the user's question from this text, which stands where the video was in the message: the
video's length, its summary, and its timeline (timestamped keyframe captions, what is said, the
text on screen) in time order, shortened as the summary prompt is (:func:`.summary.timeline_lines`)
so that the whole context stays within ``max_chars``.
"""

from __future__ import annotations

from ..schemas import SummarizeVideoResponse
from .summary import shorten, timeline_entries, timeline_lines

__all__ = ["MIN_CONTEXT_CHARS", "video_context"]

MIN_CONTEXT_CHARS = 200
"""Smallest budget that still leaves room for the head line and a few timeline entries."""
_SUMMARY_SHARE = 4
"""The summary takes at most a quarter of the budget; the timeline gets the rest."""


def video_context(document: SummarizeVideoResponse, max_chars: int) -> str:
    """The analysis of one video as text of at most ``max_chars`` characters."""
    if max_chars < MIN_CONTEXT_CHARS:
        raise ValueError(f"max_chars must be >= {MIN_CONTEXT_CHARS}, got {max_chars}")
    head = (f"[A video of {document.video.duration_sec:.1f} seconds with {len(document.scenes)} scene(s). "
            "What automatic analysis found in it:]")
    lines = [head]
    summary = " ".join(document.summary.split())
    if summary:
        lines.append("Summary: " + shorten(summary, max_chars // _SUMMARY_SHARE))
    entries = timeline_entries([(c.timestamp_sec, c.caption) for c in document.captions],
                               [(s.start_sec, s.end_sec, s.text) for s in document.speech.segments],
                               [(o.start_sec, o.end_sec, o.text) for o in document.on_screen_text])
    label = "Timeline:"
    budget = max_chars - sum(len(line) + 1 for line in lines) - len(label) - 1
    timeline = timeline_lines(entries, budget) if budget > 0 else []
    if timeline:
        lines += [label, *timeline]
    return "\n".join(lines)[:max_chars]
