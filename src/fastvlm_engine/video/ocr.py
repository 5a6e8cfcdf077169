"""The on-screen text stage: what is written on screen, and from when to when.

1. Read the keyframes (one Tesseract run for all of them, see :mod:`.tesseract`).
2. Read more of the frames the analysis kept (``VideoAnalysis.samples``: an even grid plus a
   frame after every cut): first about one per :data:`SCAN_SEC` between the keyframes, so
   text shown between keyframes is seen; then, wherever two consecutive frames read differ in
   text, the frame halfway between them, again and again (a bisection of every appearance
   and disappearance) -- at most ``ocr_max_extra_frames`` extra frames per video, each round
   one batched run.
3. Turn words into lines (by geometry, across both ink maps), keep lines Tesseract is sure
   of, and follow each line through the frames read: a line seen in consecutive read frames
   is one appearance. Its span runs from halfway between the last frame without it and the
   first with it, to halfway between the last with it and the next without it (the start or
   the end of the video when nothing was read beyond it), so it is accurate to half the
   frames' spacing where the neighbours were read.

Readings of one appearance are merged: the text is the most confident reading, the confidence
the mean word confidence of all readings (0..1).
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

from ..config import Settings
from ..schemas import OnScreenText, StageReport
from .analysis import VideoAnalysis
from .tesseract import Word

__all__ = ["MIN_LINE_CHARS", "OcrOutcome", "TextLine", "TextReader", "read_on_screen_text", "same_text",
           "text_lines"]

MIN_LINE_CHARS = 3
"""Letters and digits a line needs (shorter readings on textures are mostly noise)."""
MIN_WORD_CONFIDENCE = 50.0
"""Words below this Tesseract confidence are dropped before lines are built."""
SCAN_SEC = 1.0
"""Besides the keyframes, a frame about every this many seconds is read, so that text shown
between keyframes is found; text on screen for less than that may be missed."""
SAME_TEXT_RATIO = 0.75
"""Two readings at least this similar (difflib ratio, letters and digits only) are one text."""
_NORMAL = re.compile(r"[^a-z0-9]+")


class TextReader(Protocol):
    """What the stage needs from an OCR engine (:class:`~.tesseract.TesseractReader`)."""

    def unavailable_reason(self) -> str | None: ...
    def read(self, images: Sequence[Image.Image]) -> list[list[Word]]: ...


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float
    """Mean word confidence, 0..1."""
    top: int = 0
    bottom: int = 0
    """Vertical extent in the frame, pixels (to follow one line from frame to frame)."""

    def same_line(self, other: TextLine) -> bool:
        """The same text, or one text read more or less completely at the same height."""
        if same_text(self.text, other.text):
            return True
        overlap = min(self.bottom, other.bottom) - max(self.top, other.top)
        if overlap < 0.5 * min(self.bottom - self.top, other.bottom - other.top):
            return False
        words = {w for w in _normal(self.text).split() if len(w) >= 3}
        return bool(words & {w for w in _normal(other.text).split() if len(w) >= 3})

    @property
    def weight(self) -> float:
        """How much of a reading this is: confident and complete readings weigh more."""
        return self.confidence * sum(c.isalnum() for c in self.text)


@dataclass(frozen=True)
class OcrOutcome:
    texts: list[OnScreenText]
    report: StageReport
    frames_read: int = 0

    @classmethod
    def off(cls, reason: str, *, status: Literal["off", "skipped", "failed"] = "off") -> OcrOutcome:
        """No on-screen text, and why."""
        return cls([], StageReport(status=status, reason=reason))


def _normal(text: str) -> str:
    return _NORMAL.sub(" ", text.lower()).strip()


def same_text(a: str, b: str) -> bool:
    """Whether two readings are the same text (OCR of one line varies a little between frames)."""
    x, y = _normal(a), _normal(b)
    if not x or not y:
        return False
    if x == y or (min(len(x), len(y)) >= 4 and (x in y or y in x)):
        return True
    return difflib.SequenceMatcher(None, x, y).ratio() >= SAME_TEXT_RATIO


def text_lines(words: Sequence[Word], *, min_confidence: float) -> list[TextLine]:
    """Words grouped into lines (same height band, close together), top to bottom; a line is
    kept when its mean confidence reaches ``min_confidence`` (0..100) and it has at least
    MIN_LINE_CHARS letters or digits."""
    lines: list[list[Word]] = []
    for word in sorted((w for w in words if w.confidence >= MIN_WORD_CONFIDENCE and any(c.isalnum() for c in w.text)),
                       key=lambda w: (w.left, w.top)):
        for line in lines:
            last = line[-1]
            overlap = min(last.bottom, word.bottom) - max(last.top, word.top)
            height = max(last.height, word.height)
            if overlap >= 0.5 * min(last.height, word.height) and word.left - last.right <= 1.5 * height:
                line.append(word)
                break
        else:
            lines.append([word])
    result = []
    for line in sorted(lines, key=lambda ws: (min(w.top for w in ws), ws[0].left)):
        text = " ".join(w.text for w in line)
        confidence = sum(w.confidence for w in line) / len(line)
        if confidence >= min_confidence and sum(c.isalnum() for c in text) >= MIN_LINE_CHARS:
            result.append(TextLine(text=text, confidence=round(confidence / 100.0, 4),
                                   top=min(w.top for w in line), bottom=max(w.bottom for w in line)))
    return result


@dataclass
class _Frame:
    t: float
    image: Callable[[], Image.Image]
    is_keyframe: bool
    lines: list[TextLine] | None = None  # None: not read


@dataclass
class _Appearance:
    readings: list[tuple[int, TextLine]] = field(default_factory=list)  # (frame position, reading)


def read_on_screen_text(analysis: VideoAnalysis, reader: TextReader, settings: Settings, *,
                        stop: threading.Event | None = None) -> OcrOutcome:
    """On-screen text of an analysed video (keep_samples=True gives it frames between keyframes).

    Synchronous (Tesseract runs in a subprocess): call it through ``asyncio.to_thread``. Raises
    RuntimeError when Tesseract fails or times out.
    """
    reason = reader.unavailable_reason()
    if reason is not None:
        return OcrOutcome([], StageReport(status="unavailable", reason=reason))
    frames = _frames(analysis)
    if not frames:
        return OcrOutcome([], StageReport(status="done", reason="The video has no keyframes."))
    min_confidence = settings.ocr_min_confidence

    def read(positions: list[int]) -> None:
        for position, words in zip(positions, reader.read([frames[p].image() for p in positions]), strict=True):
            frames[position].lines = text_lines(words, min_confidence=min_confidence)

    budget = settings.ocr_max_extra_frames
    scan = _scan_positions(frames, analysis.info.duration_sec, budget // 2)
    read(sorted({p for p, f in enumerate(frames) if f.is_keyframe} | set(scan)))
    extra = len(scan)
    while extra < budget and not (stop is not None and stop.is_set()):
        wanted = _boundary_midpoints(frames)[: budget - extra]
        if not wanted:
            break
        read(wanted)
        extra += len(wanted)
    texts = _appearances(frames, analysis.info.duration_sec)
    reason = None if texts else "No text was read on screen."
    read_count = sum(f.lines is not None for f in frames)
    return OcrOutcome(texts, StageReport(status="done", reason=reason), frames_read=read_count)


def _frames(analysis: VideoAnalysis) -> list[_Frame]:
    """Keyframes and kept samples in time order (a keyframe is also a sample: keep one)."""
    frames = {k.index: _Frame(k.t, (lambda image=k.image: image), True) for k in analysis.keyframes}
    for sample in analysis.samples:
        if sample.index not in frames:
            frames[sample.index] = _Frame(round(sample.t, 3), (lambda s=sample: analysis.sample_image(s)), False)
    return [frames[i] for i in sorted(frames)]


def _scan_positions(frames: list[_Frame], duration: float, most: int) -> list[int]:
    """Non-keyframes about every SCAN_SEC (wider when ``most`` frames cannot cover it), so text
    that appears between keyframes is seen too."""
    if most <= 0:
        return []
    spacing = max(SCAN_SEC, duration / most)
    chosen: list[int] = []
    last = -spacing
    for position, frame in enumerate(frames):
        if frame.is_keyframe:
            last = frame.t
        elif (frame.t - last >= spacing - 1e-6 or position == len(frames) - 1) and len(chosen) < most:
            chosen.append(position)  # the last frame too: it bounds every text still on screen at the end
            last = frame.t
    return chosen


def _differ(a: _Frame, b: _Frame) -> bool:
    """Some line is on screen in one frame and not in the other."""
    lines_a, lines_b = a.lines or [], b.lines or []
    return (any(not any(x.same_line(y) for y in lines_b) for x in lines_a)
            or any(not any(y.same_line(x) for x in lines_a) for y in lines_b))


def _boundary_midpoints(frames: list[_Frame]) -> list[int]:
    """Between every two consecutive read frames that differ in text and have unread frames
    between them, the middle one: reading it halves the uncertainty about when the text changed."""
    read = [p for p, f in enumerate(frames) if f.lines is not None]
    return [(a + b) // 2 for a, b in zip(read, read[1:], strict=False) if b - a > 1 and _differ(frames[a], frames[b])]


def _appearances(frames: list[_Frame], duration: float) -> list[OnScreenText]:
    read = [p for p, f in enumerate(frames) if f.lines is not None]
    open_: list[_Appearance] = []  # seen in the previous read frame
    done: list[_Appearance] = []
    for position in read:
        still: list[_Appearance] = []
        for line in frames[position].lines or []:
            match = next((a for a in open_ if a not in still and a.readings[-1][1].same_line(line)), None)
            appearance = match if match is not None else _Appearance()
            appearance.readings.append((position, line))
            still.append(appearance)
        done.extend(a for a in open_ if a not in still)
        open_ = still
    done.extend(open_)
    texts = []
    for appearance in done:
        first, last = appearance.readings[0][0], appearance.readings[-1][0]
        before = [p for p in read if p < first]
        after = [p for p in read if p > last]
        start = (frames[before[-1]].t + frames[first].t) / 2 if before else (0.0 if first == 0 else frames[first].t)
        end = ((frames[last].t + frames[after[0]].t) / 2 if after
               else duration if last == len(frames) - 1 else frames[last].t)
        best = max((line for _, line in appearance.readings), key=lambda line: line.weight)
        confidence = sum(line.confidence for _, line in appearance.readings) / len(appearance.readings)
        texts.append(OnScreenText(text=best.text, start_sec=round(start, 3), end_sec=round(max(end, start), 3),
                                  confidence=round(confidence, 4)))
    return sorted(texts, key=lambda x: (x.start_sec, x.end_sec, x.text))
