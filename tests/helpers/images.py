"""Test images: bundled scikit-image photos (nothing downloaded) and purpose-built bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data (a decompression bomb shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_sample_images(root: Path) -> None:
    for name in PHOTOS:
        photo(name).save(root / f"{name}.jpg", quality=90)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(root / "noise.png")
    jpeg = encode(photo("coffee"), "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "not_an_image.jpg").write_bytes(b"hello, this is text and not an image\n" * 10)
    (root / "bomb.png").write_bytes(png_header_only(50_000, 50_000))
    (root / "sub").mkdir()
    photo("rocket").save(root / "sub" / "rocket.png")
