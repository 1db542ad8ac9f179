"""Streaming bucketed batches from real shards."""

import io
import tarfile
from collections import Counter

import numpy as np
import pytest

from opensora_lite.data.buckets import BucketTable
from opensora_lite.data.loader import BucketedVideoStream, batches, build_loader, expand_shards
from opensora_lite.errors import DataError

TABLE = {"16px": {5: [1.0, 4]}}


def stream(urls, seed=0, **kw):
    return BucketedVideoStream(urls, BucketTable(TABLE, [0.75, 1.0, 1.3333], 2), 8.0, seed=seed, **kw)


def take(loader_or_stream, n):
    it = iter(loader_or_stream)
    return [next(it) for _ in range(n)]


def test_batches_have_bucket_shapes_and_values(shapes_dir):
    urls = expand_shards(str(shapes_dir))
    assert len(urls) == 4
    for batch in take(stream(urls), 6):
        b, c, t, h, w = batch["video"].shape
        assert (b, c, t) == (4, 3, 5) and (h, w) in {(14, 18), (16, 16), (18, 14)}
        assert batch["bucket"] == f"16px-5f-{h}x{w}"
        assert -1.0 <= float(batch["video"].min()) and float(batch["video"].max()) <= 1.0
        assert len(batch["captions"]) == 4 and all(c.startswith("a ") for c in batch["captions"])


def test_stream_is_deterministic_and_independent_of_worker_count(shapes_dir):
    urls = expand_shards(str(shapes_dir))
    a = [k for b in take(stream(urls), 8) for k in b["keys"]]
    b = [k for b in take(stream(urls), 8) for k in b["keys"]]
    assert a == b
    # two workers see disjoint shards; the same samples get the same crops whoever decodes them
    two = take(build_loader(stream(urls), num_workers=2, prefetch_factor=2, pin_memory=False), 8)
    one = {k: v for bt in take(stream(urls), 14) for k, v in zip(bt["keys"], bt["video"])}  # within epoch 0
    shared = [(k, v) for bt in two for k, v in zip(bt["keys"], bt["video"]) if k in one]
    assert shared and all(np.array_equal(v.numpy(), one[k].numpy()) for k, v in shared)


def test_ranks_split_shards(shapes_dir):
    urls = expand_shards(str(shapes_dir))
    keys = [{k for bt in take(stream(urls, rank=r, world_size=2), 4) for k in bt["keys"]} for r in range(2)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_and_counted(shapes_dir, tmp_path):
    good = sorted(shapes_dir.glob("*.tar"))[0]
    with tarfile.open(good) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = sorted(files)[0].split(".")[0]
    bad = tmp_path / "bad.tar"
    _shard(
        bad,
        [
            ("x1.mp4", b"not a video"),
            ("x1.txt", b"a red circle"),
            ("x2.mp4", files[f"{key}.mp4"]),  # no caption
            ("x3.txt", b"caption without media"),
        ],
    )
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    urls = [str(good), str(bad), str(truncated)]
    skipped = Counter()
    for batch in take(stream(urls, shuffle_buffer=1), 12):
        skipped.update(batch["skipped"])
    assert skipped["corrupt_video"] >= 1 and skipped["missing_caption"] >= 1 and skipped["no_media"] >= 1
    assert skipped["truncated_shard"] >= 1


def test_unusable_data_raises_one_clear_error(tmp_path):
    bad = tmp_path / "bad.tar"
    _shard(bad, [("x1.mp4", b"junk"), ("x1.txt", b"a caption")])
    with pytest.raises(DataError, match="no usable sample"):
        take(batches(build_loader(stream([str(bad)]), num_workers=1, prefetch_factor=2, pin_memory=False)), 1)
