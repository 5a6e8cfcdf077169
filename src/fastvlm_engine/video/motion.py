"""Comparing two luma grids the way a viewer would: despite camera motion, and by area.

A plain mean absolute difference cannot tell a cut from a shaking or panning camera (both move
every pixel) nor from a title popping in (a large change in a small area). These helpers, used
by the cut detector on candidate frames only, answer two narrower questions:

* :func:`aligned_mad` -- how different are the frames once the best translation of one onto the
  other is found (phase correlation over a quarter of the width and an eighth of the height,
  then refined)? Camera shake and pans mostly vanish; a cut does not.
* :func:`changed_area` -- what share of the picture changed noticeably? A cut changes nearly all
  of it; an overlay, a hand or a caption bar only a band.
* :func:`structure_correlation` -- is it the same picture, only brighter, darker or recoloured
  (a fade step, a flash, a grade)? Then the luma grids correlate almost perfectly.
* :func:`blend_coherence` -- do consecutive frame differences repeat? A cross-dissolve or a fade
  adds the same difference image (B - A) / n every frame; motion moves its differences around.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["AREA_BLOCKS", "aligned_mad", "blend_coherence", "changed_area", "luma_spread", "motion_share",
           "structure_correlation"]

AREA_BLOCKS = 8
"""The grid is split into AREA_BLOCKS x AREA_BLOCKS blocks for :func:`changed_area`."""
_MAX_SHIFT_X, _MAX_SHIFT_Y = 0.25, 0.125
PEAKS = 6
"""Phase-correlation peaks tried by :func:`aligned_mad` (motion blur weakens the true one)."""


def _mad(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> float:
    """Mean |a - b| over the overlap when b is moved by (dx, dy)."""
    h, w = a.shape
    ya, yb = max(0, dy), h + min(0, dy)
    xa, xb = max(0, dx), w + min(0, dx)
    return float(np.abs(a[ya:yb, xa:xb] - b[ya - dy:yb - dy, xa - dx:xb - dx]).mean())


def _peaks(a: np.ndarray, b: np.ndarray, max_dx: int, max_dy: int, count: int) -> list[tuple[int, int]]:
    """The ``count`` strongest translations of ``b`` onto ``a`` by phase correlation, within range."""
    fa = np.fft.rfft2(a - a.mean())
    fb = np.fft.rfft2(b - b.mean())
    cross = fa * np.conj(fb)
    surface = np.fft.irfft2(cross / np.maximum(np.abs(cross), 1e-9), s=a.shape)
    h, w = a.shape
    dys = np.r_[0:max_dy + 1, h - max_dy:h] if max_dy else np.array([0])
    dxs = np.r_[0:max_dx + 1, w - max_dx:w] if max_dx else np.array([0])
    window = surface[np.ix_(dys, dxs)]
    best = np.argsort(window, axis=None)[::-1][:count]
    rows, cols = np.unravel_index(best, window.shape)
    return [(int(dxs[c] if dxs[c] <= w // 2 else dxs[c] - w), int(dys[r] if dys[r] <= h // 2 else dys[r] - h))
            for r, c in zip(rows, cols, strict=True)]


def aligned_mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute luma difference (0..1) after the best translation of ``b`` onto ``a``.

    Both are luma grids of one shape (0..255). The candidate shifts -- up to a quarter of the
    width and an eighth of the height -- come from phase correlation (the PEAKS strongest, each
    refined by one sample); the smallest difference over them and no shift at all is returned.
    """
    if a.shape != b.shape:
        raise ValueError(f"grids differ in shape: {a.shape} vs {b.shape}")
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    h, w = a.shape
    best = _mad(a32, b32, 0, 0)
    if h >= 8 and w >= 8:
        for dx, dy in _peaks(a32, b32, int(w * _MAX_SHIFT_X), int(h * _MAX_SHIFT_Y), PEAKS):
            for ey in (-1, 0, 1):
                for ex in (-1, 0, 1):
                    x, y = dx + ex, dy + ey
                    if abs(x) <= w // 2 and abs(y) <= h // 2:
                        best = min(best, _mad(a32, b32, x, y))
    return best / 255.0


def changed_area(a: np.ndarray, b: np.ndarray, level: float) -> float:
    """Share (0..1) of the AREA_BLOCKS x AREA_BLOCKS blocks whose mean |a - b| / 255 is at least ``level``."""
    h, w = a.shape
    bh, bw = max(1, h // AREA_BLOCKS), max(1, w // AREA_BLOCKS)
    rows, cols = min(AREA_BLOCKS, h // bh), min(AREA_BLOCKS, w // bw)
    diff = np.abs(a[:rows * bh, :cols * bw].astype(np.float32) - b[:rows * bh, :cols * bw].astype(np.float32))
    blocks = diff.reshape(rows, bh, cols, bw).mean(axis=(1, 3)) / 255.0
    return float((blocks >= level).mean())


def luma_spread(grid: np.ndarray) -> float:
    """Standard deviation of the luma grid, 0..1: ~0 for a black, white or flat frame."""
    return float(grid.std()) / 255.0


def blend_coherence(grids: Sequence[np.ndarray | None]) -> float:
    """Energy-weighted correlation of consecutive frame differences over consecutive grids.

    Near 1 for a dissolve or fade (every step adds the same image), near 0 for motion or for a
    single step surrounded by noise. 1.0 when there are too few grids to tell (or none at all).
    """
    usable = [g.astype(np.float32) for g in grids if g is not None]
    if len(usable) < 3 or len({g.shape for g in usable}) != 1:
        return 1.0
    diffs = [b - a for a, b in zip(usable, usable[1:], strict=False)]
    num = sum(float((d0 * d1).sum()) for d0, d1 in zip(diffs, diffs[1:], strict=False))
    e0 = sum(float((d * d).sum()) for d in diffs[:-1])
    e1 = sum(float((d * d).sum()) for d in diffs[1:])
    return num / np.sqrt(e0 * e1) if e0 > 0 and e1 > 0 else 0.0


def structure_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two luma grids of one shape (-1..1); 0 when either is flat."""
    x = a.astype(np.float32).ravel()
    y = b.astype(np.float32).ravel()
    x -= x.mean()
    y -= y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denom if denom > 0 else 0.0


MOTION_PAIRS = 6
"""Frame pairs :func:`motion_share` looks at, evenly spread over the stretch."""


def motion_share(grids: Sequence[np.ndarray | None]) -> float:
    """Share (0..1) of the frame-to-frame luma change over consecutive grids that moving the
    picture explains: ~1 for a pan or swing, ~0 for a dissolve or fade. 0.0 when it cannot tell.
    At most MOTION_PAIRS consecutive pairs, evenly spread, are compared."""
    usable = [g for g in grids if g is not None]
    if len(usable) < 2 or len({g.shape for g in usable}) != 1:
        return 0.0
    pairs = list(zip(usable, usable[1:], strict=False))
    if len(pairs) > MOTION_PAIRS:
        pairs = [pairs[round(i * (len(pairs) - 1) / (MOTION_PAIRS - 1))] for i in range(MOTION_PAIRS)]
    raw = aligned = 0.0
    for a, b in pairs:
        raw += _mad(a.astype(np.float32), b.astype(np.float32), 0, 0) / 255.0
        aligned += aligned_mad(a, b)
    return 1.0 - aligned / raw if raw > 0 else 0.0
