"""The continuous-batching scheduler on the real tiny model: exactness against FastVLM.generate,
joins and leaves at every step, sampling, stop strings, cancellation, deadlines, failures, progress."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from fastvlm_engine.engine.kv import KVCapacity, kv_bytes_per_token
from fastvlm_engine.engine.model import PreparedInput
from fastvlm_engine.engine.sampling import SamplingParams
from fastvlm_engine.engine.scheduler import Scheduler, StepInfo
from fastvlm_engine.errors import (
    ContextTooLong,
    InferenceFailed,
    InferenceTimeout,
    NotReady,
    QueueFull,
    ShuttingDown,
)
from tests.helpers.images import PHOTOS, photo

PROMPTS = ("Describe the image.", "Hi", "What colour is the largest object?", "Describe.", "What is shown?",
           "Tell me a story.", "Caption it.")


@pytest.fixture(scope="module")
def images():
    return [photo(name) for name in PHOTOS]


@pytest.fixture(scope="module")
def mixed(vlm, images):
    """Images and text-only prompts of different lengths and limits, with their reference generations."""
    items = []
    for n, prompt in enumerate(PROMPTS):
        for i, image in enumerate(images):
            items.append(vlm.prepare(image, prompt, 20 + 9 * ((n + i) % 7)))
        items.append(vlm.prepare(None, prompt, 12 + 11 * (n % 5)))
    reference = [vlm.generate([item])[0] for item in items]
    return items, reference


def make(vlm, *, sequences: int = 8, context: int = 512, **kwargs) -> Scheduler:
    config = vlm.model.config.text_config
    capacity = KVCapacity(sequences=sequences, context_tokens=context,
                          bytes_per_token=kv_bytes_per_token(config, vlm.dtype))
    return Scheduler(vlm, capacity, **kwargs)


def run_together(scheduler: Scheduler, items) -> list:
    """Queue every item before the inference thread starts (so they arrive together), then collect."""
    handles = [scheduler.submit(item) for item in items]
    scheduler.start()
    try:
        return [handle.wait(120) for handle in handles]
    finally:
        scheduler.stop()


class Gate:
    """A before_step hook that holds the inference thread at a chosen step until released."""

    def __init__(self, at_step: int = 1) -> None:
        self.at_step = at_step
        self.calls = 0
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.at_step:
            self.reached.set()
            if not self.release.wait(60):
                raise RuntimeError("gate never released")


def test_many_concurrent_requests_match_generate_exactly(vlm, mixed):
    items, reference = mixed
    assert len({r.prompt_tokens for r in reference}) > 3  # prompts of different lengths
    eos_lengths = {len(r.token_ids) for r in reference if r.finish_reason == "stop"}
    assert len(eos_lengths) >= 3  # sequences end on EOS at different steps
    scheduler = make(vlm, sequences=8).start()
    try:
        handles = [scheduler.submit(item) for item in items]
        results = [h.wait(120) for h in handles]
    finally:
        scheduler.stop()
    assert [r.token_ids for r in results] == [g.token_ids for g in reference]
    assert [r.text for r in results] == [g.text for g in reference]
    assert [r.finish_reason for r in results] == [g.finish_reason for g in reference]
    assert [r.prompt_tokens for r in results] == [g.prompt_tokens for g in reference]
    assert max(r.batch_size for r in results) > 1
    assert all(1 <= r.batch_size <= 8 for r in results)
    stats = scheduler.stats()
    assert stats.completed == len(items) and stats.active == 0 and stats.kv_tokens_in_use == 0


def test_a_request_joins_at_every_step_and_results_stay_exact(vlm, mixed):
    """The step hook submits the next request before every model step: joins happen mid-flight at
    each step while earlier requests leave at their own lengths or EOS."""
    items, reference = mixed
    order = list(range(0, len(items), 2))[:14]
    handles = {}
    scheduler: Scheduler | None = None
    pending = list(order)

    def join_next() -> None:
        if pending:
            index = pending.pop(0)
            handles[index] = scheduler.submit(items[index])

    scheduler = make(vlm, sequences=6, before_step=join_next)
    first = pending.pop(0)
    handles[first] = scheduler.submit(items[first])
    scheduler.start()
    try:
        deadline = time.monotonic() + 120
        while (pending or len(handles) < len(order)) and time.monotonic() < deadline:
            time.sleep(0.01)
        results = {index: handle.wait(120) for index, handle in handles.items()}
    finally:
        scheduler.stop()
    assert sorted(results) == sorted(order)
    for index in order:
        assert results[index].token_ids == reference[index].token_ids, index
        assert results[index].text == reference[index].text
    assert any(results[i].queue_s > 0 for i in order)


def test_requests_wait_for_free_slots_and_small_prefill_budgets(vlm, mixed):
    items, reference = mixed
    results = run_together(make(vlm, sequences=2, max_prefill_tokens=1), items[:7])  # one arrival per prefill
    assert [r.token_ids for r in results] == [g.token_ids for g in reference[:7]]
    assert all(r.batch_size <= 2 for r in results)


def test_a_request_alone_runs_at_batch_size_one_with_consistent_timing(vlm, mixed):
    items, reference = mixed
    scheduler = make(vlm).start()
    try:
        result = scheduler.submit(items[0]).wait(60)
    finally:
        scheduler.stop()
    assert result.token_ids == reference[0].token_ids
    assert result.batch_size == 1
    assert result.steps == len(result.token_ids) + (result.finish_reason == "stop")
    assert 0 <= result.queue_s <= result.ttft_s
    assert result.inference_s >= result.ttft_s - result.queue_s
    assert result.completion_tokens == len(result.token_ids)


def test_async_generate_streams_deltas_that_add_up_to_the_text(vlm, mixed):
    items, reference = mixed

    async def run(scheduler):
        async def one(item, delay):
            await asyncio.sleep(delay)
            handle = scheduler.submit(item)
            parts = [delta async for delta in handle.stream()]
            return parts, await handle.result()

        return await asyncio.gather(*(one(item, 0.002 * i) for i, item in enumerate(items[:10])))

    scheduler = make(vlm).start()
    try:
        outcomes = asyncio.run(run(scheduler))
    finally:
        scheduler.stop()
    for (parts, result), expected in zip(outcomes, reference[:10], strict=True):
        assert result.token_ids == expected.token_ids
        assert "".join(parts) == result.text == expected.text
        assert all(parts)  # no empty deltas
    assert any(len(parts) > 1 for parts, _ in outcomes)


def test_a_late_stream_still_adds_up_and_a_stream_is_consumed_once(vlm, mixed):
    items, reference = mixed

    async def run(scheduler):
        handle = scheduler.submit(items[3])
        result = await handle.result()
        parts = [delta async for delta in handle.stream()]
        with pytest.raises(RuntimeError, match="once"):
            await handle.stream().__anext__()
        return parts, result

    scheduler = make(vlm).start()
    try:
        parts, result = asyncio.run(run(scheduler))
    finally:
        scheduler.stop()
    assert result.token_ids == reference[3].token_ids
    assert "".join(parts) == result.text == reference[3].text


def test_a_disconnected_stream_consumer_cancels_its_request(vlm, mixed):
    items, reference = mixed
    scheduler = make(vlm, context=1024).start()

    async def run():
        handle = scheduler.submit(items[0], SamplingParams(max_new_tokens=700))

        async def consume():
            async for _ in handle.stream():
                pass

        task = asyncio.create_task(consume())
        while scheduler.stats().steps < 4:
            await asyncio.sleep(0.005)
        task.cancel()  # what the HTTP server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.CancelledError):
            await handle.result()

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
        after = scheduler.submit(items[1]).wait(60)
        stats = scheduler.stats()
    finally:
        scheduler.stop()
    assert stats.cancelled == 1 and stats.active == 0
    assert after.token_ids == reference[1].token_ids


def test_generate_many_keeps_order_and_cancels_the_rest_when_one_submit_fails(vlm, mixed):
    items, reference = mixed
    too_long = PreparedInput(input_ids=items[0].input_ids, pixel_values=items[0].pixel_values, max_new_tokens=1000)
    gate = Gate(at_step=1)
    scheduler = make(vlm, context=256, before_step=gate).start()
    try:
        with pytest.raises(ContextTooLong):
            asyncio.run(scheduler.generate_many([items[1], items[2], too_long, items[3]]))
        gate.release.set()
        results = asyncio.run(scheduler.generate_many(items[:5]))
    finally:
        gate.release.set()
        scheduler.stop()
    assert [r.token_ids for r in results] == [g.token_ids for g in reference[:5]]
    assert scheduler.stats().cancelled == 2


def test_seeded_sampling_is_reproducible_alone_and_inside_a_batch(vlm, mixed):
    items, _ = mixed
    target = items[1]
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_new_tokens=30)
    scheduler = make(vlm).start()
    try:
        alone = scheduler.submit(target, params).wait(60)
        again = scheduler.submit(target, params).wait(60)
        crowd = [scheduler.submit(item) for item in items[4:10]]
        inside = scheduler.submit(target, params)
        crowd += [scheduler.submit(item, SamplingParams(temperature=1.0, seed=7)) for item in items[10:13]]
        inside = inside.wait(60)
        crowd_results = [h.wait(60) for h in crowd]
        other_seeds = {scheduler.submit(target, SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=seed,
                                                               max_new_tokens=30)).wait(60).token_ids
                       for seed in range(5)}
        greedy = scheduler.submit(target, SamplingParams(max_new_tokens=30)).wait(60)
    finally:
        scheduler.stop()
    assert alone.token_ids == again.token_ids == inside.token_ids
    assert inside.batch_size > 1
    assert max(r.batch_size for r in crowd_results) > 1
    assert len(other_seeds | {alone.token_ids}) > 1  # the seed matters
    assert greedy.token_ids != alone.token_ids or greedy.finish_reason != alone.finish_reason


def test_repetition_penalty_changes_greedy_output_deterministically(vlm, mixed):
    items, reference = mixed
    index = max(range(len(items)), key=lambda i: len(reference[i].token_ids))
    params = SamplingParams(repetition_penalty=1.8)
    scheduler = make(vlm).start()
    try:
        first = scheduler.submit(items[index], params).wait(60)
        second = scheduler.submit(items[index], params).wait(60)
    finally:
        scheduler.stop()
    assert first.token_ids == second.token_ids
    assert first.token_ids != reference[index].token_ids
    repeats = len(reference[index].token_ids) - len(set(reference[index].token_ids))
    assert len(first.token_ids) - len(set(first.token_ids)) <= repeats


def test_stop_strings_end_generation_and_are_cut(vlm, mixed):
    items, reference = mixed
    index, stop = next((i, g.text[12:14]) for i, g in enumerate(reference)
                       if len(g.text) > 20 and g.text[12:14].strip() == g.text[12:14])
    expected_text = reference[index].text[:reference[index].text.find(stop)].strip()

    async def run(scheduler):
        handle = scheduler.submit(items[index], SamplingParams(stop=(stop, "\x00never\x00")))
        parts = [delta async for delta in handle.stream()]
        return parts, await handle.result()

    scheduler = make(vlm).start()
    try:
        parts, result = asyncio.run(run(scheduler))
    finally:
        scheduler.stop()
    assert result.finish_reason == "stop"
    assert result.text == expected_text
    assert "".join(parts) == expected_text
    assert len(result.token_ids) < len(reference[index].token_ids)
    assert result.token_ids == reference[index].token_ids[:len(result.token_ids)]


def test_invalid_sampling_values_raise_before_queueing(vlm, mixed):
    items, _ = mixed
    scheduler = make(vlm)
    for params, field in [(SamplingParams(temperature=-1), "temperature"), (SamplingParams(top_p=0), "top_p"),
                          (SamplingParams(top_k=-2), "top_k"), (SamplingParams(seed=-1), "seed"),
                          (SamplingParams(stop=("",)), "stop"), (SamplingParams(max_new_tokens=0), "max_new_tokens"),
                          (SamplingParams(repetition_penalty=0), "repetition_penalty")]:
        with pytest.raises(ValueError, match=f"^{field}"):
            scheduler.submit(items[0], params)
    assert scheduler.stats().waiting == 0


def test_requests_too_large_for_a_slot_fail_fast(vlm, mixed):
    items, _ = mixed
    scheduler = make(vlm, context=items[0].prompt_tokens + 10)
    with pytest.raises(ContextTooLong) as caught:
        scheduler.submit(items[0], SamplingParams(max_new_tokens=11))
    assert caught.value.http_status == 400 and caught.value.code == "context_length_exceeded"
    assert str(items[0].prompt_tokens) in caught.value.message
    scheduler.submit(items[0], SamplingParams(max_new_tokens=10))  # exactly fits
    assert scheduler.stats().waiting == 1


def test_cancel_frees_the_slot_of_a_running_request_and_withdraws_a_queued_one(vlm, mixed):
    items, reference = mixed
    scheduler = make(vlm, sequences=1, context=1024).start()
    try:
        long = scheduler.submit(items[0], SamplingParams(max_new_tokens=600))
        queued = scheduler.submit(items[1])
        bounded = time.monotonic() + 60
        while scheduler.stats().steps < 5 and time.monotonic() < bounded:
            time.sleep(0.005)
        in_use = scheduler.stats().kv_tokens_in_use
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            queued.wait(10)
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            long.wait(30)
        after = scheduler.stats()
        follow_up = scheduler.submit(items[2]).wait(60)
    finally:
        scheduler.stop()
    assert in_use > items[0].prompt_tokens
    assert after.active == 0 and after.kv_tokens_in_use == 0 and after.waiting == 0
    assert after.cancelled == 2
    assert follow_up.token_ids == reference[2].token_ids


def test_cancelling_the_awaiting_task_cancels_the_request(vlm, mixed):
    items, _ = mixed
    scheduler = make(vlm, context=1024).start()

    async def run():
        task = asyncio.create_task(scheduler.generate(items[0], SamplingParams(max_new_tokens=700)))
        while scheduler.stats().steps < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
        bounded = time.monotonic() + 30
        while scheduler.stats().active and time.monotonic() < bounded:
            time.sleep(0.005)
        stats = scheduler.stats()
    finally:
        scheduler.stop()
    assert stats.cancelled == 1 and stats.active == 0


def test_a_queued_request_past_its_deadline_times_out_without_running(vlm, mixed):
    items, reference = mixed
    gate = Gate(at_step=1)
    scheduler = make(vlm, before_step=gate).start()
    try:
        first = scheduler.submit(items[0])
        assert gate.reached.wait(30)
        late = scheduler.submit(items[1], deadline=time.monotonic() - 1.0)
        gate.release.set()
        with pytest.raises(InferenceTimeout):
            late.wait(30)
        assert first.wait(60).token_ids == reference[0].token_ids
    finally:
        gate.release.set()
        scheduler.stop()
    assert scheduler.stats().failed == 1


def test_a_running_request_past_its_deadline_is_stopped_with_a_timeout(vlm, mixed):
    """The step hook holds step 4 until the deadline has passed; the next turn must stop the request."""
    items, reference = mixed
    deadline = time.monotonic() + 1.5  # room to be admitted first, even on a loaded machine
    calls = [0]

    def pass_the_deadline_at_step_4() -> None:
        calls[0] += 1
        if calls[0] == 4:
            bounded = time.monotonic() + 30
            while time.monotonic() <= deadline and time.monotonic() < bounded:
                time.sleep(0.005)

    scheduler = make(vlm, context=1024, before_step=pass_the_deadline_at_step_4)
    doomed = scheduler.submit(items[0], SamplingParams(max_new_tokens=600), deadline=deadline)
    other = scheduler.submit(items[1])
    scheduler.start()
    try:
        with pytest.raises(InferenceTimeout, match="ran past its deadline"):
            doomed.wait(60)
        assert other.wait(60).token_ids == reference[1].token_ids
    finally:
        scheduler.stop()
    assert scheduler.stats().kv_tokens_in_use == 0


def test_queue_full_and_stop_answer_everyone(vlm, mixed):
    items, _ = mixed
    gate = Gate(at_step=1)
    scheduler = make(vlm, sequences=1, max_queue_size=1, before_step=gate).start()
    running = scheduler.submit(items[0])
    assert gate.reached.wait(30)
    queued = scheduler.submit(items[1])
    with pytest.raises(QueueFull):
        scheduler.submit(items[2])
    stopper = threading.Thread(target=scheduler.stop)
    stopper.start()
    gate.release.set()
    stopper.join(60)
    with pytest.raises(ShuttingDown):
        queued.wait(10)
    with pytest.raises(ShuttingDown):
        running.wait(10)
    with pytest.raises(ShuttingDown):
        scheduler.submit(items[0])
    assert not scheduler.alive


def _bad_input(item: PreparedInput) -> PreparedInput:
    return PreparedInput(input_ids=item.input_ids, pixel_values=item.pixel_values[:, :2],
                         max_new_tokens=item.max_new_tokens)


def test_a_model_failure_fails_only_its_own_request(vlm, mixed):
    items, reference = mixed
    scheduler = make(vlm)
    good_before = [scheduler.submit(item) for item in items[1:3]]
    bad = scheduler.submit(_bad_input(items[0]))
    good_after = [scheduler.submit(item) for item in items[3:5]]  # items[4] is text-only
    scheduler.start()  # all five arrive in one prefill, which fails and is retried per request
    try:
        with pytest.raises(InferenceFailed) as caught:
            bad.wait(60)
        results = [h.wait(60) for h in [*good_before, *good_after]]
        later = scheduler.submit(items[5]).wait(60)
    finally:
        scheduler.stop()
    assert caught.value.code == "inference_failed" and caught.value.http_status == 500
    assert "channel" not in caught.value.message  # the model's own message stays in the log
    assert [r.token_ids for r in results] == [g.token_ids for g in reference[1:5]]
    assert later.token_ids == reference[5].token_ids
    assert scheduler.stats().failed == 1


def test_a_transient_decode_failure_is_retried_per_sequence_without_changing_tokens(vlm, mixed):
    items, reference = mixed
    calls = [0]

    def fail_once() -> None:
        calls[0] += 1
        if calls[0] == 6:
            raise RuntimeError("transient failure in a decode step")

    results = run_together(make(vlm, before_step=fail_once), items[:4])
    assert [r.token_ids for r in results] == [g.token_ids for g in reference[:4]]
    assert calls[0] > 6


def test_a_fatal_device_error_calls_the_hook_and_fails_everything(vlm, mixed):
    items, _ = mixed
    seen: list[BaseException] = []
    calls = [0]

    def oom_at_step_3() -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    scheduler = make(vlm, before_step=oom_at_step_3, on_fatal=seen.append)
    handles = [scheduler.submit(item) for item in items[:3]]
    scheduler.start()
    try:
        for handle in handles:
            with pytest.raises(InferenceFailed):
                handle.wait(60)
        bounded = time.monotonic() + 30
        while scheduler.alive and time.monotonic() < bounded:
            time.sleep(0.005)
        with pytest.raises(NotReady):
            scheduler.submit(items[0])
    finally:
        scheduler.stop()
    assert len(seen) == 1 and isinstance(seen[0], torch.OutOfMemoryError)
    assert not scheduler.alive


def test_the_step_counter_advances_during_a_long_generation(vlm, mixed):
    items, _ = mixed
    observed: list[StepInfo] = []
    scheduler = make(vlm, context=1024, step_observers=[observed.append]).start()
    try:
        handle = scheduler.submit(items[1], SamplingParams(max_new_tokens=400))
        samples = []
        bounded = time.monotonic() + 120
        while not handle.done and time.monotonic() < bounded:
            stats = scheduler.stats()
            if stats.active:
                samples.append(stats.steps)
            time.sleep(0.01)
        result = handle.wait(60)
    finally:
        scheduler.stop()
    assert samples == sorted(samples) and len(set(samples)) > 2
    assert scheduler.stats().steps == result.steps
    assert [info.kind for info in observed[:2]] == ["prefill", "decode"]
    assert scheduler.stats().last_step_at is not None


def test_from_settings_sizes_the_cache_from_memory_and_settings(vlm):
    from fastvlm_engine.config import Settings

    scheduler = Scheduler.from_settings(vlm, Settings(engine_max_sequences=3, engine_max_context_tokens=300,
                                                      max_queue_size=5))
    assert scheduler.capacity().sequences == 3
    assert scheduler.capacity().context_tokens == 300
    assert scheduler.capacity().tokens == 900
    assert scheduler.max_queue_size == 5
    assert not scheduler.fast_path


def test_the_fast_path_setting_is_ignored_on_cpu(vlm, mixed, caplog):
    items, reference = mixed
    scheduler = make(vlm, fast_path=True).start()
    try:
        result = scheduler.submit(items[0]).wait(60)
    finally:
        scheduler.stop()
    assert not scheduler.fast_path
    assert "fast_path" in caplog.text
    assert result.token_ids == reference[0].token_ids


def test_the_real_256_image_token_shape_matches_generate(tmp_path_factory, images):
    """1024 px images give FastVLM's real 256 image tokens per prompt; arrivals share one vision batch."""
    from fastvlm_engine.engine.model import FastVLM
    from fastvlm_engine.engine.tiny import build_tiny_model

    torch.set_num_threads(1)
    large = FastVLM.load(build_tiny_model(tmp_path_factory.mktemp("tiny-1024"), image_size=1024), device="cpu")
    items = [large.prepare(image, prompt, 10) for image, prompt in zip(images, PROMPTS, strict=False)]
    items.append(large.prepare(None, "Hi", 6))
    assert int((items[0].input_ids == large.model.config.image_token_id).sum()) == 256
    reference = [large.generate([item])[0] for item in items]
    results = run_together(make(large, context=400), items)
    assert [r.token_ids for r in results] == [g.token_ids for g in reference]
    assert results[0].batch_size > 1
