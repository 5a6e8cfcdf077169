"""Small running statistics shared by the router and the cluster code (no dependencies)."""

from __future__ import annotations

import math

__all__ = ["Ewma"]


class Ewma:
    """Exponentially weighted moving average with a prior used until the first sample."""

    def __init__(self, prior: float, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.prior = prior
        self.alpha = alpha
        self.value: float | None = None

    def update(self, sample: float) -> None:
        if not math.isfinite(sample) or sample < 0:
            return
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)

    def get(self) -> float:
        return self.prior if self.value is None else self.value
