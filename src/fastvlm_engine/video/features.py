"""Cheap per-frame signals for cut detection and visual statistics.

Every decoded frame is reduced to a small grid (short side about :data:`GRID_SHORT_SIDE`
pixels) by *viewing* its Y/U/V planes with a stride: no colour conversion or scaling of the
full frame happens, which keeps the analysis close to pure decoding speed (measured: the strided
Y view costs ~3 % over decode-only, while a swscale RGB conversion costs 25-65 %). From that grid
we compute the luma mean and the mean absolute luma change (hard cuts, motion), a 16x4x4 HSV
histogram (cuts and dissolves that keep the brightness), and Hasler-Suesstrunk colourfulness.
Frames in other pixel formats (10-bit, packed, NV12 ...) are first scaled to the grid with
swscale, which is still cheap at that size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import av
import numpy as np

__all__ = [
    "GRID_SHORT_SIDE",
    "HIST_BINS",
    "FeatureExtractor",
    "FrameFeatures",
    "colourfulness",
    "hist_distance",
    "hsv_histogram",
    "plane_array",
    "yuv_to_rgb",
]

GRID_SHORT_SIDE = 64
"""Short side, in samples, of the grid every frame is reduced to."""
HUE_BINS, SAT_BINS, VAL_BINS = 16, 4, 4
HIST_BINS = HUE_BINS * SAT_BINS * VAL_BINS

_PLANAR_YUV8 = frozenset({
    "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p",
    "yuv440p", "yuvj440p", "yuv411p", "yuv410p",
})
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG


@dataclass(frozen=True, slots=True)
class FrameFeatures:
    """What the detectors and statistics know about one frame."""

    index: int
    t: float
    luma_mean: float
    """Mean luma, 0..1."""
    luma_diff: float
    """Mean absolute luma change from the previous frame, 0..1 (0 for the first frame)."""
    hist: np.ndarray
    """Normalised HSV histogram (HIST_BINS,) float32, summing to 1."""
    hist_diff: float
    """Total-variation distance of ``hist`` from the previous frame's, 0..1."""
    colourfulness: float
    """Hasler-Suesstrunk colourfulness M on 0..255 RGB (0 grey, ~59 'quite', ~82 'highly')."""
    grid: np.ndarray | None = None
    """The luma grid itself (int16, about 64 samples on the short side), kept so the cut detector
    can compare any two recent frames with motion compensation; None when not available."""


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, *, full_range: bool) -> np.ndarray:
    """BT.601 YCbCr (uint8 arrays of one shape) to float32 RGB in 0..255, shape (..., 3)."""
    yf = y.astype(np.float32)
    cb = u.astype(np.float32) - 128.0
    cr = v.astype(np.float32) - 128.0
    if not full_range:
        yf = (yf - 16.0) * (255.0 / 219.0)
        cb *= 255.0 / 224.0
        cr *= 255.0 / 224.0
    rgb = np.empty((*y.shape, 3), np.float32)
    rgb[..., 0] = yf + 1.402 * cr
    rgb[..., 1] = yf - 0.344136 * cb - 0.714136 * cr
    rgb[..., 2] = yf + 1.772 * cb
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return rgb


def _hsv_bins(rgb: np.ndarray) -> np.ndarray:
    """HSV histogram bin (hue-major) of float RGB 0..255 pixels.

    Pixels in the lowest saturation bin all get hue bin 0: the hue of a near-grey pixel is
    noise, and letting it spread over 16 bins would make static grey areas look like change.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=-1)
    delta = mx - rgb.min(axis=-1)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, (g - b) / safe, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    sb = np.minimum((sat * SAT_BINS).astype(np.intp), SAT_BINS - 1)
    hb = np.where(sb > 0, np.minimum((hue * HUE_BINS).astype(np.intp), HUE_BINS - 1), 0)
    vb = np.minimum((mx / 255.0 * VAL_BINS).astype(np.intp), VAL_BINS - 1)
    return (hb * SAT_BINS + sb) * VAL_BINS + vb


_Y_SHIFT, _C_SHIFT = 2, 3
_Y_LEVELS, _C_LEVELS = (256 >> _Y_SHIFT) + 1, (256 >> _C_SHIFT) + 1


@functools.cache
def _hsv_lut(full_range: bool) -> np.ndarray:
    """HSV bin of every (Y, Cb, Cr) rounded to a multiple of (4, 8, 8): a 70 KB table that turns
    the per-frame histogram into one lookup and one bincount (~20x faster than per-pixel HSV).
    Rounding (not flooring) keeps neutral grey (Cb = Cr = 128) exactly on a table entry."""
    ys = np.minimum(np.arange(_Y_LEVELS) << _Y_SHIFT, 255).astype(np.uint8)
    cs = np.minimum(np.arange(_C_LEVELS) << _C_SHIFT, 255).astype(np.uint8)
    y, u, v = np.meshgrid(ys, cs, cs, indexing="ij")
    bins = _hsv_bins(yuv_to_rgb(y, u, v, full_range=full_range)).astype(np.uint8).ravel()
    bins.setflags(write=False)
    return bins


def hsv_histogram(y: np.ndarray, u: np.ndarray, v: np.ndarray, *, full_range: bool = False) -> np.ndarray:
    """16x4x4 (hue x saturation x value) histogram of uint8 YCbCr samples, normalised to sum 1."""
    qy = (y.astype(np.intp) + (1 << _Y_SHIFT >> 1)) >> _Y_SHIFT
    qu = (u.astype(np.intp) + (1 << _C_SHIFT >> 1)) >> _C_SHIFT
    qv = (v.astype(np.intp) + (1 << _C_SHIFT >> 1)) >> _C_SHIFT
    index = (qy * _C_LEVELS + qu) * _C_LEVELS + qv
    counts = np.bincount(_hsv_lut(full_range)[index].ravel(), minlength=HIST_BINS)
    return (counts / max(1, index.size)).astype(np.float32)


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two normalised histograms, 0 (same) .. 1 (disjoint)."""
    return float(0.5 * np.abs(a - b).sum())


def colourfulness(u: np.ndarray, v: np.ndarray, *, full_range: bool = False) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M on the 0..255 RGB scale, from chroma alone.

    With BT.601, R-G and (R+G)/2-B are linear in Cb/Cr and independent of Y, so M needs no RGB
    conversion (gamut clipping is ignored, which changes M by a few percent at most).
    """
    scale = 1.0 if full_range else 255.0 / 224.0
    cb = (u.astype(np.float32) - 128.0) * scale
    cr = (v.astype(np.float32) - 128.0) * scale
    rg = 0.344136 * cb + 2.116136 * cr
    yb = 0.343932 * cr - 1.944068 * cb
    return float(np.sqrt(rg.var() + yb.var()) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


class _Grid:
    """Index arrays that sample a frame's planes on a fixed grid, built once per frame shape."""

    def __init__(self, width: int, height: int, short_side: int) -> None:
        self.stride = max(1, min(width, height) // short_side)
        s = self.stride
        self.rows = np.arange(s // 2, height, s)
        self.cols = np.arange(s // 2, width, s)
        self.width, self.height = width, height

    def sample(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, h, w = self.stride, self.height, self.width
        planes = frame.planes
        luma = plane_array(planes[0])
        y = np.ascontiguousarray(luma[s // 2::s, s // 2::s][:len(self.rows), :len(self.cols)])
        chroma = []
        for plane in planes[1:3]:
            arr = plane_array(plane)
            rows = self.rows * plane.height // h
            cols = self.cols * plane.width // w
            chroma.append(arr[np.ix_(rows, cols)])
        return y, chroma[0], chroma[1]


def plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A zero-copy uint8 view of one plane without its row padding."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


class FeatureExtractor:
    """Turn decoded frames into :class:`FrameFeatures`, remembering the previous frame.

    Arguments:
        grid_short_side: short side of the sampling grid in samples (default 64, at least 8).
            Larger is slightly more sensitive and slower.
    """

    def __init__(self, *, grid_short_side: int = GRID_SHORT_SIDE) -> None:
        if grid_short_side < 8:
            raise ValueError(f"grid_short_side must be at least 8, got {grid_short_side}")
        self._short_side = grid_short_side
        self._grid: _Grid | None = None
        self._prev_luma: np.ndarray | None = None
        self._prev_hist: np.ndarray | None = None

    def push(self, frame: av.VideoFrame, index: int, t: float) -> FrameFeatures:
        """Features of ``frame`` (decode order ``index``, time ``t`` seconds)."""
        y, u, v, full_range = self._sample(frame)
        return self.push_planes(y, u, v, index=index, t=t, full_range=full_range)

    def push_planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, *, index: int, t: float,
                    full_range: bool = False) -> FrameFeatures:
        """Features from already-sampled uint8 Y/U/V grids of one shape (for tests and
        callers that decode by other means)."""
        hist = hsv_histogram(y, u, v, full_range=full_range)
        luma = y.astype(np.int16)
        prev_luma, prev_hist = self._prev_luma, self._prev_hist
        if prev_luma is not None and prev_luma.shape == luma.shape and prev_hist is not None:
            luma_diff = float(np.abs(luma - prev_luma).mean()) / 255.0
            hist_diff = hist_distance(hist, prev_hist)
        else:
            luma_diff = hist_diff = 0.0
        self._prev_luma, self._prev_hist = luma, hist
        if full_range:
            luma_mean = float(y.mean()) / 255.0
        else:
            luma_mean = min(1.0, max(0.0, (float(y.mean()) - 16.0) / 219.0))
        return FrameFeatures(index=index, t=t, luma_mean=luma_mean, luma_diff=luma_diff, hist=hist,
                             hist_diff=hist_diff,
                             colourfulness=colourfulness(u, v, full_range=full_range), grid=luma)

    def _sample(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        width, height = frame.width, frame.height
        fmt = frame.format.name
        full_range = fmt.startswith("yuvj") or frame.color_range == _JPEG_RANGE
        if fmt not in _PLANAR_YUV8:
            stride = max(1, min(width, height) // self._short_side)
            small_w, small_h = max(1, width // stride), max(1, height // stride)
            frame = frame.reformat(width=small_w, height=small_h, format="yuv444p",
                                   interpolation="FAST_BILINEAR")
            width, height = small_w, small_h
            full_range = frame.color_range == _JPEG_RANGE
        grid = self._grid
        if grid is None or (grid.width, grid.height) != (width, height):
            grid = self._grid = _Grid(width, height, self._short_side)
        y, u, v = grid.sample(frame)
        return y, u, v, full_range
