"""osl-data kind=videos: real mp4s/images with captions -> real tar shards with probed metadata and a
motion score; unreadable inputs skipped and listed; the shards train through the loader."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter

import numpy as np
from conftest import cli, typed

from opensora_lite.data.buckets import BucketTable
from opensora_lite.data.loader import BucketedVideoStream, expand_shards, frames_on_device
from opensora_lite.data.video import encode_mp4


def _clip(n: int, h: int, w: int, moving: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.full((n, h, w, 3), rng.integers(20, 200, size=3), np.uint8)
    for t in range(n):
        x = (4 * t) % (w - 16) if moving else w // 2
        frames[t, h // 3 : h // 3 + 16, x : x + 16] = 255
    return frames


def _png(h: int, w: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root):
    (root / "sub").mkdir(parents=True)
    (root / "moving.mp4").write_bytes(encode_mp4(_clip(24, 48, 64, True, 0), 24.0))
    (root / "moving.txt").write_text("a white square moving right")
    (root / "sub" / "still.mp4").write_bytes(encode_mp4(_clip(30, 64, 48, False, 1), 30.0))
    (root / "sub" / "still.json").write_text(json.dumps({"caption": "a white square, still"}))
    (root / "photo.png").write_bytes(_png(40, 56))
    (root / "photo.txt").write_text("a grey photo")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "corrupt.txt").write_text("never read")
    (root / "empty.mp4").write_bytes(b"")
    (root / "empty.txt").write_text("never read")
    (root / "uncaptioned.mp4").write_bytes(encode_mp4(_clip(8, 32, 32, True, 2), 8.0))
    return root


def _samples(shard_dir):
    out = {}
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_folder_to_shards_with_metadata_motion_and_skip_report(tmp_path):
    src = _folder(tmp_path / "videos")
    out = tmp_path / "shards"
    proc = cli("osl-data", "kind=videos", f"videos.source={src}", f"out={out}", "videos.samples_per_shard=2")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 of 6 inputs in 2 shards" in proc.stdout
    assert "'unreadable_media': 1" in proc.stdout and "'empty_file': 1" in proc.stdout
    assert "'missing_caption': 1" in proc.stdout
    rows = (out / "skipped.tsv").read_text().splitlines()[1:]
    assert sorted(r.split("\t")[1] for r in rows) == ["empty_file", "missing_caption", "unreadable_media"]
    assert not list(out.glob(".tmp-*"))

    samples = {json.loads(s["json"])["source"].split("/")[-1]: s for s in _samples(out).values()}
    assert set(samples) == {"moving.mp4", "still.mp4", "photo.png"}
    moving, still, photo = (json.loads(samples[k]["json"]) for k in ("moving.mp4", "still.mp4", "photo.png"))
    assert (moving["num_frames"], moving["fps"], moving["height"], moving["width"]) == (24, 24.0, 48, 64)
    assert moving["duration"] == 1.0 and still["num_frames"] == 30 and still["fps"] == 30.0
    assert still["motion_score"] < 0.5 < moving["motion_score"]  # a still shot scores ~0
    assert photo["num_frames"] == 1 and photo["motion_score"] == 0.0 and "png" in samples["photo.png"]
    assert samples["still.mp4"]["txt"] == b"a white square, still"  # from the json sidecar
    assert samples["moving.mp4"]["mp4"] == (src / "moving.mp4").read_bytes()  # bytes untouched

    # The shards feed the loader, with Open-Sora's caption suffix applied at read time.
    stream = BucketedVideoStream(
        expand_shards(str(out)),
        BucketTable({"16px": {1: [1.0, 1], 5: [1.0, 1]}}, [0.75, 1.0, 1.3333], 4),
        target_fps=8.0,
        seed=0,
        shuffle_buffer=1,
        caption_template="{caption} {fps:.0f} FPS, {motion_score:.1f} motion score.",
    )
    it = iter(stream)
    captions = Counter()
    for _ in range(6):
        batch = next(it)
        captions.update(batch["captions"])
    assert any(c.startswith("a white square moving right 24 FPS, ") and c.endswith(" motion score.") for c in captions)
    assert "a grey photo 0 FPS, 0.0 motion score." in captions


def test_csv_index_with_relative_paths_and_missing_files(tmp_path):
    _folder(tmp_path / "videos")
    index = tmp_path / "videos" / "index.csv"
    with open(index, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "text", "extra"])
        w.writerow(["moving.mp4", "from the index", "x"])
        w.writerow(["sub/still.mp4", "still, from the index", "y"])
        w.writerow(["gone.mp4", "a file that is not there", "z"])
    out = tmp_path / "shards"
    proc = cli("osl-data", "kind=videos", f"videos.source={index}", f"out={out}", "videos.workers=1")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 of 3 inputs in 1 shards" in proc.stdout and "'missing_file': 1" in proc.stdout
    captions = sorted(s["txt"] for s in _samples(out).values())
    assert captions == [b"from the index", b"still, from the index"]

    bad = tmp_path / "bad.csv"
    bad.write_text("file,caption\nmoving.mp4,x\n")
    proc = cli("osl-data", "kind=videos", f"videos.source={bad}", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2 and "needs columns 'path' and 'text'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_parquet_index_and_pipe_urls(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _folder(tmp_path / "videos")
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"video": ["videos/moving.mp4"], "caption": ["from parquet"]}), index)
    out = tmp_path / "shards"
    proc = cli(
        "osl-data", "kind=videos", f"videos.source={index}", f"out={out}",
        "videos.path_column=video", "videos.caption_column=caption", "videos.prefix=pq",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shard = out / "pq-000000.tar"
    assert [s["txt"] for s in _samples(out).values()] == [b"from parquet"]
    # a `pipe:` URL streams the same shard through a command, as for object storage
    stream = BucketedVideoStream(
        [f"pipe:cat {shard}"], BucketTable({"16px": {5: [1.0, 1]}}, [0.75, 1.0, 1.3333], 4), 8.0, seed=0
    )
    assert next(iter(stream))["captions"] == ["from parquet"]


def test_bad_caption_template_is_a_config_error(tmp_path):
    proc = cli("osl-curriculum", "data.caption_template='{caption} {fsp} FPS'", "--cfg", "job")
    assert proc.returncode == 2 and "data.caption_template" in proc.stderr and "fsp" in proc.stderr


def _filter_reported_average(data: bytes) -> float:
    """What FFmpeg's vmafmotion filter itself reports ("VMAF Motion avg: x.xxx", logged when its graph
    closes), from a run of its own over the file's frames."""
    import gc
    import re

    import av
    import av.logging

    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as logs:
            with av.open(io.BytesIO(data)) as container:
                stream = container.streams.video[0]
                graph = av.filter.Graph()
                graph.link_nodes(graph.add_buffer(template=stream), graph.add("vmafmotion"), graph.add("buffersink"))
                graph.configure()
                for frame in container.decode(stream):
                    graph.vpush(frame)
                    graph.vpull()
            del graph, frame
            gc.collect()  # the filter logs its average when it is freed
    finally:
        av.logging.set_level(level)
    found = [re.search(r"VMAF Motion avg: ([0-9.]+)", m) for _, _, m in logs]
    return float(next(m for m in found if m).group(1))


def test_vmaf_motion_at_ingest_is_ffmpegs_and_fills_the_opensora2_captions(tmp_path):
    from opensora_lite.data.ingest import SourceItem, prepare, write_shards

    src = tmp_path / "videos"
    src.mkdir()
    fast, slow = _clip(24, 48, 64, True, 0), _clip(24, 48, 64, True, 3)
    slow[:] = slow[np.arange(24) // 4]  # the square moves every 4th frame: less motion
    for name, frames, fps in (("fast", fast, 30.0), ("slow", slow, 24.0)):
        (src / f"{name}.mp4").write_bytes(encode_mp4(frames, fps))
        (src / f"{name}.txt").write_text(f"a {name} square")
    (src / "photo.png").write_bytes(_png(48, 64))
    (src / "photo.txt").write_text("a grey photo")

    scores = {}
    for name in ("fast", "slow"):
        meta = prepare(SourceItem(str(src / f"{name}.mp4"), None)).meta
        reported = _filter_reported_average((src / f"{name}.mp4").read_bytes())
        # per-frame scores come with two decimals, the filter's average with three
        assert abs(meta["vmaf_motion"] - reported) <= 0.006, (name, meta["vmaf_motion"], reported)
        scores[name] = meta["vmaf_motion"]
    assert scores["fast"] > scores["slow"] > 0

    out = tmp_path / "shards"
    write_shards([SourceItem(str(p), None) for p in sorted(src.glob("*.[mp][pn][4g]"))], out, 8, 1, progress=False)
    data = typed(["caption=opensora2", "sample.motion_score=4"]).data
    stream = BucketedVideoStream(
        expand_shards(str(out)),
        BucketTable({"16px": {1: [1.0, 1], 5: [1.0, 1]}}, [0.75], 4),
        target_fps=24.0,
        seed=0,
        shuffle_buffer=1,
        caption_template=data.caption_template,
        image_caption_template=data.image_caption_template,
    )
    it = iter(stream)
    captions = set()
    for _ in range(8):
        captions.update(next(it)["captions"])
    # Open-Sora 2.0's wording: the strided clip's rate (30 fps at 24: every 2nd frame, 15) and the
    # VMAF motion rounded half up; images keep the bare caption
    assert captions == {
        f"a fast square 15 FPS, {int(scores['fast'] + 0.5)} motion score.",
        f"a slow square 24 FPS, {int(scores['slow'] + 0.5)} motion score.",
        "a grey photo",
    }


def test_a_phone_clip_stored_landscape_with_a_rotation_is_read_upright(tmp_path):
    """A portrait clip stored landscape with a display rotation (what phones write) is probed, ingested,
    bucketed and decoded portrait, pixel for pixel the clip as shown."""
    from opensora_lite.data.ingest import SourceItem, write_shards
    from opensora_lite.data.video import decode_window, probe
    from opensora_lite.diffusion.sampling import read_frames

    upright = np.full((12, 64, 48, 3), 30, np.uint8)  # portrait: red band at the top, green at the left
    upright[:, :16, :, 0] = 230
    upright[:, :, :12, 1] = 230
    for rotation in (90, 270, 180):
        stored = np.ascontiguousarray(np.rot90(upright, k=-rotation // 90, axes=(1, 2)))
        data = encode_mp4(stored, 24.0, gop=4, rotation=rotation)
        info = probe(data)
        assert (info.height, info.width, info.rotation) == (64, 48, rotation)
        frames = decode_window(data, 5, 3, 2, (64, 48))  # seeks to a keyframe first
        assert frames.shape == (3, 64, 48, 3)
        assert np.abs(frames.astype(int) - upright[:3]).mean() < 4, rotation  # x264 at crf 18: ~1.6
        half = decode_window(data, 0, 2, 1, (32, 24))  # resized as shown, not as stored
        assert np.abs(half[0].astype(int) - upright[0, ::2, ::2]).mean() < 8
    unrotated = encode_mp4(stored, 24.0)  # the same pixels without the flag stay as stored
    assert decode_window(unrotated, 0, 1, 1, (48, 64)).shape == (1, 48, 64, 3)

    src = tmp_path / "phone"
    src.mkdir()
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))
    (src / "phone.mp4").write_bytes(encode_mp4(stored, 24.0, rotation=90))
    (src / "phone.txt").write_text("a phone video")
    out = tmp_path / "shards"
    write_shards([SourceItem(str(src / "phone.mp4"), None)], out, 8, 1, progress=False)
    meta = json.loads(next(iter(_samples(out).values()))["json"])
    assert (meta["height"], meta["width"], meta["rotation"]) == (64, 48, 90)
    stream = BucketedVideoStream(
        expand_shards(str(out)),
        BucketTable({"32px": {5: [1.0, 1]}}, [0.75, 1.3333], 8),  # a portrait and a landscape shape
        target_fps=24.0,
        seed=0,
        shuffle_buffer=1,
    )
    video = frames_on_device(next(iter(stream))["video"], "cpu")  # [B, 3, T, H, W] in [-1, 1]
    assert video.shape[-2] > video.shape[-1]  # the portrait bucket
    top, left = video[0, :, 0, :2].mean(dim=(1, 2)), video[0, :, 0, :, :2].mean(dim=(1, 2))
    assert top[0] > 0.5 and left[1] > 0.5  # red across the top, green down the left: upright

    (tmp_path / "ref.mp4").write_bytes(encode_mp4(stored, 24.0, rotation=90))  # an i2v reference too
    assert np.abs(read_frames(str(tmp_path / "ref.mp4"), (64, 48))[0].astype(int) - upright[0]).mean() < 4
