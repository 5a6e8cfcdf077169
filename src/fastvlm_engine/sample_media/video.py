"""A short sample video for `fastvlm sample-media`: three shots with two hard cuts, made locally."""

from __future__ import annotations

from importlib.resources import files
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_sample_video"]

_SIZE = (360, 640)  # width, height: a vertical phone clip
_FPS = 24


def _pan(photo: Image.Image, frames: int) -> list[np.ndarray]:
    """A slow zoom into a photo, cropped to the clip's aspect."""
    width, height = _SIZE
    out = []
    for i in range(frames):
        zoom = 1.0 + 0.15 * i / max(1, frames - 1)
        crop_h = photo.height / zoom
        crop_w = min(photo.width / zoom, crop_h * width / height)
        left, top = (photo.width - crop_w) / 2, (photo.height - crop_h) / 2
        frame = photo.resize(_SIZE, Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
        out.append(np.asarray(frame))
    return out


def _gradient(frames: int) -> list[np.ndarray]:
    width, height = _SIZE
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([(x + 4 * i) % 256, (y // 3) % 256, np.full_like(x, 128 + i)], axis=-1).astype(np.uint8)
            for i in range(frames)]


def write_sample_video(path: str | Path, seconds_per_shot: float = 2.0) -> Path:
    """Encode coffee (zoom) | astronaut (zoom) | a moving gradient as H.264 MP4."""
    import av

    shots = []
    for name in ("coffee.jpg", "astronaut.jpg"):
        photo = Image.open(BytesIO((files("fastvlm_engine.sample_media") / name).read_bytes())).convert("RGB")
        shots.append(_pan(photo, int(_FPS * seconds_per_shot)))
    shots.append(_gradient(int(_FPS * seconds_per_shot)))
    out = Path(path)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=_FPS)
        stream.width, stream.height, stream.pix_fmt = *_SIZE, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for shot in shots:
            for frame in shot:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return out
