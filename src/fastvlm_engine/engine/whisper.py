"""Whisper through transformers' native classes, split like the FastVLM engine.

:meth:`WhisperASR.prepare` turns one audio window (at most 30 s of 16 kHz mono) into log-mel
features on any thread; :meth:`WhisperASR.transcribe` runs on the speech batcher's single
thread and transcribes a batch of windows with one encoder pass, one language detection (when
no language is configured) and one ``generate`` call with timestamps. Segment times are
seconds from the start of each window, clipped to the audio it really holds.

The model is loaded like the FastVLM: ``WhisperForConditionalGeneration`` + ``AutoProcessor``
from a folder or hub id, on the worker's device, bf16 on GPU and fp32 on CPU unless configured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model import resolve_device, resolve_dtype
from .prompts import strip_controls

__all__ = ["WINDOW_SEC", "PreparedWindow", "WhisperASR", "WindowTranscript"]

log = logging.getLogger(__name__)

WINDOW_SEC = 30.0
"""Whisper's context: every window is padded (or cut) to this."""


class _QuietLengthWarning(logging.Filter):
    """Whisper checkpoints set generation_config.max_length (448) and we pass max_new_tokens on
    every call, which makes transformers log a warning per batch that says nothing new."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "seem to have been set. `max_new_tokens` will take precedence" not in record.getMessage()


_QUIET = _QuietLengthWarning()


@dataclass(frozen=True, eq=False)
class PreparedWindow:
    """One window's log-mel features, ready to join a batch."""

    features: torch.Tensor
    """(mel bins, 3000) float32."""
    duration_sec: float
    """Seconds of real audio in the window (the rest is padding)."""


@dataclass(frozen=True)
class WindowTranscript:
    """What Whisper heard in one window."""

    language: str | None
    """Language code (e.g. 'en'); None for an English-only model without language tokens."""
    segments: tuple[tuple[float, float, str], ...]
    """(start, end, text), seconds from the window start, in order; empty text is dropped."""


class WhisperASR:
    """A loaded Whisper model, its processor, and the device it lives on."""

    window_sec = WINDOW_SEC

    def __init__(self, model, processor, *, name: str, device: torch.device, dtype: torch.dtype,
                 language: str = "", max_new_tokens: int = 224) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        generation = model.generation_config
        self._lang_ids: dict[str, int] = {token.strip("<|>"): int(i)
                                          for token, i in (getattr(generation, "lang_to_id", None) or {}).items()}
        self.multilingual = bool(getattr(generation, "is_multilingual", False) and self._lang_ids)
        self._timestamp_begin = int(generation.no_timestamps_token_id) + 1
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        language = language.strip().lower()
        if language and self.multilingual and language not in self._lang_ids:
            raise ValueError(f"the speech model does not know the language {language!r}; it knows "
                             f"{', '.join(sorted(self._lang_ids))}")
        if language and not self.multilingual and language != "en":
            raise ValueError("the speech model is English-only; leave the language empty or set 'en'")
        self.language = language

    @classmethod
    def load(cls, source: str | Path, *, device: str = "auto", dtype: str = "auto", name: str | None = None,
             language: str = "", max_new_tokens: int = 224) -> WhisperASR:
        """Load a Whisper checkpoint from a folder or a hub id (offline if HF_HUB_OFFLINE=1)."""
        from transformers import AutoProcessor, WhisperForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        generation_log = logging.getLogger("transformers.generation.utils")
        if _QUIET not in generation_log.filters:
            generation_log.addFilter(_QUIET)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        processor = AutoProcessor.from_pretrained(str(source))
        model = WhisperForConditionalGeneration.from_pretrained(str(source), dtype=torch_dtype)
        model.to(torch_device).eval()
        if not hasattr(model.generation_config, "no_timestamps_token_id"):
            raise ValueError("the speech model's generation_config has no no_timestamps_token_id "
                             "(timestamps are needed to place speech in the video)")
        label = name or (Path(source).name if os.path.isdir(source) else str(source))
        log.info("loaded speech model %s on %s (%s)", label, torch_device, str(torch_dtype).removeprefix("torch."))
        return cls(model, processor, name=label, device=torch_device, dtype=torch_dtype, language=language,
                   max_new_tokens=max_new_tokens)

    def prepare(self, audio: np.ndarray) -> PreparedWindow:
        """Log-mel features of one window of mono float audio at :attr:`sample_rate` (any thread)."""
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        limit = int(WINDOW_SEC * self.sample_rate)
        if samples.size > limit:
            raise ValueError(f"a window holds at most {WINDOW_SEC:g} s of audio, "
                             f"got {samples.size / self.sample_rate:.2f} s")
        features = self.processor.feature_extractor(samples, sampling_rate=self.sample_rate,
                                                    return_tensors="pt").input_features[0]
        return PreparedWindow(features=features, duration_sec=samples.size / self.sample_rate)

    @torch.inference_mode()
    def transcribe(self, batch: Sequence[PreparedWindow]) -> list[WindowTranscript]:
        """Transcribe windows together; row i answers batch[i] (the speech batcher's thread)."""
        if not batch:
            return []
        features = torch.stack([w.features for w in batch]).to(self.device, self.dtype)
        encoded = self.model.get_encoder()(features)
        languages: list[str] | None = None
        if self.multilingual:
            if self.language:
                languages = [self.language] * len(batch)
            else:
                names = {i: code for code, i in self._lang_ids.items()}
                languages = [names[int(i)] for i in self.model.detect_language(encoder_outputs=encoded).tolist()]
        output = self.model.generate(
            encoder_outputs=encoded, language=languages, task="transcribe" if self.multilingual else None,
            return_timestamps=True, return_segments=True, force_unique_generate_call=True,
            max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        results = []
        for row, window in enumerate(batch):
            segments = tuple(s for s in (self._segment(seg, window.duration_sec) for seg in output["segments"][row])
                             if s is not None)
            language = languages[row] if languages is not None else ("en" if not self.multilingual else None)
            results.append(WindowTranscript(language=language, segments=segments))
        return results

    def _segment(self, segment: dict, duration: float) -> tuple[float, float, str] | None:
        tokens = [int(t) for t in segment["tokens"].tolist() if int(t) < self._timestamp_begin]
        text = " ".join(strip_controls(self.processor.tokenizer.decode(tokens, skip_special_tokens=True)).split())
        start = min(max(0.0, float(segment["start"])), duration)
        end = min(max(start, float(segment["end"])), duration)
        if not text or start >= duration:
            return None
        return round(start, 3), round(end, 3), text
