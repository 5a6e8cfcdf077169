"""The speech engine on the real code path: a tiny random Whisper, saved and loaded like a checkpoint.

Its words are meaningless; these tests check the loader, the vocabulary layout Whisper's
generate relies on, batching, determinism, audio-dependence, the window limit and that
segment times are confined to the audio a window really holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastvlm_engine.engine.batcher import Batcher
from fastvlm_engine.engine.tiny_whisper import TINY_ASR_LANGUAGES
from fastvlm_engine.engine.whisper import WINDOW_SEC, WhisperASR
from fastvlm_engine.worker.service import EngineTranscriber
from tests.fixtures.social import speech_like

RATE = 16_000


def _windows() -> list[np.ndarray]:
    return [speech_like(seconds, RATE, seed=seed) for seed, seconds in enumerate((4.0, 11.5, 29.0, 2.0))]


def test_tiny_whisper_is_a_native_checkpoint(tiny_asr_dir, asr):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer

    files = {p.name for p in Path(tiny_asr_dir).iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "processor_config.json"} <= files
    assert isinstance(asr.model, WhisperForConditionalGeneration)
    assert isinstance(asr.processor, WhisperProcessor) and isinstance(asr.processor.tokenizer, WhisperTokenizer)
    generation = asr.model.generation_config
    tok = asr.processor.tokenizer
    # Whisper's generate treats every id above <|notimestamps|> as a timestamp: 1501 of them, 20 ms apart.
    assert len(tok) - (generation.no_timestamps_token_id + 1) == 1501
    assert tok.convert_ids_to_tokens(generation.no_timestamps_token_id + 1) == "<|0.00|>"
    assert tok.convert_ids_to_tokens(len(tok) - 1) == "<|30.00|>"
    assert asr.model.config.vocab_size == len(tok)
    assert set(asr._lang_ids) == set(TINY_ASR_LANGUAGES) and asr.multilingual
    assert asr.sample_rate == RATE and asr.device.type == "cpu" and asr.dtype == torch.float32


def test_batch_equals_single_and_is_deterministic(asr):
    items = [asr.prepare(w) for w in _windows()]
    together = asr.transcribe(items)
    alone = [asr.transcribe([item])[0] for item in items]
    assert together == alone
    assert asr.transcribe(items) == together


def test_transcript_depends_on_the_audio(asr):
    results = asr.transcribe([asr.prepare(w) for w in _windows()])
    assert len({(r.language, r.segments) for r in results}) > 1


def test_segments_stay_inside_the_audio_of_their_window(asr):
    items = [asr.prepare(w) for w in _windows()]
    raw = asr.model.generate(encoder_outputs=asr.model.get_encoder()(torch.stack([i.features for i in items])),
                             language=[r.language for r in asr.transcribe(items)], task="transcribe",
                             return_timestamps=True, return_segments=True, force_unique_generate_call=True,
                             max_new_tokens=asr.max_new_tokens)
    for item, result, segments in zip(items, asr.transcribe(items), raw["segments"], strict=True):
        starting_inside = [s for s in segments if float(s["start"]) < item.duration_sec]
        assert len(result.segments) <= len(starting_inside)  # those past the audio are dropped
        for start, end, text in result.segments:
            assert 0.0 <= start <= end <= item.duration_sec and text == " ".join(text.split()) and text
    assert any(result.segments for result in asr.transcribe(items))


def test_language_setting_is_checked_and_forces_the_language(tiny_asr_dir):
    with pytest.raises(ValueError, match="language"):
        WhisperASR.load(tiny_asr_dir, device="cpu", language="tlh")
    german = WhisperASR.load(tiny_asr_dir, device="cpu", language="de", max_new_tokens=8)
    assert {r.language for r in german.transcribe([german.prepare(w) for w in _windows()])} == {"de"}


def test_a_window_holds_at_most_30_seconds(asr):
    asr.prepare(np.zeros(int(WINDOW_SEC * RATE), np.float32))
    with pytest.raises(ValueError, match="at most"):
        asr.prepare(np.zeros(int(WINDOW_SEC * RATE) + 1, np.float32))


def test_windows_share_generate_calls_through_the_speech_batcher(asr):
    import asyncio

    calls: list[int] = []

    def run(batch):
        calls.append(len(batch))
        return asr.transcribe(batch)

    batcher = Batcher(run, max_batch_size=3, max_batch_wait_s=0.5, name="asr").start()
    try:
        engine = EngineTranscriber(asr, batcher)
        results = asyncio.run(engine.transcribe(_windows()))
    finally:
        batcher.stop()
    assert len(results) == 4 and sum(calls) == 4
    assert max(calls) == 3 and len(calls) == 2  # 4 windows, at most 3 per call
    assert results == asr.transcribe([asr.prepare(w) for w in _windows()])
