"""64-bit DCT perceptual hash (pHash) in plain numpy.

The image is reduced to 32x32 greyscale, transformed with a 2-D DCT-II (two matrix products with
a precomputed orthonormal DCT matrix: no scipy, OpenCV or imagehash), and the 8x8 lowest
frequencies *after* the DC term (rows/columns 1..8, as in the original pHash library) are
thresholded at their median. Brightness and contrast changes scale or shift coefficients
uniformly and JPEG noise sits in high frequencies, so the hash is stable under both, while
different pictures differ in about half of the bits. Compare hashes with :func:`hamming`.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

__all__ = ["DCT_SIZE", "HASH_BITS", "dct_matrix", "hamming", "phash"]

DCT_SIZE = 32
HASH_SIDE = 8
HASH_BITS = HASH_SIDE * HASH_SIDE


@functools.cache
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n x n): ``C @ x`` is the DCT of column vector x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    c.setflags(write=False)
    return c


def _grey32(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.ndim == 3:
            image = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8), "RGB")
        else:
            image = Image.fromarray(np.ascontiguousarray(image).astype(np.uint8), "L")
    # reducing_gap: a cheap box pre-reduction for large frames, Lanczos for the last 2x.
    small = image.convert("L").resize((DCT_SIZE, DCT_SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float64)


def phash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit pHash of a PIL image, an RGB array (H, W, 3) or a greyscale array (H, W)."""
    c = dct_matrix(DCT_SIZE)
    coeffs = c @ _grey32(image) @ c.T
    low = coeffs[1:HASH_SIDE + 1, 1:HASH_SIDE + 1].ravel()
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()
