"""Decoding client images safely.

The pixel limit is checked on the header's dimensions before any pixel is decoded, so a
decompression bomb costs nothing. "Not an image" (415) and "a broken image" (422) are told
apart by the file's magic bytes: a PNG signature that PIL cannot read is a corrupt PNG.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageTooLarge, InvalidImage, MediaTooLarge, UnsupportedMedia

__all__ = ["DecodedImage", "decode_image", "sniff_image_format"]

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)


def sniff_image_format(data: bytes) -> str | None:
    """The image format named by the leading bytes, or None."""
    for magic, offset, name in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            if name == "WEBP" and data[:4] != b"RIFF":
                continue
            return name
    return None


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, display orientation
    format: str
    width: int
    height: int


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode to an RGB image in display orientation, or raise a MediaError subclass."""
    if len(data) > max_bytes:
        raise MediaTooLarge(f"The image is {len(data)} bytes; the limit is {max_bytes}.")
    if not data:
        raise UnsupportedMedia("The image is empty.")
    kind = sniff_image_format(data)
    if kind is None:
        raise UnsupportedMedia("The data is not a supported image (JPEG, PNG, GIF, WebP, BMP or TIFF).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[kind])
            width, height = img.size
            if width < 1 or height < 1:
                raise InvalidImage("The image has no pixels.")
            if width * height > max_pixels:
                raise ImageTooLarge(f"The image is {width}x{height} = {width * height} pixels; "
                                    f"the limit is {max_pixels}.")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
    except (ImageTooLarge, InvalidImage):
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge("The image is too large to decode safely.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError,
            TypeError, KeyError, MemoryError, struct.error):
        raise InvalidImage(f"The {kind} image is corrupt or truncated.") from None
    return DecodedImage(image=rgb, format=kind, width=rgb.width, height=rgb.height)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (a black background hides dark content)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return ImageOps.autocontrast(img.convert("I").point(lambda v: v / 256).convert("L")).convert("RGB")
    return img.convert("RGB")
