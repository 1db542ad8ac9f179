"""From a source (a folder, a file list, an index, or existing shards) to clips: each source video is decoded
once at thumbnail size for scene detection (PySceneDetect's ContentDetector) and motion, cut into scenes
and windows of at most `split.max_window_s`, and decoded a second time for each window's sampled frames
and, where a window is only part of the file, its frames re-encoded as the window's own mp4."""

from __future__ import annotations

import glob
import io
import re
import tarfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from opensora_lite.config.schema import CurateJobConfig, SplitStageConfig
from opensora_lite.data.ingest import VIDEO_SUFFIXES, list_folder, read_index, sidecar_caption
from opensora_lite.data.video import (
    VideoDecodeError,
    frame_rotation,
    frame_to_rgb,
    open_memory_output,
    probe,
    upright_size,
)
from opensora_lite.errors import DataError


@dataclass
class Source:
    """One input video: a file, or a sample of an existing shard (`member`: its key there)."""

    path: str
    caption: str | None = None  # None: the sidecar's, when there is one
    member: str | None = None
    member_ext: str = ""  # the member's extension in the shard

    @property
    def ext(self) -> str:
        """The container's extension (mp4, mkv, webm, ...), stored with a clip that keeps the source's bytes."""
        return self.member_ext if self.member else Path(self.path).suffix.lower().lstrip(".")

    @property
    def name(self) -> str:
        return f"{self.path}#{self.member}" if self.member else self.path

    def read(self) -> bytes:
        if self.member is None:
            return Path(self.path).read_bytes()
        with tarfile.open(self.path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                if key == self.member and "." + ext.lower() in VIDEO_SUFFIXES:
                    return tar.extractfile(m).read()
        raise FileNotFoundError(f"{self.name}: no video in the shard")


@dataclass
class Clip:
    """A window [start, end) of a source video's frames, with what the stages look at."""

    key: str
    source: str
    caption: str
    start: int
    end: int
    fps: float
    width: int  # upright
    height: int
    thumbs: np.ndarray  # grey [T, h, w] of every frame of the window at motion.thumb_height
    samples: list[np.ndarray] = field(default_factory=list)  # RGB frames spread over the window
    data: bytes = b""  # the window as an encoded video (the file's own bytes when the window is all of it)
    ext: str = "mp4"  # data's container: the source's when its bytes are kept, else mp4

    @property
    def duration(self) -> float:
        return (self.end - self.start) / self.fps if self.fps else 0.0


def list_sources(spec: str, cfg: CurateJobConfig) -> list[Source]:
    """Every input in a stable order: a folder (videos, recursively), a .txt list (a path per line), a
    .csv/.tsv/.parquet index (path and caption columns), or shards (a .tar, or a folder or glob of them)."""
    path = Path(spec)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path] if path.suffix == ".tar" else []
    if "*" in spec:
        shards = sorted(Path(p) for p in glob.glob(spec))
    if shards:
        return [src for shard in shards for src in _shard_sources(shard)]
    if path.is_dir():
        return [Source(i.path) for i in list_folder(path) if Path(i.path).suffix.lower() in VIDEO_SUFFIXES]
    if path.suffix.lower() == ".txt" and path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return [Source(str(path.parent / ln) if not Path(ln).is_absolute() else ln) for ln in lines if ln]
    if path.is_file():
        return [Source(i.path, i.caption) for i in read_index(path, cfg.path_column, cfg.caption_column, None)]
    raise DataError(f"source {spec} does not exist (a folder, a .txt list, a .csv/.parquet index, or shards)")


def _shard_sources(shard: Path) -> list[Source]:
    captions: dict[str, str] = {}
    keys: dict[str, str] = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            if ext == "txt":
                captions[key] = tar.extractfile(m).read().decode("utf-8", "replace").strip()
            elif "." + ext.lower() in VIDEO_SUFFIXES:
                keys[key] = ext.lower()
    return [Source(str(shard), captions.get(k, ""), member=k, member_ext=e) for k, e in keys.items()]


def scan(data: bytes, split: SplitStageConfig | None, thumb_height: int) -> tuple[float, list[int], np.ndarray]:
    """(fps, scene starts (frame indices, the first 0), grey thumbnails of every frame): one decode, through
    PySceneDetect's ContentDetector when `split` is given (else one scene)."""
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import ContentDetector

    thumbs, cuts = [], [0]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise VideoDecodeError("no frame rate")
        detector = None
        if split is not None:
            detector = ContentDetector(threshold=split.threshold, min_scene_len=max(1, round(split.min_scene_s * fps)))
        size = None
        for i, frame in enumerate(container.decode(stream)):
            if size is None:
                h, w = upright_size(frame.height, frame.width, frame_rotation(frame))
                height = split.detect_height if split is not None else thumb_height
                size = (height, max(2, round(w * height / h)))
                tsize = (thumb_height, max(2, round(w * thumb_height / h)))
            rgb = frame_to_rgb(frame, size)
            if detector is not None:
                code = FrameTimecode(i, fps=fps)
                cuts += [c.frame_num for c in detector.process_frame(code, np.ascontiguousarray(rgb[..., ::-1]))]
            grey = rgb.mean(axis=2).astype(np.uint8)
            thumbs.append(grey if grey.shape == tsize else _resize(grey, tsize))
        if thumbs and detector is not None:
            cuts += [c.frame_num for c in detector.post_process(FrameTimecode(len(thumbs) - 1, fps=fps))]
    if not thumbs:
        raise VideoDecodeError("no frames")
    starts = sorted({c for c in cuts if 0 <= c < len(thumbs)})
    return fps, starts, np.stack(thumbs)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def windows(starts: list[int], total: int, fps: float, max_window_s: float) -> list[tuple[int, int]]:
    """Scenes [start, end) from their starts, each longer than max_window_s cut into equal windows."""
    out = []
    bounds = [*starts, total]
    longest = max(1, int(max_window_s * fps + 1e-6)) if max_window_s > 0 else total
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = -(-(b - a) // longest)
        edges = [a + (b - a) * k // n for k in range(n + 1)]
        out += list(zip(edges[:-1], edges[1:]))
    return out


def sample_positions(start: int, end: int, count: int) -> list[int]:
    """`count` frames spread over [start, end), away from the edges (a cut's neighbours blend)."""
    n = end - start
    return sorted({start + min(n - 1, int((k + 0.5) * n / count)) for k in range(count)})


class _Mp4Stream:
    """An H.264 mp4 written into memory frame by frame (encode_mp4's settings, crf 18), so a long source's
    windows are re-encoded without holding their frames."""

    def __init__(self, fps: float, crf: int = 18) -> None:
        self.buf, self.fps, self.crf = io.BytesIO(), fps, crf
        self.container = open_memory_output(self.buf, "mp4")
        self.stream = None

    def add(self, rgb: np.ndarray) -> None:
        rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])  # yuv420p: even sizes
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.width, self.stream.height, self.stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            self.stream.options = {"crf": str(self.crf), "preset": "veryfast", "tune": "zerolatency"}
        self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))

    def close(self) -> bytes:
        if self.stream is not None:
            self.container.mux(self.stream.encode())
        self.container.close()
        return self.buf.getvalue()


def cut(
    data: bytes, spans: list[tuple[int, int]], positions: list[list[int]], sample_height: int
) -> tuple[list[list[np.ndarray]], list[bytes]]:
    """For each window: its sampled RGB frames (at most `sample_height` high), and its own mp4 when it is
    not the whole video (re-encoded at the stored size, one window at a time; H.264 cuts need keyframes,
    so no stream copy)."""
    total = spans[-1][1]
    whole = len(spans) == 1 and spans[0][0] == 0
    wanted = {p: w for w, ps in enumerate(positions) for p in ps}
    samples: list[list[np.ndarray]] = [[] for _ in spans]
    encoded: list[bytes] = [data] if whole else []
    which = np.zeros(total, int)
    for w, (a, b) in enumerate(spans):
        which[a:b] = w
    writer = None
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        for i, frame in enumerate(container.decode(stream)):
            if i >= total:
                break
            full = frame_to_rgb(frame) if not whole or i in wanted else None
            if i in wanted:
                h = min(sample_height, full.shape[0])
                samples[wanted[i]].append(_resize(full, (h, max(2, round(full.shape[1] * h / full.shape[0])))))
            if not whole:
                if i == spans[which[i]][0]:  # a window starts: the previous one is complete
                    if writer is not None:
                        encoded.append(writer.close())
                    writer = _Mp4Stream(fps)
                writer.add(full)
    if writer is not None:
        encoded.append(writer.close())
    if len(encoded) != len(spans):
        raise VideoDecodeError(f"decoded {len(encoded)} of {len(spans)} windows: the second decode ended early")
    return samples, encoded


def clips_of(index: int, src: Source, cfg: CurateJobConfig) -> list[Clip]:
    """The clips of one source (raises VideoDecodeError / av errors / OSError on one that cannot be read)."""
    data = src.read()
    if not data:
        raise VideoDecodeError("empty file")
    info = probe(data)
    split = "split" in cfg.stages
    fps, starts, thumbs = scan(data, cfg.split if split else None, cfg.motion.thumb_height)
    spans = windows(starts, len(thumbs), fps, cfg.split.max_window_s if split else 0)
    positions = [sample_positions(a, b, cfg.frames) for a, b in spans]
    samples, encoded = cut(data, spans, positions, max(cfg.ocr.height, cfg.blur.height))
    caption = src.caption if src.caption is not None else (sidecar_caption(Path(src.path)) or "")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(src.member or src.path).stem)[:48]
    return [
        Clip(
            key=f"{index:08d}_{w:03d}_{stem}",  # no dots: webdataset splits keys from extensions at the first
            source=src.name,
            caption=caption,
            start=a,
            end=b,
            fps=fps,
            width=info.width,
            height=info.height,
            thumbs=thumbs[a:b],
            samples=samples[w],
            data=encoded[w],
            ext=src.ext if encoded[w] is data else "mp4",
        )
        for w, (a, b) in enumerate(spans)
    ]
