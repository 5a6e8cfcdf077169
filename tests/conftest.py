"""Suite-wide set-up: offline, one torch thread, a tiny model built once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Settings read FASTVLM_* from the environment; a developer's own config must not leak in.
for _name in [n for n in os.environ if n.startswith("FASTVLM_")]:
    del os.environ[_name]

import pytest  # noqa: E402

from tests.helpers.images import write_sample_images  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The built-in tiny model (256 px), built once and loaded by the production loader."""
    import torch

    torch.set_num_threads(1)
    from fastvlm_engine.engine.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def tiny_asr_dir(tmp_path_factory) -> str:
    """The built-in tiny Whisper, built once and loaded by the production loader."""
    from fastvlm_engine.engine.tiny_whisper import build_tiny_whisper

    return str(build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper")))


@pytest.fixture(scope="session")
def vlm(tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    from fastvlm_engine.engine.model import FastVLM

    return FastVLM.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def media_root(tmp_path_factory):
    """A media root holding a few real photos (scikit-image's bundled samples) and test images."""
    from fastvlm_engine.sample_media.video import write_sample_video

    root = tmp_path_factory.mktemp("media")
    write_sample_images(root)
    write_sample_video(root / "sample.mp4")
    return root


@pytest.fixture(scope="session")
def long_clip(media_root):
    """A 170 s clip (small frames) inside media_root: long to analyse, cheap to make."""
    from tests.fixtures.videos import make_long_video

    return make_long_video(media_root, seconds=170, size=(256, 144))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Debian redis-server on a free loopback port for the whole session, stopped by PID."""
    from tests.helpers.redis_server import start_redis

    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
