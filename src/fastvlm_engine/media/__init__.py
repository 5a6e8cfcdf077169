"""Reading and validating client media: paths under roots, base64 uploads, images, URLs.

Fetching by URL lives in ``media.fetch`` (with ``fetch_policy``, ``hosts``, ``addresses`` and
``resolver``) and is imported from there, not re-exported here: it loads aiohttp, which a worker
that only reads paths and uploads never needs.
"""

from .images import DecodedImage, decode_image, sniff_image_format
from .paths import open_media, read_media
from .uploads import decode_base64

__all__ = ["DecodedImage", "decode_base64", "decode_image", "open_media", "read_media", "sniff_image_format"]
