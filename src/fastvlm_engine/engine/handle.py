"""A request's view of the scheduler: its text deltas, its final result, and cancel().

The inference thread writes; the submitter's event loop reads. Every hand-over goes through
``loop.call_soon_threadsafe``, so asyncio objects are only touched on their own loop. A handle
made outside a running loop (a warm-up thread, a test) offers the blocking :meth:`wait` only.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["GenerationResult", "RequestHandle"]


@dataclass(frozen=True)
class GenerationResult:
    """One finished request.

    ``token_ids`` are the generated tokens without the end-of-sequence token (a stop string's tokens
    are kept, its text is cut). Timing, all from submission on the monotonic clock:
    ``queue_s`` submit -> first scheduled step (its prefill), ``ttft_s`` submit -> first token,
    ``inference_s`` first scheduled step -> last step. ``batch_size`` is the mean number of sequences
    in the model steps this request took part in (its prefill counts the arrivals prefilled with it,
    each decode step all running sequences), so it is fractional under continuous batching.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    queue_s: float
    ttft_s: float
    inference_s: float
    batch_size: float
    steps: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class _State(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_END = object()


class RequestHandle:
    """Returned by :meth:`Scheduler.submit`; also the only way to cancel a request."""

    def __init__(self, request_id: int, loop: asyncio.AbstractEventLoop | None,
                 on_cancel: Callable[[RequestHandle], None]) -> None:
        self.request_id = request_id
        self._loop = loop
        self._on_cancel = on_cancel
        self._state = _State.PENDING
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._cancel_requested = False
        self.streaming = False  # read by the inference thread: produce deltas from now on
        self._deltas: asyncio.Queue | None = None
        self._delivered = ""  # text handed to the stream so far (loop thread only)
        self._stream_closed = False
        self._waiters: list[asyncio.Future] = []

    # --- the submitter's side --------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def cancel(self) -> None:
        """Withdraw a queued request now, or free a running one's KV slot at the next step."""
        if self._finished.is_set() or self._cancel_requested:
            return
        self._cancel_requested = True
        self._on_cancel(self)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None or loop is not self._loop:
            raise RuntimeError("stream() and result() must be awaited on the event loop that submitted")
        return loop

    async def stream(self) -> AsyncIterator[str]:
        """Text deltas as they become final; they add up to the result's ``text``.

        Ends when the request finishes (then await :meth:`result`) and raises its error if it
        failed. Leaving the loop early (break, disconnect, task cancelled) cancels the request.
        """
        self._require_loop()
        if self._deltas is not None:
            raise RuntimeError("stream() can be consumed only once")
        self._deltas = asyncio.Queue()
        self.streaming = True
        if self._finished.is_set():
            self._close_stream()
        completed = False
        try:
            while True:
                item = await self._deltas.get()
                if item is _END:
                    break
                yield item
            completed = True
        finally:
            if not completed:
                self.cancel()
        if self._error is not None:
            raise self._error

    async def result(self) -> GenerationResult:
        """The finished result; raises the request's error, or CancelledError after cancel()."""
        loop = self._require_loop()
        if not self._finished.is_set():
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter
        return self._outcome()

    def wait(self, timeout: float | None = None) -> GenerationResult:
        """Block this thread until the result is in (for callers without an event loop)."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        return self._outcome()

    def _outcome(self) -> GenerationResult:
        if self._state is _State.CANCELLED:
            raise asyncio.CancelledError(f"request {self.request_id} was cancelled")
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError(f"request {self.request_id} finished without a result")
        return self._result

    # --- the scheduler's side (any thread) -------------------------------------------------------

    def push_delta(self, text: str) -> None:
        if text and self._loop is not None:
            self._call_in_loop(self._deliver_delta, text)

    def resolve(self, result: GenerationResult) -> None:
        self._settle(_State.DONE, result=result)

    def fail(self, error: BaseException) -> None:
        self._settle(_State.FAILED, error=error)

    def mark_cancelled(self) -> None:
        self._settle(_State.CANCELLED)

    def _settle(self, state: _State, *, result: GenerationResult | None = None,
                error: BaseException | None = None) -> None:
        if self._finished.is_set():
            return
        self._state, self._result, self._error = state, result, error
        self._finished.set()
        if self._loop is not None:
            self._call_in_loop(self._deliver_end)

    def _call_in_loop(self, callback: Callable, *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the submitter's loop has closed; nobody is listening any more
            pass

    # --- on the submitter's loop ------------------------------------------------------------------

    def _deliver_delta(self, text: str) -> None:
        if self._deltas is not None and not self._stream_closed:
            self._delivered += text
            self._deltas.put_nowait(text)

    def _close_stream(self) -> None:
        """Send whatever of the final text the stream has not seen (e.g. it started late), then the end."""
        if self._deltas is None or self._stream_closed:
            return
        self._stream_closed = True
        if self._result is not None and self._result.text.startswith(self._delivered):
            rest = self._result.text[len(self._delivered):]
            if rest:
                self._deltas.put_nowait(rest)
        self._deltas.put_nowait(_END)

    def _deliver_end(self) -> None:
        self._close_stream()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
