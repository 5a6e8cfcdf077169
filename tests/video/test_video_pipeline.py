"""summarize_video end to end on the real tiny model, observed through a recording wrapper.

``Recording`` wraps the real engine captioner (tiny FastVLM behind the production scheduler) and
only records the calls; ``summary_override`` / ``drop_one`` inject a misbehaving model to test
the fallbacks. Caption *text* from the random model is meaningless, so text-dependent logic
(lexicon flags, extractive selection) is tested on its pure functions elsewhere.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import pytest
from PIL import Image

from fastvlm_engine.config import Settings
from fastvlm_engine.engine.scheduler import Scheduler
from fastvlm_engine.errors import InferenceFailed, InvalidVideo
from fastvlm_engine.schemas import SummarizeVideoResponse
from fastvlm_engine.video.pipeline import frame_prompt, summarize_video
from fastvlm_engine.worker.service import EngineCaptioner


@pytest.fixture(scope="module")
def engine(vlm):
    scheduler = Scheduler.from_settings(vlm, Settings()).start()
    try:
        yield EngineCaptioner(vlm, scheduler)
    finally:
        scheduler.stop()


class Recording:
    """The real engine captioner, with every call recorded (and optional injected faults)."""

    def __init__(self, engine: EngineCaptioner, *, summary_override: str | None = None,
                 drop_one: bool = False) -> None:
        self.engine = engine
        self.caption_calls: list[tuple[list[Image.Image], list[str], int]] = []
        self.caption_results: list[list[str]] = []
        self.complete_calls: list[tuple[str, int]] = []
        self._summary_override, self._drop_one = summary_override, drop_one

    async def caption(self, images: Sequence[Image.Image], prompts: Sequence[str],
                      max_new_tokens: int) -> list[str]:
        self.caption_calls.append((list(images), list(prompts), max_new_tokens))
        texts = await self.engine.caption(images, prompts, max_new_tokens)
        self.caption_results.append(texts)
        return texts[:-1] if self._drop_one else texts

    async def complete(self, prompt: str, max_new_tokens: int) -> str:
        self.complete_calls.append((prompt, max_new_tokens))
        text = await self.engine.complete(prompt, max_new_tokens)
        return text if self._summary_override is None else self._summary_override


def _run(coro):
    return asyncio.run(coro)


def test_one_caption_call_with_every_kept_frame(cut_video, settings, safety_checker, engine):
    captioner = Recording(engine)
    response = _run(summarize_video(cut_video.path, settings, captioner, model_name="test-model",
                                    safety=safety_checker))
    assert isinstance(response, SummarizeVideoResponse)
    assert len(captioner.caption_calls) == 1
    images, prompts, max_new_tokens = captioner.caption_calls[0]
    assert max_new_tokens == settings.video_caption_max_new_tokens
    assert len(images) == len(prompts) == response.frames_used == len(response.captions)
    for caption, prompt, image in zip(response.captions, prompts, images, strict=True):
        assert f"{caption.timestamp_sec:.1f}s" in prompt
        assert prompt == frame_prompt(settings.video_caption_prompt, caption.timestamp_sec)
        assert image.mode == "RGB" and image.size == (cut_video.width, cut_video.height)
        assert 0 <= caption.scene < len(response.scenes)
        start, end = response.scenes[caption.scene].start_sec, response.scenes[caption.scene].end_sec
        assert start <= caption.timestamp_sec < end
    assert response.scenes_detected == len(response.scenes) == cut_video.scene_count
    assert {c.scene for c in response.captions} == set(range(len(response.scenes)))
    # captions are the model's own output for those frames (whitespace-normalised)
    assert [c.caption for c in response.captions] == [" ".join(t.split()) for t in captioner.caption_results[0]]
    assert len({c.caption for c in response.captions}) > 1  # different frames, different text


def test_model_summary_uses_a_bounded_text_prompt(cut_video, safety_checker, engine):
    settings = Settings(video_summary_context_chars=300)
    captioner = Recording(engine, summary_override="A summary written by the model.")
    response = _run(summarize_video(cut_video.path, settings, captioner, model_name="m",
                                    safety=safety_checker))
    ((prompt, max_new_tokens),) = captioner.complete_calls
    assert max_new_tokens == settings.video_summary_max_new_tokens
    assert "[0." in prompt and len(prompt) <= 300 + 400
    assert (response.summary, response.summary_source) == ("A summary written by the model.", "model")


def test_empty_model_summary_falls_back_to_extractive(cut_video, settings, safety_checker, engine):
    response = _run(summarize_video(cut_video.path, settings, Recording(engine, summary_override="  "),
                                    model_name="m", safety=safety_checker))
    assert response.summary_source == "extractive"
    caption_words = set(re.findall(r"\w+", " ".join(c.caption for c in response.captions).lower()))
    summary_words = re.findall(r"\w+", response.summary.lower())
    assert summary_words and set(summary_words) <= caption_words  # built from the captions


def test_extractive_mode_never_asks_the_model(cut_video, safety_checker, engine):
    captioner = Recording(engine)
    response = _run(summarize_video(cut_video.path, Settings(video_summary_mode="extractive"), captioner,
                                    model_name="m", safety=safety_checker))
    assert captioner.complete_calls == []
    assert response.summary_source == "extractive" and response.summary


def test_response_fields_timings_and_tags(cut_video, settings, safety_checker, engine):
    response = _run(summarize_video(cut_video.path.read_bytes(), settings, Recording(engine), model_name="tiny",
                                    safety=safety_checker))
    assert response.model == "tiny"
    assert response.video.frames_total == cut_video.frames
    assert response.video.duration_sec == pytest.approx(cut_video.duration, abs=1e-3)
    timing = response.timing.model_dump()
    assert all(value >= 0 for value in timing.values())
    assert timing["total_sec"] >= timing["captioning_sec"]
    assert response.visual_tags and set(response.visual_tags) <= set(response.vibe_tags)
    assert all(flag.category != "nsfw" for flag in response.safety_flags)  # benign photos


def test_wrong_caption_count_is_an_inference_failure(cut_video, settings, safety_checker, engine):
    with pytest.raises(InferenceFailed):
        _run(summarize_video(cut_video.path, settings, Recording(engine, drop_one=True), model_name="m",
                             safety=safety_checker))


def test_bad_input_fails_before_the_model(corrupt_video, settings, safety_checker, engine):
    captioner = Recording(engine)
    with pytest.raises(InvalidVideo):
        _run(summarize_video(corrupt_video.path, settings, captioner, model_name="m", safety=safety_checker))
    assert captioner.caption_calls == [] and captioner.complete_calls == []


def test_frame_prompt_replaces_only_the_timestamp():
    assert frame_prompt("At {timestamp}: describe {this}.", 12.44) == "At 12.4s: describe {this}."


def test_cancelling_the_request_stops_the_decoding_thread(lying_video, settings, safety_checker, engine):
    import threading

    from fastvlm_engine.video.analysis import AnalysisCancelled, analyze_video

    stop = threading.Event()
    stop.set()
    with pytest.raises(AnalysisCancelled):
        analyze_video(lying_video.path, settings, stop=stop)

    async def cancel_soon():
        task = asyncio.ensure_future(summarize_video(lying_video.path, settings, Recording(engine),
                                                     model_name="m", safety=safety_checker))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(cancel_soon())
