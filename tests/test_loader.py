"""Streaming bucketed batches from real shards."""

import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from opensora_lite.data.buckets import BucketTable
from opensora_lite.data.loader import BucketedVideoStream, LoaderState, batches, build_loader, expand_shards
from opensora_lite.data.video import encode_mp4
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
        assert batch["video"].dtype == torch.uint8  # frames travel as bytes; frames_on_device makes the input
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


def test_bad_samples_are_skipped_and_counted(shapes_dir, tmp_path, caplog):
    good = sorted(shapes_dir.glob("*.tar"))[0]
    with tarfile.open(good) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = sorted(files)[0].split(".")[0]
    short = encode_mp4(np.zeros((2, 32, 32, 3), np.uint8), 8.0)  # 2 frames: shorter than every bucket
    bad = tmp_path / "bad.tar"
    _shard(
        bad,
        [
            ("x1.mp4", b"not a video"),
            ("x1.txt", b"a red circle"),
            ("x2.mp4", files[f"{key}.mp4"]),  # no caption
            ("x3.txt", b"caption without media"),
            ("x4.mp4", b""),  # zero-length
            ("x4.txt", b"a red circle"),
            ("x5.xyz", files[f"{key}.mp4"]),  # unknown extension
            ("x5.txt", b"a red circle"),
            ("x6.mp4", short),
            ("x6.txt", b"a red circle"),
        ],
    )
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    urls = [str(good), str(bad), str(truncated), str(tmp_path / "missing.tar"), "pipe:exit 3"]
    skipped = Counter()
    with caplog.at_level("WARNING", logger="opensora_lite.data.loader"):
        for batch in take(stream(urls, shuffle_buffer=1, retry_delay_s=0.01), 12):
            skipped.update(batch["skipped"])
    assert skipped["corrupt_video"] >= 2  # not a video, zero-length
    assert skipped["missing_caption"] >= 1 and skipped["no_media"] >= 2  # caption only, unknown extension
    assert skipped["no_bucket"] >= 1 and skipped["truncated_shard"] >= 1
    assert skipped["unreadable_shard"] >= 2  # the missing file and the failing pipe, each after 3 tries
    messages = [r.getMessage() for r in caplog.records]
    assert any("after 3 tries" in m for m in messages)
    # bounded: at most one warning per reason per minute here, however many samples were skipped
    assert len(messages) <= len({"corrupt_video", "missing_caption", "no_media", "no_bucket"}) + 2 + 1
    assert sum(skipped.values()) > len(messages)


def test_a_shard_cut_off_anywhere_is_counted_as_truncated(shapes_dir, tmp_path):
    """A shard cut off at any byte (a copy that stopped): inside a file's data, inside a header, exactly
    at a header, or after the last file before tar's end-of-archive blocks. Its whole samples are kept,
    the sample the cut runs through is dropped, and the shard counts once as truncated_shard (a cut at
    a header used to read as a shorter archive: the partial sample's caption without its video, no_media)."""
    good = sorted(shapes_dir.glob("*.tar"))[0]
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        members = tar.getmembers()
    key = lambda m: m.name.split(".")[0]  # noqa: E731
    order = list(dict.fromkeys(key(m) for m in members))
    fourth = [m for m in members if key(m) == order[3]]
    cuts = {
        "inside a file's data": (fourth[1].offset_data + 100, 3),
        "inside a header": (fourth[1].offset + 100, 3),
        "at a header": (fourth[1].offset, 3),
        "before the end-of-archive blocks": (-(-(members[-1].offset_data + members[-1].size) // 512) * 512, 23),
    }
    s = stream([str(good)])
    whole = [it.key for it in s.items(str(good), 0, Counter())]
    assert len(order) == 24 and len(whole) == 24
    for where, (cut, kept) in cuts.items():
        path = tmp_path / "cut.tar"
        path.write_bytes(data[:cut])
        skipped = Counter()
        keys = [it.key for it in s.items(str(path), 0, skipped)]
        assert skipped == Counter(truncated_shard=1), where
        assert keys == [k for k in whole if k in order[:kept]], where


def test_a_local_shard_that_cannot_be_read_is_given_up_for_the_run(shapes_dir, tmp_path):
    """A local shard that cannot be read is tried (with back-off) on the first pass over the data only;
    later passes skip it at once and count it. The shard is a named pipe: a writer thread counts the
    times it is opened and hands each reader bytes that are no tar."""
    import os
    import threading
    import time

    broken = tmp_path / "broken.tar"
    os.mkfifo(broken)
    opens, stop = [], threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:  # succeeds only while a reader has the pipe open (or waits in open())
                fd = os.open(broken, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.002)
                continue
            opens.append(time.monotonic())
            os.write(fd, b"this is not a tar archive\n" * 40)
            os.close(fd)
            while not stop.is_set():  # until that reader has closed it
                try:
                    os.close(os.open(broken, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    break
                time.sleep(0.002)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        good = str(sorted(shapes_dir.glob("*.tar"))[0])
        skipped = Counter()
        for batch in take(stream([good, str(broken)], shuffle_buffer=4, open_retries=1, retry_delay_s=0.2), 18):
            skipped.update(batch["skipped"])
    finally:
        stop.set()
        thread.join(5)
    assert len(opens) == 2  # the first pass: a try and one retry; none on the passes after
    assert skipped["unreadable_shard"] >= 3  # counted on every pass (18 batches of 4: three passes over 24 clips)


def test_unusable_data_raises_one_clear_error(tmp_path):
    bad = tmp_path / "bad.tar"
    _shard(bad, [("x1.mp4", b"junk"), ("x1.txt", b"a caption")])
    with pytest.raises(DataError, match="no usable sample"):
        take(batches(build_loader(stream([str(bad)]), num_workers=1, prefetch_factor=2, pin_memory=False)), 1)


def test_two_ranks_by_two_workers_split_every_epoch_disjoint_and_complete(shapes_dir):
    urls = expand_shards(str(shapes_dir))
    for epoch in range(3):
        dealt = [stream(urls, rank=r, world_size=2).shards_for(epoch, w, 2) for r in range(2) for w in range(2)]
        assert sorted(s for part in dealt for s in part) == sorted(urls) and all(len(p) == 1 for p in dealt)
    # real worker processes: each rank's batches come only from its own two shards
    owner = {}
    for url in urls:
        with tarfile.open(url) as tar:
            owner.update({m.name.split(".")[0]: url for m in tar.getmembers()})
    seen = []
    for rank in range(2):
        s = stream(urls, rank=rank, world_size=2)
        loader = build_loader(s, num_workers=2, prefetch_factor=2, pin_memory=False)
        keys = {k for bt in take(loader, 6) for k in bt["keys"]}
        assert {owner[k] for k in keys} <= set(s.shards_for(0, 0, 2) + s.shards_for(0, 1, 2))
        seen.append(keys)
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def _with_undecodable_clips(shapes_dir, tmp_path):
    """The Shapes shards plus one whose clips have valid metadata but cut-off video bytes."""
    good = sorted(shapes_dir.glob("*.tar"))[0]
    with tarfile.open(good) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({n.split(".")[0] for n in files})[:12]
    samples = []
    for i, key in enumerate(keys):
        cut = files[f"{key}.mp4"][: len(files[f"{key}.mp4"]) // 3] if i % 2 else files[f"{key}.mp4"]
        samples += [(f"cut{i}.mp4", cut), (f"cut{i}.json", files[f"{key}.json"]), (f"cut{i}.txt", files[f"{key}.txt"])]
    _shard(tmp_path / "cut.tar", samples)
    return expand_shards(str(shapes_dir)) + [str(tmp_path / "cut.tar")]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_batch_sequence_without_decoding_the_past(shapes_dir, tmp_path, workers):
    urls = _with_undecodable_clips(shapes_dir, tmp_path)
    (tmp_path / "unreadable.tar").write_bytes(b"no tar" * 100)  # skipped on every pass, tried on the first
    urls.append(str(tmp_path / "unreadable.tar"))
    kw = dict(shuffle_buffer=8, world_size=1, retry_delay_s=0.01)

    def loader(resume=None):
        s = stream(urls, resume=resume, **kw)
        return s, (build_loader(s, workers, 2, False) if workers else s)

    _, full = loader()
    reference = take(full, 30)
    consumed = 17
    failed = [k for b in reference[:consumed] for k in b["failed"]]
    assert failed and sum(b["skipped"].get("corrupt_video", 0) for b in reference[:consumed]) == len(failed)

    resumed_stream, resumed = loader(LoaderState(consumed, failed))
    rest = take(resumed, 30 - consumed)
    assert [b["keys"] for b in rest] == [b["keys"] for b in reference[consumed:]]
    for a, b in zip(rest, reference[consumed:]):
        assert torch.equal(a["video"], b["video"])
    if not workers:  # only samples still waiting in bucket buffers were decoded for the replay
        assert resumed_stream.replayed_decodes < 8 < consumed * 4

    state = LoaderState.from_dict(LoaderState(consumed, failed + failed).as_dict())
    assert state.batches == consumed and state.failed == sorted(set(failed))
    assert [state.worker_share(w, 2) for w in range(2)] == [9, 8]


def test_frames_travel_as_bytes_and_are_normalised_where_the_model_runs(shapes_dir):
    """A batch holds uint8 frames (a quarter of float32's bytes through the workers' shared memory and the
    host-to-device copy); frames_on_device gives bitwise the [-1, 1] float32 input the loader used to ship,
    in the same memory layout."""
    from opensora_lite.data.loader import frames_on_device

    s = stream(expand_shards(str(shapes_dir)))
    items = [item for item in s.items(s.urls[0], 0, Counter())][:3]
    items = [it for it in items if it.bucket.key == items[0].bucket.key]
    video = BucketedVideoStream.collate(items, Counter(), [])["video"]
    assert video.dtype == torch.uint8 and video.shape[:2] == (len(items), 3)
    before = (
        torch.from_numpy(np.stack([it.frames for it in items])).permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)
    )
    now = frames_on_device(video, "cpu")
    assert now.dtype == torch.float32 and torch.equal(now, before) and now.stride() == before.stride()
