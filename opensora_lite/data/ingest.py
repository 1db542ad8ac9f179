"""Turn videos (and images) with captions into WebDataset shards for training.

Sources: a folder (searched recursively; a caption sidecar `<name>.txt`, or `<name>.json` with a
`caption` or `text` field, beside each file) or an index (`.csv`, or `.parquet` with pyarrow installed)
with a path column and a caption column; relative paths resolve against the index's folder.

Each sample in a shard is `<key>.<ext>` (the file's bytes, untouched), `<key>.json` (probed metadata:
num_frames, fps, width, height (upright, after the display rotation), duration, motion_score,
vmaf_motion, rotation, source path) and `<key>.txt` (the caption). With audio kept (`videos.audio`), a
video's sound track is also decoded, resampled and aligned to its frames (data/audio.py) and stored as
`<key>.wav`, described in the json as `audio` {sample_rate, channels, samples}; a video without sound
gets `audio: null` (marked, not skipped), one whose sound cannot be decoded is skipped (corrupt_audio).
Probing runs in a process pool; shards are written by the parent in input order, each to a temporary
name renamed when complete. Unreadable inputs are skipped, counted by reason and listed in
`<out>/skipped.tsv`.

Motion score: the mean absolute difference of luma (0-255) between frames a quarter of a second apart,
on thumbnails 64 pixels high, averaged over up to 16 pairs spread over the clip. 0 is a still shot;
camera pans and fast action give 10-40. Images get 0. VMAF motion (`vmaf_motion`): FFmpeg's
`vmafmotion` filter averaged over the clip, the score Open-Sora 2.0's captions carry (`motion_scores`).
The caption suffix ("{fps} FPS, {motion} motion score.") is applied when training reads the shards
(`data.caption_template`, presets in configs/caption/), so it can change without rebuilding them.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from opensora_lite.config.schema import AudioDataConfig
from opensora_lite.data.audio import AudioDecodeError, encode_wav, extract_audio
from opensora_lite.data.video import VideoDecodeError, probe
from opensora_lite.errors import DataError

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class SourceItem:
    path: str
    caption: str | None  # None: read the sidecar


@dataclass
class Prepared:
    ok: bool
    path: str
    reason: str = ""  # why it was skipped
    ext: str = ""
    data: bytes = b""
    meta: dict | None = None
    caption: str = ""
    wav: bytes = b""  # the video's sound track, resampled and aligned (audio kept and present)


def list_folder(folder: Path) -> list[SourceItem]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    return [SourceItem(str(p), None) for p in files]


def read_index(path: Path, path_column: str, caption_column: str, root: str | None) -> list[SourceItem]:
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        rows = pq.read_table(path).to_pylist()
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    else:
        raise DataError(f"{path}: an index must be .csv, .tsv or .parquet")
    if rows and (path_column not in rows[0] or caption_column not in rows[0]):
        raise DataError(f"{path}: needs columns {path_column!r} and {caption_column!r}, has {sorted(rows[0])}")
    base = Path(root) if root else path.parent
    return [
        SourceItem(
            str(base / r[path_column]) if not os.path.isabs(r[path_column]) else r[path_column], r[caption_column]
        )
        for r in rows
    ]


def sidecar_caption(path: Path) -> str | None:
    """A video's caption from its `.txt` or `.json` (caption/text) sidecar; None without one."""
    txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip()
    if js.is_file():
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return str(meta.get("caption") or meta.get("text") or "").strip()
    return None


def _vmaf_graph(stream) -> tuple:
    """A filter graph buffer -> vmafmotion -> buffersink for frames of `stream`."""
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    motion = graph.add("vmafmotion")
    sink = graph.add("buffersink")
    source.link_to(motion)
    motion.link_to(sink)
    graph.configure()
    return graph, source, sink


def _drain(sink, scores: list[float]) -> None:
    """Per-frame VMAF motion scores the filter has ready (frame metadata, two decimals)."""
    while True:
        try:
            frame = sink.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        scores.append(float(frame.metadata.get("lavfi.vmafmotion.score", 0.0)))


def motion_scores(data: bytes, info_fps: float, max_pairs: int = 16, gap_s: float = 0.25) -> tuple[float, float]:
    """(motion_score, vmaf_motion) of a video, from one decode of every frame.

    motion_score: our own: mean absolute luma difference between frames gap_s apart, on 64-pixel-high
    thumbnails. vmaf_motion: FFmpeg's `vmafmotion` filter (VMAF's motion feature: blurred-luma SAD
    between neighbouring frames, at the stored size) averaged over all frames, the first counting 0:
    the average `ffmpeg -i clip -vf vmafmotion -f null -` reports, and the number Open-Sora 2.0 put in
    its captions."""
    gap = max(1, round(info_fps * gap_s)) if info_fps > 0 else 1
    vmaf: list[float] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        scale = 64 / max(1, stream.height)
        size = (max(2, round(stream.width * scale)), 64)
        _graph, source, sink = _vmaf_graph(stream)
        frames = []
        for f in container.decode(stream):
            frames.append(f.to_ndarray(format="gray", width=size[0], height=size[1]))
            source.push(f)
            _drain(sink, vmaf)
        source.push(None)  # flush
        _drain(sink, vmaf)
    vmaf_motion = float(np.mean(vmaf)) if vmaf else 0.0
    if len(frames) <= gap:
        return 0.0, vmaf_motion
    starts = np.linspace(0, len(frames) - 1 - gap, num=min(max_pairs, len(frames) - gap)).round().astype(int)
    diffs = [np.abs(frames[i + gap].astype(np.float32) - frames[i].astype(np.float32)).mean() for i in starts]
    return float(np.mean(diffs)), vmaf_motion


def motion_score(data: bytes, info_fps: float, max_pairs: int = 16, gap_s: float = 0.25) -> float:
    """Our motion score alone (see `motion_scores`)."""
    return motion_scores(data, info_fps, max_pairs, gap_s)[0]


def video_meta(data: bytes) -> dict | None:
    """The json metadata of an encoded video as a shard stores it (None: no frames or no frame rate);
    raises VideoDecodeError or av's errors on media that cannot be read."""
    info = probe(data)
    if info.num_frames < 1 or info.fps <= 0:
        return None
    motion, vmaf = motion_scores(data, info.fps)
    return dict(
        num_frames=info.num_frames,
        fps=info.fps,
        width=info.width,  # upright: a portrait phone clip stored landscape is portrait here
        height=info.height,
        duration=info.duration,
        motion_score=round(motion, 3),
        vmaf_motion=round(vmaf, 3),
        rotation=info.rotation,
    )


def prepare(item: SourceItem, audio: AudioDataConfig | None = None) -> Prepared:
    """Read, probe and score one input (runs in a worker process); with `audio` enabled, decode its sound."""
    path = Path(item.path)
    if not path.is_file():
        return Prepared(False, item.path, "missing_file")
    caption = item.caption if item.caption is not None else sidecar_caption(path)
    if not caption or not str(caption).strip():
        return Prepared(False, item.path, "missing_caption")
    data = path.read_bytes()
    if not data:
        return Prepared(False, item.path, "empty_file")
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            with av.open(io.BytesIO(data)) as container:
                frame = next(container.decode(video=0))
            meta = dict(
                num_frames=1,
                fps=0.0,
                width=frame.width,
                height=frame.height,
                duration=0.0,
                motion_score=0.0,
                vmaf_motion=0.0,
            )
        elif suffix in VIDEO_SUFFIXES:
            meta = video_meta(data)
            if meta is None:
                return Prepared(False, item.path, "no_frames")
        else:
            return Prepared(False, item.path, "unknown_extension")
    except (VideoDecodeError, av.error.FFmpegError, StopIteration, IndexError):
        return Prepared(False, item.path, "unreadable_media")
    wav = b""
    if audio is not None and audio.enabled and suffix in VIDEO_SUFFIXES:
        try:
            pcm = extract_audio(data, audio.sample_rate, audio.layout, meta["num_frames"])
        except AudioDecodeError:
            return Prepared(False, item.path, "corrupt_audio")
        meta["audio"] = None  # no sound track: marked, still used
        if pcm is not None:
            wav = encode_wav(pcm, audio.sample_rate)
            meta["audio"] = {"sample_rate": audio.sample_rate, "channels": int(pcm.shape[0]), "samples": pcm.shape[1]}
    meta["source"] = item.path
    caption = str(caption).strip()
    return Prepared(True, item.path, ext=suffix.lstrip("."), data=data, meta=meta, caption=caption, wav=wav)


def _key(index: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:60]
    return f"{index:08d}_{stem}"  # no dots: webdataset splits keys from extensions at the first one


class ShardSink:
    """Prepared samples into `<out>/<prefix>-NNNNNN.tar`, `samples_per_shard` each, in the order written;
    each shard goes to a temporary name renamed when complete, so a reader never sees half a shard.
    The one shard writer: `osl-data kind=videos` and `osl-curate` both write through it."""

    def __init__(self, out: Path, samples_per_shard: int, prefix: str = "data") -> None:
        self.out, self.per_shard, self.prefix = Path(out), samples_per_shard, prefix
        self.shards: list[Path] = []
        self.written = 0
        self._tar, self._tmp, self._count = None, None, 0

    def write(self, key: str, res: Prepared) -> None:
        """One sample: the media's bytes under its extension, the json metadata, the caption, the sound."""
        import webdataset as wds

        if self._tar is None:
            self._tmp = self.out / f".tmp-{self.prefix}-{len(self.shards):06d}.tar"
            self._tar, self._count = wds.TarWriter(str(self._tmp)), 0
        sample = {"__key__": key, res.ext: res.data}
        if res.wav:
            sample["wav"] = res.wav
        self._tar.write({**sample, "json": json.dumps(res.meta).encode(), "txt": res.caption.encode()})
        self._count += 1
        self.written += 1
        if self._count == self.per_shard:
            self._publish()

    def _publish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            final = self.out / self._tmp.name.removeprefix(".tmp-")
            self._tmp.rename(final)
            self.shards.append(final)
            self._tar = None

    def close(self) -> list[Path]:
        """Publish the last, partly filled shard; the shards written."""
        self._publish()
        return self.shards


@dataclass
class IngestReport:
    written: int
    shards: list[Path]
    skipped: Counter


def write_shards(
    items: list[SourceItem],
    out: Path,
    samples_per_shard: int,
    workers: int,
    prefix: str = "data",
    progress: bool = True,
    audio: AudioDataConfig | None = None,
) -> IngestReport:
    from tqdm import tqdm

    if not items:
        raise DataError("no inputs found (videos: " + ", ".join(VIDEO_SUFFIXES) + ")")
    out.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    skipped_rows: list[tuple[str, str]] = []
    sink = ShardSink(out, samples_per_shard, prefix)
    workers = workers or (os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(functools.partial(prepare, audio=audio), items, chunksize=4)
        for i, res in enumerate(tqdm(results, total=len(items), disable=not progress, desc="shards", unit="file")):
            if not res.ok:
                skipped[res.reason] += 1
                skipped_rows.append((res.path, res.reason))
                continue
            sink.write(_key(i, res.path), res)
    shards, written = sink.close(), sink.written
    if skipped_rows:
        with open(out / "skipped.tsv", "w", encoding="utf-8") as fh:
            fh.write("path\treason\n")
            fh.writelines(f"{p}\t{r}\n" for p, r in skipped_rows)
    if written == 0:
        raise DataError(f"none of {len(items)} inputs could be used (skipped: {dict(skipped)})")
    return IngestReport(written, shards, skipped)
