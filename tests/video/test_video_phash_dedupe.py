"""pHash stability/discrimination and the near-duplicate filter's guarantees."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from fastvlm_engine.video.dedupe import NearDuplicateFilter
from fastvlm_engine.video.phash import dct_matrix, hamming, phash
from tests.fixtures.videos import photo

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera"]


@pytest.fixture(scope="module")
def images() -> dict[str, Image.Image]:
    return {name: Image.fromarray(photo(name)) for name in PHOTOS}


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_dct_matrix_is_orthonormal_dct_ii():
    c = dct_matrix(8)
    assert np.allclose(c @ c.T, np.eye(8))
    x = np.arange(8, dtype=float)
    n = np.arange(8)
    direct = [np.sum(x * np.cos(np.pi * (2 * n + 1) * k / 16)) * np.sqrt((1 if k == 0 else 2) / 8)
              for k in range(8)]
    assert np.allclose(c @ x, direct)


@pytest.mark.parametrize("name", PHOTOS)
def test_hash_is_stable_under_jpeg_and_brightness(images, name):
    image = images[name]
    h = phash(image)
    assert hamming(h, phash(_jpeg(image, 30))) <= 6
    assert hamming(h, phash(ImageEnhance.Brightness(image).enhance(1.2))) <= 6
    assert hamming(h, phash(image.resize((image.width // 2, image.height // 2)))) <= 6


def test_different_photos_are_far_apart(images):
    hashes = {name: phash(image) for name, image in images.items()}
    for a, b in itertools.combinations(PHOTOS, 2):
        assert hamming(hashes[a], hashes[b]) >= 20, (a, b)


def test_hash_accepts_arrays_and_is_64_bit(images):
    rgb = np.asarray(images["coffee"])
    assert phash(rgb) == phash(images["coffee"])
    grey = np.asarray(images["coffee"].convert("L"))
    assert hamming(phash(grey), phash(images["coffee"])) <= 2
    assert 0 <= phash(rgb) < 2 ** 64


@dataclass(frozen=True)
class _Frame:
    name: str
    scene: int
    phash: int


def _frames(images, spec):
    return [_Frame(f"{name}@{scene}#{i}", scene, phash(images[name])) for i, (name, scene) in enumerate(spec)]


def test_identical_frames_in_one_scene_are_merged(images):
    frames = _frames(images, [("coffee", 0), ("coffee", 0), ("coffee", 0), ("rocket", 1)])
    kept = NearDuplicateFilter().keep(frames)
    assert [f.name for f in kept] == ["coffee@0#0", "rocket@1#3"]


def test_a_scene_never_loses_its_only_frame(images):
    frames = _frames(images, [("coffee", 0), ("coffee", 1), ("coffee", 2)])
    assert NearDuplicateFilter().keep(frames) == frames


def test_cross_scene_duplicate_dropped_only_when_its_scene_keeps_another_frame(images):
    frames = _frames(images, [("coffee", 0), ("rocket", 1), ("coffee", 1)])
    kept = NearDuplicateFilter().keep(frames)
    assert [f.name for f in kept] == ["coffee@0#0", "rocket@1#1"]


def test_distinct_photos_are_all_kept(images):
    frames = _frames(images, [(name, 0) for name in PHOTOS])
    assert NearDuplicateFilter().keep(frames) == frames


def test_thresholds_are_per_scene_relation():
    a = _Frame("a", 0, 0)
    b_same = _Frame("b", 0, (1 << 15) - 1)  # 15 bits away, same scene: duplicate at 18
    c_other = _Frame("c", 1, (1 << 15) - 1)  # 15 bits away, other scene: distinct at 10
    d_other = _Frame("d", 1, (1 << 8) - 1)  # 8 bits away, other scene, scene 1 already kept c
    kept = NearDuplicateFilter(same_scene_max=18, any_scene_max=10).keep([a, b_same, c_other, d_other])
    assert [f.name for f in kept] == ["a", "c"]


@pytest.mark.parametrize("kwargs", [{"same_scene_max": -1}, {"any_scene_max": 65}])
def test_filter_rejects_bad_thresholds(kwargs):
    with pytest.raises(ValueError):
        NearDuplicateFilter(**kwargs)
