"""Per-request sampling: the parameters, their validation, and choosing each next token.

The processing order and formulas follow transformers' ``generate`` (repetition penalty over prompt
and output, then temperature, top-k, top-p, then a multinomial draw), so a request means the same
here as it would there. Every sampled sequence draws from its own ``torch.Generator``: the same seed
gives the same tokens whether the request runs alone or shares its steps with others (up to the
floating-point noise of batched matrix products, which never changed a token in our tests).
Temperature 0 (the default) is greedy and ignores top-p/top-k/seed.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MAX_SEED", "MAX_STOP_CHARS", "MAX_STOP_STRINGS", "SamplingParams", "TokenSampler", "choose_tokens"]

from ..schemas import MAX_SEED, MAX_STOP_CHARS, MAX_STOP_STRINGS  # one definition, shared with the HTTP schema


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """How one request chooses its tokens; the defaults are greedy decoding.

    ``max_new_tokens=None`` keeps the limit the request was prepared with
    (:attr:`~fastvlm_engine.engine.model.PreparedInput.max_new_tokens`).
    """

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, limit: int) -> SamplingParams:
        """Raise ValueError starting with the offending field's name; return self when all is well."""
        if self.max_new_tokens is not None:
            if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool):
                raise ValueError("max_new_tokens: must be an integer")
            if not 1 <= self.max_new_tokens <= limit:
                raise ValueError(f"max_new_tokens: must be between 1 and {limit}")
        if not _number(self.temperature) or self.temperature < 0:
            raise ValueError("temperature: must be a finite number >= 0 (0 = greedy)")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be a number in (0, 1]")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError("top_k: must be an integer >= 0 (0 = off)")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed: must be an integer between 0 and {MAX_SEED}")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: must be a list of at most {MAX_STOP_STRINGS} strings")
        for text in self.stop:
            if not isinstance(text, str) or not 1 <= len(text) <= MAX_STOP_CHARS:
                raise ValueError(f"stop: each stop string must be text of 1 to {MAX_STOP_CHARS} characters")
        if not _number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty: must be a finite number > 0 (1 = off)")
        return self


class TokenSampler:
    """One sequence's logits processing and its random stream."""

    def __init__(self, params: SamplingParams, prompt_ids: torch.Tensor, max_new_tokens: int,
                 device: torch.device) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device).manual_seed(seed)
        self._history: torch.Tensor | None = None
        self._seen = 0
        if params.repetition_penalty != 1.0:
            self._history = torch.empty(prompt_ids.numel() + max_new_tokens, dtype=torch.long, device=device)
            self._history[:prompt_ids.numel()] = prompt_ids.to(device)
            self._seen = prompt_ids.numel()

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: such rows are chosen together in one batched call."""
        return self.params.greedy and self._history is None

    def observe(self, token: int) -> None:
        """Remember an emitted token for the repetition penalty."""
        if self._history is not None and self._seen < self._history.numel():
            self._history[self._seen] = token
            self._seen += 1

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token (a 0-d tensor) from one row of float32 logits."""
        params = self.params
        scores = logits
        if self._history is not None:
            seen = self._history[:self._seen]
            picked = scores.gather(0, seen)
            penalty = params.repetition_penalty
            scores = scores.scatter(0, seen, torch.where(picked < 0, picked * penalty, picked / penalty))
        if params.greedy:
            return scores.argmax()
        scores = scores / params.temperature
        if params.top_k > 0:
            k = min(params.top_k, scores.numel())
            threshold = torch.topk(scores, k).values[-1]
            scores = scores.masked_fill(scores < threshold, -math.inf)
        if params.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - params.top_p)
            remove[-1] = False  # always keep the most likely token
            scores = scores.masked_fill(remove.scatter(0, order, remove), -math.inf)
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[0]


def choose_tokens(logits: torch.Tensor, samplers: Sequence[TokenSampler]) -> list[int]:
    """Next token for every row: plain greedy rows in one argmax, the others one by one."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1)
    special = [row for row, sampler in enumerate(samplers) if not sampler.plain_greedy]
    if special:
        chosen = chosen.clone()
        for row in special:
            chosen[row] = samplers[row].choose(logits[row])
    tokens = chosen.tolist()
    for sampler, token in zip(samplers, tokens, strict=True):
        sampler.observe(token)
    return tokens
