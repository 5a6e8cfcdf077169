"""Text from a growing list of tokens: streaming deltas, stop strings, and the final answer.

Decoding the whole list at every step would cost O(n^2); instead a short window is decoded (the
tokens since the last emitted boundary plus the new ones), the way vLLM does. Text ending in
U+FFFD is an incomplete UTF-8 sequence a later byte-level token will finish, so it is held back.

The streamed text is built so that the deltas add up exactly to the final ``text``: leading
whitespace is dropped and trailing whitespace is held until something visible follows (the final
text is stripped), and any tail that could be the start of a stop string is held until it is
known not to be one. A stop string ends generation and is cut, with everything after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .prompts import strip_controls

__all__ = ["IncrementalDetokenizer", "decode_text"]

_INCOMPLETE = "\ufffd"


def decode_text(tokenizer, token_ids: Sequence[int]) -> str:
    """The answer text of a finished generation (special tokens and control characters removed)."""
    return strip_controls(tokenizer.decode(list(token_ids), skip_special_tokens=True)).strip()


def _held_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return held


class IncrementalDetokenizer:
    """Feed it each new token; it answers the text that became safe to show."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = tuple(stop)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._tokens: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._raw = ""  # decoded, control characters removed, not trimmed
        self._searched = 0  # stop strings cannot start before this index of _raw
        self._stop_at: int | None = None
        self._emitted = ""

    @property
    def stopped(self) -> bool:
        """A stop string appeared; the caller should end the sequence."""
        return self._stop_at is not None

    @property
    def emitted(self) -> str:
        return self._emitted

    def _decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(list(tokens), skip_special_tokens=True)

    def push(self, tokens: Sequence[int]) -> str:
        """Add tokens; return the newly visible text (maybe empty)."""
        if self.stopped:
            return ""
        self._tokens.extend(tokens)
        prefix = self._decode(self._tokens[self._prefix_offset:self._read_offset])
        window = self._decode(self._tokens[self._prefix_offset:])
        if len(window) > len(prefix) and not window.endswith(_INCOMPLETE):
            self._raw += strip_controls(window[len(prefix):])
            self._prefix_offset, self._read_offset = self._read_offset, len(self._tokens)
            self._find_stop()
        return self._advance(final=False)

    def finish(self, full_text: str | None = None) -> str:
        """The rest of the text once generation ended. ``full_text``, the tokenizer's decode of the whole
        list, replaces the windows' text when given (it also completes a trailing partial character)."""
        if full_text is not None and not self.stopped:
            self._raw = strip_controls(full_text)
            self._find_stop()
        return self._advance(final=True)

    @property
    def text(self) -> str:
        """Everything emitted so far; after :meth:`finish`, the final answer."""
        return self._emitted

    def _find_stop(self) -> None:
        if not self._stops or self.stopped:
            return
        start = max(0, self._searched - self._longest_stop + 1)
        found = [index for stop in self._stops if (index := self._raw.find(stop, start)) >= 0]
        if found:
            self._stop_at = min(found)
        self._searched = len(self._raw)

    def _advance(self, *, final: bool) -> str:
        visible = self._raw if self._stop_at is None else self._raw[:self._stop_at]
        if final or self.stopped:
            visible = visible.strip()
        else:
            visible = visible[:len(visible) - _held_stop_prefix(visible, self._stops)].strip()
        if not visible.startswith(self._emitted):
            # Only a whole-list decode that disagrees with the windows gets here: what was sent stays
            # sent, and the final text (carried whole by the final result) is the whole-list one.
            if final:
                self._emitted = visible
            return ""
        delta = visible[len(self._emitted):]
        self._emitted = visible
        return delta
