"""Text side of the video summary: the bounded summary prompt and the extractive fallback.

The model writes the summary from the video's timeline -- timestamped frame captions, what is
said and the text on screen, interleaved in time order -- in a text-only generation, so the
prompt must stay within ``video_summary_context_chars``. When the timeline does not fit, every
entry is shortened equally at a word boundary; when even short entries do not fit, an evenly
spaced subset is kept. Timestamps are always kept, so the model can order events.

The extractive summary (``video_summary_mode = "extractive"``, or when the model returns
nothing) greedily picks a few captions that are representative yet different from each other by
word-set (Jaccard) similarity, and lists them in time order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "EXTRACTIVE_MAX_CAPTIONS",
    "MIN_CAPTION_CHARS",
    "TimelineEntry",
    "build_summary_prompt",
    "caption_lines",
    "extractive_summary",
    "format_timestamp",
    "shorten",
    "timeline_entries",
    "timeline_lines",
]

MIN_CAPTION_CHARS = 40
"""Shortest a caption is cut to before captions are dropped instead."""
EXTRACTIVE_MAX_CAPTIONS = 3
"""Captions an extractive summary is made of."""
EXTRACTIVE_MIN_NOVELTY = 0.2
"""A caption sharing more than 80 % of its words (Jaccard) with a chosen one adds nothing."""

_PROMPT_HEAD = ("Below is the timeline of a {duration} video: descriptions of its frames, what is said "
                "('says') and text shown on screen ('on screen'), each with its time.\n\n")
_PROMPT_TAIL = ("\n\nWrite a short summary of the whole video in two or three sentences: what happens, "
                "who or what appears, and the setting. Do not mention frames or timestamps.")
_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(
    "a an the and or of in on at to with is are was were be it its this that there their they "
    "his her he she for from by as into onto over under while image picture frame photo shows "
    "showing video".split())


def format_timestamp(seconds: float) -> str:
    """'12.4s' -- the form used in frame prompts and caption lines."""
    return f"{max(0.0, seconds):.1f}s"


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[:max(1, limit - 1)]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


@dataclass(frozen=True)
class TimelineEntry:
    """One line of the summary prompt: sorted by ``t``, shown as ``[stamp] text``."""

    t: float
    stamp: str
    text: str


def caption_lines(captions: Sequence[tuple[float, str]], max_chars: int) -> list[str]:
    """'[12.4s] caption' lines, whose total length (with newlines) is at most ``max_chars``."""
    return timeline_lines([TimelineEntry(t, format_timestamp(t), text) for t, text in captions], max_chars)


def timeline_lines(entries: Sequence[TimelineEntry], max_chars: int) -> list[str]:
    """'[stamp] text' lines in time order, whose total length (with newlines) is at most ``max_chars``.

    All entries are kept when they fit; otherwise each is shortened to an equal share; when a
    share would fall below :data:`MIN_CAPTION_CHARS`, an evenly spaced subset is kept instead.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    items = [TimelineEntry(e.t, e.stamp, " ".join(e.text.split()))
             for e in sorted(entries, key=lambda e: e.t) if e.text and e.text.strip()]
    if not items:
        return []

    def line(entry: TimelineEntry, text: str) -> str:
        return f"[{entry.stamp}] {text}"

    def total(lines: list[str]) -> int:
        return sum(len(x) for x in lines) + max(0, len(lines) - 1)

    full = [line(e, e.text) for e in items]
    if total(full) <= max_chars:
        return full
    prefix = max(len(line(e, "")) for e in items) + 1  # "[123.4s] " plus the newline
    keep = len(items)
    while keep > 1 and max_chars // keep - prefix < MIN_CAPTION_CHARS:
        keep -= 1
    if keep < len(items):
        step = len(items) / keep
        items = [items[int(i * step + step / 2)] for i in range(keep)]
    share = max(1, max_chars // len(items) - prefix)
    lines = [line(e, shorten(e.text, share)) for e in items]
    while lines and total(lines) > max_chars:  # only when even one entry is too long
        lines[-1] = lines[-1][:max(0, len(lines[-1]) - (total(lines) - max_chars))]
        if not lines[-1]:
            lines.pop()
    return lines


def timeline_entries(captions: Sequence[tuple[float, str]], speech: Sequence[tuple[float, float, str]] = (),
                     on_screen: Sequence[tuple[float, float, str]] = ()) -> list[TimelineEntry]:
    """Frame captions ``(t, caption)``, what is said and the text shown on screen ``(start, end, text)``
    as timeline entries: ``[12.4s] caption``, ``[3.0s-5.2s] says: "..."``, ``[...] on screen: "..."``."""
    entries = [TimelineEntry(t, format_timestamp(t), text) for t, text in captions]
    entries += [TimelineEntry(start, _span(start, end), f'says: "{text}"') for start, end, text in speech]
    entries += [TimelineEntry(start, _span(start, end), f'on screen: "{text}"') for start, end, text in on_screen]
    return entries


def build_summary_prompt(captions: Sequence[tuple[float, str]], *, duration: float, max_chars: int,
                         speech: Sequence[tuple[float, float, str]] = (),
                         on_screen: Sequence[tuple[float, float, str]] = ()) -> str:
    """The text-only prompt asking the model to summarise the video from its timeline.

    The timeline interleaves, in time order, the frame captions ``(t, caption)``, what is said
    and the text shown on screen ``(start, end, text)``. ``max_chars`` bounds the timeline part
    (``video_summary_context_chars``); the fixed instructions around it add about 400 characters.
    """
    lines = timeline_lines(timeline_entries(captions, speech, on_screen), max_chars)
    head = _PROMPT_HEAD.format(duration=f"{max(0.0, duration):.1f}-second")
    return head + "\n".join(lines) + _PROMPT_TAIL


def _span(start: float, end: float) -> str:
    return f"{format_timestamp(start)}-{format_timestamp(end)}"


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def extractive_summary(captions: Sequence[tuple[float, str]], *,
                       max_captions: int = EXTRACTIVE_MAX_CAPTIONS) -> str:
    """A few representative, mutually different captions joined in time order.

    The first pick is the most central caption (highest mean Jaccard similarity to the
    others); each next pick is the caption least similar to those already chosen (ties: the
    earlier caption), stopping early when the rest repeat what is chosen.
    """
    if max_captions < 1:
        raise ValueError(f"max_captions must be >= 1, got {max_captions}")
    items = [(t, text.strip()) for t, text in captions if text and text.strip()]
    if not items:
        return ""
    words = [_words(text) for _, text in items]
    n = len(items)

    def centrality(i: int) -> float:
        return sum(_jaccard(words[i], words[j]) for j in range(n) if j != i) / max(1, n - 1)

    chosen = [max(range(n), key=lambda i: (centrality(i), -i))]
    while len(chosen) < min(max_captions, n):
        def novelty(i: int) -> float:
            return min(1.0 - _jaccard(words[i], words[j]) for j in chosen)

        rest = [i for i in range(n) if i not in chosen]
        best = max(rest, key=lambda i: (novelty(i), -i))
        if novelty(best) < EXTRACTIVE_MIN_NOVELTY:
            break
        chosen.append(best)
    return " ".join(_sentence(items[i][1]) for i in sorted(chosen, key=lambda i: (items[i][0], i)))
