"""Bucket tables with Open-Sora's semantics."""

import random

import pytest

from opensora_lite.data.buckets import BucketTable, aspect_table, bucket_size, parse_resolution


def test_resolution_names_and_sizes():
    assert parse_resolution("256px") == 256
    with pytest.raises(ValueError):
        parse_resolution("256")
    assert bucket_size(256, 1.0, 16) == (256, 256)
    h, w = bucket_size(256, 9 / 16, 16)
    assert h % 16 == 0 and w % 16 == 0 and abs(h / w - 9 / 16) < 0.03 and abs(h * w - 256**2) / 256**2 < 0.05
    table = aspect_table("768px", [0.5625, 1.0, 1.7778], 16)
    assert table[1.0] == (768, 768) and table[0.5625][0] < table[0.5625][1]


def test_assignment_prefers_largest_fitting_bucket_and_uses_its_batch_size():
    table = BucketTable(
        {"16px": {1: [1.0, 64], 5: [1.0, 16], 9: [1.0, 8]}, "24px": {5: [1.0, 4]}}, [0.75, 1.0, 1.3333], 2
    )
    rng = random.Random(0)
    big = table.assign(64, 64, num_frames=20, rng=rng)
    assert (big.resolution, big.num_frames, big.batch_size, big.height, big.width) == ("24px", 5, 4, 24, 24)
    small = table.assign(20, 20, num_frames=20, rng=rng)  # too small for 24px: falls to 16px, longest clip
    assert (small.resolution, small.num_frames, small.batch_size) == ("16px", 9, 8)
    short = table.assign(20, 20, num_frames=6, rng=rng)
    assert short.num_frames == 5
    image = table.assign(20, 20, num_frames=1, rng=rng)  # an image only fits 1-frame buckets
    assert image.num_frames == 1 and image.batch_size == 64
    portrait = table.assign(64, 48, 20, rng)
    assert portrait.height > portrait.width and portrait.key == f"24px-5f-{portrait.height}x{portrait.width}"
    assert table.assign(8, 8, 20, rng) is None  # smaller than every resolution: skipped


def test_probability_lets_samples_fall_through_to_the_next_bucket():
    table = BucketTable({"16px": {9: [0.25, 8], 5: [1.0, 16]}}, [1.0], 2)
    rng = random.Random(0)
    picks = [table.assign(32, 32, 20, rng).num_frames for _ in range(4000)]
    assert picks.count(9) / len(picks) == pytest.approx(0.25, abs=0.03)
    lonely = BucketTable({"16px": {9: [0.5, 8]}}, [1.0], 2)
    results = [lonely.assign(32, 32, 20, rng) for _ in range(2000)]
    assert sum(r is None for r in results) / 2000 == pytest.approx(0.5, abs=0.05)


def test_bad_batch_size_is_rejected():
    with pytest.raises(ValueError, match="batch size"):
        BucketTable({"16px": {5: [1.0, 2.5]}}, [1.0], 2)
