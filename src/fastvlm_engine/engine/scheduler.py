"""Iteration-level (continuous) batching: one inference thread, one decode step at a time.

Each turn of the inference thread
1. frees the slots of sequences that were cancelled or ran past their deadline, and answers queued
   requests whose deadline passed (:class:`~fastvlm_engine.errors.InferenceTimeout`);
2. admits queued requests in arrival order while KV slots are free (at most
   ``max_prefill_tokens`` padded prompt tokens per turn, always at least one) and prefills them
   together: vision tower + projector over their images at once, then their prompts;
3. runs one decode step over every running sequence, so new arrivals join at the next step;
4. retires each sequence that produced an end-of-sequence token, reached its limit or a stop
   string, freeing its slot at once.
Images, video frames and text-only prompts all go through this one loop.

A failing model call is retried one request at a time, so a bad input fails only its own request
(:class:`~fastvlm_engine.errors.InferenceFailed`). Out-of-memory and CUDA errors
(:func:`~fastvlm_engine.engine.model.is_fatal_device_error`) leave the device unusable: the
``on_fatal`` hook runs (the worker exits there), every request fails and the scheduler stops.

Health reads :meth:`Scheduler.stats`: ``steps`` grows with every model step, so a long generation
that makes progress is never mistaken for a hang, while a step that hangs is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..config import MiB, Settings
from ..errors import ContextTooLong, InferenceFailed, InferenceTimeout, NotReady, QueueFull, ShuttingDown
from .detokenize import IncrementalDetokenizer, decode_text
from .handle import GenerationResult, RequestHandle
from .kv import KVCapacity, SlotKVCache, kv_memory_budget, plan_capacity
from .model import FastVLM, PreparedInput, is_fatal_device_error
from .runner import DecoderRunner
from .sampling import SamplingParams, TokenSampler, choose_tokens

__all__ = ["Scheduler", "SchedulerStats", "StepInfo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInfo:
    """What one model step did, for observers (metrics)."""

    kind: Literal["prefill", "decode"]
    sequences: int
    seconds: float


def _default(name: str) -> Any:
    """A setting's default, so the constructor's defaults and the settings never disagree."""
    field_info = Settings.model_fields[name]
    return field_info.default_factory() if field_info.default_factory is not None else field_info.default


StepObserver = Callable[[StepInfo], None]
"""Called on the inference thread after each step; failures are logged, never raised."""


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot for health checks; ``*_at`` values are ``time.monotonic()``."""

    steps: int
    last_step_at: float | None
    step_started_at: float | None  # set while a model step runs
    active: int
    waiting: int
    kv_tokens_in_use: int  # tokens held in the running sequences' slots
    kv_tokens_reserved: int  # prompt + max_new_tokens of the running sequences
    kv_token_capacity: int
    sequence_capacity: int
    completed: int
    failed: int
    cancelled: int
    alive: bool

    @property
    def has_work(self) -> bool:
        return self.active + self.waiting > 0


@dataclass(eq=False)
class _Sequence:
    handle: RequestHandle
    prepared: PreparedInput
    params: SamplingParams
    max_new_tokens: int
    submitted_at: float
    queue_deadline: float
    run_deadline: float | None
    sampler: TokenSampler | None = None
    detokenizer: IncrementalDetokenizer | None = None
    tokens: list[int] = field(default_factory=list)
    row: int = -1
    length: int = 0  # positions written in the KV slot
    scheduled_at: float = 0.0
    first_token_at: float | None = None
    sequences_seen: int = 0  # sum over this request's steps of the sequences in the step
    steps: int = 0
    streamed: str = ""
    finish_reason: Literal["stop", "length"] | None = None
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def reserved_tokens(self) -> int:
        return self.prepared.prompt_tokens + self.max_new_tokens

    @property
    def ended(self) -> bool:
        return self.finish_reason is not None or self.error is not None or self.cancelled


class Scheduler:
    """Continuous batching over one loaded :class:`FastVLM`; see the module docstring."""

    def __init__(self, vlm: FastVLM, capacity: KVCapacity, *, max_queue_size: int = _default("max_queue_size"),
                 queue_timeout_s: float = _default("inference_timeout_s"),
                 max_prefill_tokens: int = _default("engine_max_prefill_tokens"),
                 fast_path: bool = _default("engine_fast_path"),
                 graph_batch_sizes: Sequence[int] = tuple(_default("cuda_graph_batch_sizes")),
                 before_step: Callable[[], None] | None = None,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 step_observers: Sequence[StepObserver] = (), name: str = "inference") -> None:
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be at least 1")
        if queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be positive")
        if max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be at least 1")
        self.vlm = vlm
        self._capacity = capacity
        self.max_queue_size = max_queue_size
        self.queue_timeout_s = queue_timeout_s
        self.max_prefill_tokens = max_prefill_tokens
        self._eos = frozenset(vlm.eos_ids)
        self._before_step = before_step
        self._on_fatal = on_fatal
        self._observers = tuple(step_observers)
        config = vlm.model.config.text_config
        fast = fast_path and vlm.device.type == "cuda"
        if fast_path and not fast:
            log.warning("engine_fast_path is set but the model is on %s; using the standard path", vlm.device)
        heads = config.num_attention_heads
        self._cache = SlotKVCache(
            capacity, layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            dtype=vlm.dtype, device=vlm.device, preallocate=fast)
        self._runner = DecoderRunner(vlm.model, self._cache, channels_last=fast)
        self._decode = self._runner.decode
        self.fast_path = fast
        if fast:
            from .fast_path import GraphedDecoder, use_channels_last_vision

            use_channels_last_vision(vlm.model)
            self._decode = GraphedDecoder(self._runner, graph_batch_sizes).decode
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # index == KV row
        self._closed = False
        self._fatal: BaseException | None = None
        self._steps = 0
        self._last_step_at: float | None = None
        self._step_started_at: float | None = None
        self._counts = {"completed": 0, "failed": 0, "cancelled": 0}
        self._count_lock = threading.Lock()  # counts change on the inference thread and on callers' threads
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    @classmethod
    def from_settings(cls, vlm: FastVLM, settings: Settings, **hooks) -> Scheduler:
        """Size the KV cache from the memory this worker has and build a scheduler with the settings.

        ``hooks`` pass through: ``before_step``, ``on_fatal``, ``step_observers``, ``name``.
        """
        budget = kv_memory_budget(vlm.device, memory_fraction=settings.kv_cache_memory_fraction,
                                  reserve_bytes=settings.kv_cache_reserve_mib * MiB)
        capacity = plan_capacity(vlm.model.config.text_config, vlm.dtype, budget,
                                 max_sequences=settings.engine_max_sequences,
                                 max_context_tokens=settings.engine_max_context_tokens)
        log.info("KV cache: %d sequences x %d tokens (%.1f MiB of a %.1f MiB budget)", capacity.sequences,
                 capacity.context_tokens, capacity.bytes / MiB, budget / MiB)
        return cls(vlm, capacity, max_queue_size=settings.max_queue_size,
                   queue_timeout_s=settings.inference_timeout_s,
                   max_prefill_tokens=settings.engine_max_prefill_tokens, fast_path=settings.engine_fast_path,
                   graph_batch_sizes=settings.cuda_graph_batch_sizes, **hooks)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Refuse new work, answer queued and running requests with ShuttingDown, join the thread."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._abort_all(ShuttingDown("The worker is shutting down."))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- submitting ---------------------------------------------------------------------------------

    def submit(self, prepared: PreparedInput, params: SamplingParams | None = None, *,
               deadline: float | None = None) -> RequestHandle:
        """Queue one request (thread-safe). ``deadline`` is a ``time.monotonic()`` instant for the whole
        request; independently, a request still queued after ``queue_timeout_s`` times out.

        Raises ValueError (invalid sampling values, message starts with the field), ContextTooLong,
        QueueFull, ShuttingDown, or NotReady after a fatal device error.
        """
        params = params or SamplingParams()
        max_new = params.max_new_tokens if params.max_new_tokens is not None else prepared.max_new_tokens
        if isinstance(max_new, int) and prepared.prompt_tokens + max_new > self._capacity.context_tokens:
            max_new_limit = max_new  # too long for any slot: that is ContextTooLong (400), checked below
        else:
            max_new_limit = self._capacity.context_tokens
        params = params.validate(max_new_limit)
        if max_new < 1:
            raise ValueError("max_new_tokens: must be at least 1")
        needed = prepared.prompt_tokens + max_new
        if needed > self._capacity.context_tokens:
            raise ContextTooLong(
                f"The prompt ({prepared.prompt_tokens} tokens) plus max_new_tokens ({max_new}) need {needed} "
                f"tokens; this worker holds at most {self._capacity.context_tokens} per request.")
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        now = time.monotonic()
        handle = RequestHandle(next(self._ids), loop, self._cancel)
        queue_deadline = now + self.queue_timeout_s
        sequence = _Sequence(handle=handle, prepared=prepared, params=params, max_new_tokens=max_new,
                             submitted_at=now, run_deadline=deadline,
                             queue_deadline=min(queue_deadline, deadline) if deadline is not None else queue_deadline)
        with self._lock:
            if self._fatal is not None:
                raise NotReady("The inference engine stopped after a device error.")
            if self._closed:
                raise ShuttingDown("The worker is shutting down.")
            if len(self._waiting) >= self.max_queue_size:
                raise QueueFull(f"The inference queue is full ({self.max_queue_size} requests).")
            self._waiting.append(sequence)
            self._wake.notify()
        return handle

    async def generate(self, prepared: PreparedInput, params: SamplingParams | None = None, *,
                       deadline: float | None = None) -> GenerationResult:
        """Submit and await; cancelling the awaiting task cancels the request."""
        handle = self.submit(prepared, params, deadline=deadline)
        try:
            return await handle.result()
        except asyncio.CancelledError:
            handle.cancel()
            raise

    async def generate_many(self, items: Sequence[PreparedInput], params: SamplingParams | None = None, *,
                            deadline: float | None = None) -> list[GenerationResult]:
        """Submit all (e.g. a video's frames) so they share steps; results in order. If one submit or
        request fails, or the awaiting task is cancelled, the others are cancelled."""
        handles: list[RequestHandle] = []
        try:
            for item in items:
                handles.append(self.submit(item, params, deadline=deadline))
            return list(await asyncio.gather(*(handle.result() for handle in handles)))
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise

    def _cancel(self, handle: RequestHandle) -> None:
        with self._lock:
            for sequence in self._waiting:
                if sequence.handle is handle:
                    self._waiting.remove(sequence)
                    self._count("cancelled")
                    handle.mark_cancelled()
                    return
            self._wake.notify()  # running: its slot is freed at the next turn

    # --- reading ------------------------------------------------------------------------------------

    def capacity(self) -> KVCapacity:
        """What this worker can hold (sequences, tokens per sequence, tokens): report it to the router."""
        return self._capacity

    def stats(self) -> SchedulerStats:
        running = list(self._running)
        return SchedulerStats(
            steps=self._steps, last_step_at=self._last_step_at, step_started_at=self._step_started_at,
            active=len(running), waiting=len(self._waiting),
            kv_tokens_in_use=sum(s.length for s in running), kv_tokens_reserved=sum(s.reserved_tokens for s in running),
            kv_token_capacity=self._capacity.tokens, sequence_capacity=self._capacity.sequences,
            completed=self._counts["completed"], failed=self._counts["failed"], cancelled=self._counts["cancelled"],
            alive=self.alive)

    def _count(self, outcome: str) -> None:
        with self._count_lock:
            self._counts[outcome] += 1

    # --- the inference thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    arrivals = self._next_work()
                    if arrivals is None:
                        break
                    if arrivals:
                        self._prefill(arrivals)
                    if self._running:
                        self._decode_step()
                except Exception as exc:
                    if is_fatal_device_error(exc):
                        self._die(exc)
                        return
                    log.exception("scheduler turn failed; failing the running requests")
                    for sequence in self._running:
                        self._mark_failed(sequence, exc)
                    self._retire(list(self._running))
        self._abort_all(ShuttingDown("The worker is shutting down."))

    def _next_work(self) -> list[_Sequence] | None:
        with self._lock:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                self._sweep_running(now)
                self._sweep_waiting(now)
                arrivals = self._admit()
                if arrivals or self._running:
                    return arrivals
                deadlines = [s.queue_deadline for s in self._waiting]
                self._wake.wait(max(0.0, min(deadlines) - now) if deadlines else None)

    def _sweep_running(self, now: float) -> None:
        ended = []
        for sequence in self._running:
            if sequence.handle.cancel_requested:
                sequence.cancelled = True
            elif sequence.run_deadline is not None and now > sequence.run_deadline:
                sequence.error = InferenceTimeout(
                    f"The request ran past its deadline after {now - sequence.submitted_at:.1f}s.")
            else:
                continue
            ended.append(sequence)
        self._retire(ended)

    def _sweep_waiting(self, now: float) -> None:
        for sequence in [s for s in self._waiting if now > s.queue_deadline]:
            self._waiting.remove(sequence)
            self._count("failed")
            sequence.handle.fail(InferenceTimeout(
                f"Waited {now - sequence.submitted_at:.1f}s in the queue without being scheduled."))

    def _admit(self) -> list[_Sequence]:
        arrivals: list[_Sequence] = []
        free = self._capacity.sequences - len(self._running)
        width = 0
        while self._waiting and len(arrivals) < free:
            candidate = self._waiting[0]
            wider = max(width, candidate.prepared.prompt_tokens)
            if arrivals and wider * (len(arrivals) + 1) > self.max_prefill_tokens:
                break
            width = wider
            arrivals.append(self._waiting.popleft())
        return arrivals

    def _prefill(self, arrivals: list[_Sequence]) -> None:
        started = time.monotonic()
        first_row = len(self._running)
        self._cache.ensure_rows(first_row + len(arrivals), max((s.length for s in self._running), default=0))
        for offset, sequence in enumerate(arrivals):
            sequence.row = first_row + offset
            sequence.scheduled_at = started
            sequence.sampler = TokenSampler(sequence.params, sequence.prepared.input_ids, sequence.max_new_tokens,
                                            self.vlm.device)
            if sequence.params.stop:
                sequence.detokenizer = IncrementalDetokenizer(self.vlm.tokenizer, sequence.params.stop)
            self._running.append(sequence)
        items = [s.prepared for s in arrivals]
        done, logits, failed = self._run(
            arrivals, lambda: self._runner.prefill(first_row, items),
            lambda index, s: self._runner.prefill(s.row, [s.prepared]))
        for sequence in done:
            sequence.length = sequence.prepared.prompt_tokens
        self._advance(done, logits, failed, batch=len(arrivals))
        self._record_step("prefill", len(arrivals), started)

    def _decode_step(self) -> None:
        started = time.monotonic()
        running = list(self._running)
        device = self.vlm.device
        tokens = torch.tensor([s.tokens[-1] for s in running], device=device)
        positions = torch.tensor([s.length for s in running], device=device)
        context = max(s.length for s in running) + 1
        done, logits, failed = self._run(
            running, lambda: self._decode(0, tokens, positions, context),
            lambda i, s: self._runner.decode(s.row, tokens[i:i + 1], positions[i:i + 1], s.length + 1))
        for sequence in done:
            sequence.length += 1
        self._advance(done, logits, failed, batch=len(running))
        self._record_step("decode", len(running), started)

    def _run(self, sequences: list[_Sequence], batched: Callable[[], torch.Tensor],
             single: Callable[[int, _Sequence], torch.Tensor]
             ) -> tuple[list[_Sequence], torch.Tensor | None, list[tuple[_Sequence, Exception]]]:
        """Run a model call for all sequences; if it fails, once per sequence so only the culprits fail.

        Rows do not move until every call is done (failures are retired later by ``_advance``), so
        the single calls may address rows directly. Fatal device errors propagate.
        """
        try:
            return sequences, self._model_call(batched), []
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise
            if len(sequences) == 1:
                return [], None, [(sequences[0], exc)]
            log.warning("a model step over %d sequences failed (%s: %s); retrying them one by one",
                        len(sequences), type(exc).__name__, exc)
        done, rows, failed = [], [], []
        for index, sequence in enumerate(sequences):
            try:
                rows.append(self._model_call(lambda i=index, s=sequence: single(i, s)))
                done.append(sequence)
            except Exception as exc:
                if is_fatal_device_error(exc):
                    raise
                failed.append((sequence, exc))
        return done, (torch.cat(rows) if rows else None), failed

    def _choose(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[int | Exception]:
        try:
            return list(choose_tokens(logits, [s.sampler for s in sequences]))
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise
            if len(sequences) == 1:
                return [exc]
        chosen: list[int | Exception] = []
        for row, sequence in enumerate(sequences):
            try:
                chosen.extend(choose_tokens(logits[row:row + 1], [sequence.sampler]))
            except Exception as exc:
                if is_fatal_device_error(exc):
                    raise
                chosen.append(exc)
        return chosen

    def _advance(self, done: list[_Sequence], logits: torch.Tensor | None,
                 failed: list[tuple[_Sequence, Exception]], *, batch: int) -> None:
        """Sample each done sequence's next token, then retire the ended and the failed ones."""
        ended = []
        for sequence, exc in failed:
            self._mark_failed(sequence, exc)
            ended.append(sequence)
        tokens = self._choose(done, logits) if done and logits is not None else []
        now = time.monotonic()
        for sequence, token in zip(done, tokens, strict=True):
            sequence.steps += 1
            sequence.sequences_seen += batch
            if sequence.first_token_at is None:
                sequence.first_token_at = now
            if isinstance(token, Exception):
                self._mark_failed(sequence, token)
                ended.append(sequence)
            elif self._accept(sequence, token):
                ended.append(sequence)
        self._retire(ended)

    def _model_call(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._step_started_at = time.monotonic()
        try:
            if self._before_step is not None:
                self._before_step()
            return call()
        finally:
            self._step_started_at = None

    def _record_step(self, kind: Literal["prefill", "decode"], sequences: int, started: float) -> None:
        self._steps += 1
        self._last_step_at = time.monotonic()
        info = StepInfo(kind=kind, sequences=sequences, seconds=self._last_step_at - started)
        for observer in self._observers:
            try:
                observer(info)
            except Exception:  # telemetry must never break inference
                log.exception("step observer failed")

    @staticmethod
    def _mark_failed(sequence: _Sequence, exc: BaseException) -> None:
        log.warning("inference failed for request %d: %s: %s", sequence.handle.request_id, type(exc).__name__, exc)
        sequence.error = InferenceFailed()
        sequence.error.__cause__ = exc

    def _accept(self, sequence: _Sequence, token: int) -> bool:
        """Take one new token; True when the sequence has ended."""
        if token in self._eos:
            sequence.finish_reason = "stop"
            return True
        sequence.tokens.append(token)
        if sequence.detokenizer is None and sequence.handle.streaming:
            sequence.detokenizer = IncrementalDetokenizer(self.vlm.tokenizer, sequence.params.stop)
            sequence.detokenizer.push(sequence.tokens)
        elif sequence.detokenizer is not None:
            sequence.detokenizer.push([token])
        if sequence.detokenizer is not None and sequence.detokenizer.stopped:
            sequence.finish_reason = "stop"
        elif len(sequence.tokens) >= sequence.max_new_tokens:
            sequence.finish_reason = "length"
        else:
            self._stream(sequence)
            return False
        return True

    def _stream(self, sequence: _Sequence) -> None:
        if not sequence.handle.streaming or sequence.detokenizer is None:
            return
        text = sequence.detokenizer.text
        if text.startswith(sequence.streamed) and len(text) > len(sequence.streamed):
            sequence.handle.push_delta(text[len(sequence.streamed):])
            sequence.streamed = text

    def _retire(self, sequences: list[_Sequence]) -> None:
        """Free the slots of ended sequences (last row moves into each hole) and answer them."""
        for sequence in sorted(sequences, key=lambda s: s.row, reverse=True):
            if 0 <= sequence.row < len(self._running) and self._running[sequence.row] is sequence:
                last = self._running.pop()
                if last is not sequence:
                    self._cache.move_row(last.row, sequence.row, last.length)
                    last.row = sequence.row
                    self._running[sequence.row] = last
            sequence.row = -1
            self._answer(sequence)

    def _answer(self, sequence: _Sequence) -> None:
        handle = sequence.handle
        if sequence.cancelled:
            self._count("cancelled")
            handle.mark_cancelled()
            return
        if sequence.error is not None:
            self._count("failed")
            handle.fail(sequence.error)
            return
        if sequence.detokenizer is not None:
            if sequence.detokenizer.stopped:
                sequence.detokenizer.finish()
            else:
                sequence.detokenizer.finish(self.vlm.tokenizer.decode(sequence.tokens, skip_special_tokens=True))
            text = sequence.detokenizer.text
            self._stream(sequence)
        else:
            text = decode_text(self.vlm.tokenizer, sequence.tokens)
        now = time.monotonic()
        first_token_at = sequence.first_token_at if sequence.first_token_at is not None else now
        self._count("completed")
        handle.resolve(GenerationResult(
            text=text, token_ids=tuple(sequence.tokens), finish_reason=sequence.finish_reason or "length",
            prompt_tokens=sequence.prepared.prompt_tokens, queue_s=sequence.scheduled_at - sequence.submitted_at,
            ttft_s=first_token_at - sequence.submitted_at, inference_s=now - sequence.scheduled_at,
            batch_size=sequence.sequences_seen / max(1, sequence.steps), steps=sequence.steps))

    def _die(self, exc: BaseException) -> None:
        log.critical("fatal device error in the inference thread (%s: %s)", type(exc).__name__, exc)
        with self._lock:
            self._fatal = exc
        if self._on_fatal is not None:
            try:
                self._on_fatal(exc)
            except Exception:
                log.exception("the on_fatal hook failed")
        failure = InferenceFailed("The device failed while running the request.")
        failure.__cause__ = exc
        self._abort_all(failure)

    def _abort_all(self, error: BaseException) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for sequence in waiting:
            self._count("failed")
            sequence.handle.fail(error)
        for sequence in self._running:
            if not sequence.ended:
                sequence.error = error
        self._retire(list(self._running))
