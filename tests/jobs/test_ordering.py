"""plan_lease: images first, aged videos before them, never more than the worker has room for."""

from __future__ import annotations

import itertools

import pytest

from fastvlm_engine.jobs.ordering import LeasePlan, plan_lease


def plan(**kwargs) -> LeasePlan:
    values = {"images": 4, "videos": 4, "limit": None, "queued_images": 0, "queued_videos": 0, "aged_videos": 0}
    return plan_lease(**(values | kwargs))


def test_without_a_shared_limit_each_kind_fills_its_own_room():
    assert plan(images=3, videos=1, queued_images=10, queued_videos=10).takes == (("image", 3), ("video", 1))
    assert plan(images=3, videos=2, queued_images=1, queued_videos=0).takes == (("image", 1),)


def test_with_a_shared_limit_images_come_first():
    assert plan(limit=2, queued_images=5, queued_videos=5).takes == (("image", 2),)
    assert plan(limit=4, queued_images=1, queued_videos=5).takes == (("image", 1), ("video", 3))


def test_aged_videos_go_before_images_and_only_the_aged_ones():
    assert plan(limit=1, queued_images=5, queued_videos=3, aged_videos=1).takes == (("video", 1),)
    assert plan(limit=3, queued_images=5, queued_videos=3, aged_videos=1).takes == (("video", 1), ("image", 2))
    assert plan(limit=8, queued_images=2, queued_videos=3, aged_videos=2).takes == (
        ("video", 2), ("image", 2), ("video", 1))


def test_a_worker_without_video_room_takes_no_video_however_old():
    assert plan(videos=0, limit=2, queued_images=1, queued_videos=4, aged_videos=4).takes == (("image", 1),)


def test_nothing_queued_or_no_room_takes_nothing():
    assert plan().takes == ()
    assert plan(limit=0, queued_images=3, queued_videos=3, aged_videos=3).takes == ()
    assert plan(images=0, videos=0, queued_images=3, queued_videos=3).takes == ()


@pytest.mark.parametrize("bad", [{"images": -1}, {"videos": -1}, {"limit": -1}, {"queued_images": -2},
                                 {"aged_videos": -1}])
def test_negative_counts_are_refused(bad):
    with pytest.raises(ValueError, match="negative"):
        plan(**bad)


def test_every_plan_respects_every_bound():
    for images, videos, limit, queued_images, queued_videos in itertools.product(
            range(3), range(3), [None, 0, 1, 2, 5], range(4), range(4)):
        for aged in range(queued_videos + 1):
            result = plan(images=images, videos=videos, limit=limit, queued_images=queued_images,
                          queued_videos=queued_videos, aged_videos=aged)
            assert result.count("image") <= min(images, queued_images)
            assert result.count("video") <= min(videos, queued_videos)
            if limit is not None:
                assert result.total <= limit
            room = min(images, queued_images) + min(videos, queued_videos)
            assert result.total == (room if limit is None else min(limit, room))  # never leaves a slot idle
            if aged and videos and (limit is None or limit > 0):
                assert result.takes[0][0] == "video"  # an aged video is never behind an image
