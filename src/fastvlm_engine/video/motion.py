"""Comparing two luma grids the way a viewer would: despite camera motion, and by area.

A plain mean absolute difference cannot tell a cut from a shaking or panning camera (both move
every pixel) nor from a title popping in (a large change in a small area). These helpers, used
by the cut detector on candidate frames only, answer two narrower questions:

* :func:`aligned_mad` -- how different are the frames once the best translation of one onto the
  other is found (a search over a quarter of the width and an eighth of the height, coarse on a
  half-resolution grid, then refined)? Camera shake and pans mostly vanish; a cut does not.
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


def _mad(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> float:
    """Mean |a - b| over the overlap when b is moved by (dx, dy)."""
    h, w = a.shape
    ya, yb = max(0, dy), h + min(0, dy)
    xa, xb = max(0, dx), w + min(0, dx)
    return float(np.abs(a[ya:yb, xa:xb] - b[ya - dy:yb - dy, xa - dx:xb - dx]).mean())


def _half(grid: np.ndarray) -> np.ndarray:
    h, w = grid.shape[0] // 2 * 2, grid.shape[1] // 2 * 2
    g = grid[:h, :w].astype(np.float32)
    return 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])


def aligned_mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute luma difference (0..1) after the best translation of ``b`` onto ``a``.

    Both are luma grids of one shape (0..255). Shifts up to a quarter of the width and an eighth
    of the height are tried; the overlap always keeps at least half of the picture.
    """
    if a.shape != b.shape:
        raise ValueError(f"grids differ in shape: {a.shape} vs {b.shape}")
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    h, w = a.shape
    if h < 8 or w < 8:
        return _mad(a32, b32, 0, 0) / 255.0
    ha, hb = _half(a32), _half(b32)
    rx, ry = max(1, int(w * _MAX_SHIFT_X / 2)), max(1, int(h * _MAX_SHIFT_Y / 2))
    _, cx, cy = min((_mad(ha, hb, dx, dy), dx, dy) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1))
    best = min(_mad(a32, b32, 2 * cx + ex, 2 * cy + ey) for ey in (-1, 0, 1) for ex in (-1, 0, 1))
    return min(best, _mad(a32, b32, 0, 0)) / 255.0


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


def motion_share(grids: Sequence[np.ndarray | None]) -> float:
    """Share (0..1) of the frame-to-frame luma change over consecutive grids that moving the
    picture explains: ~1 for a pan or swing, ~0 for a dissolve or fade. 0.0 when it cannot tell."""
    usable = [g for g in grids if g is not None]
    if len(usable) < 2 or len({g.shape for g in usable}) != 1:
        return 0.0
    raw = aligned = 0.0
    for a, b in zip(usable, usable[1:], strict=False):
        raw += _mad(a.astype(np.float32), b.astype(np.float32), 0, 0) / 255.0
        aligned += aligned_mad(a, b)
    return 1.0 - aligned / raw if raw > 0 else 0.0
