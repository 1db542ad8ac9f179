"""Shapes: a synthetic video dataset that needs no download and has checkable content.

Each clip shows one coloured shape (circle, square, triangle) moving in a straight line (left, right,
up, down) at one of two speeds over a dark background. The caption is derived from the content, so
generated videos can be scored for colour and direction (see opensora_lite.eval.shapes). Clips vary
in aspect ratio, duration and fps, and are stored as real H.264 mp4 in WebDataset tar shards.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from opensora_lite.config.schema import ShapesConfig

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 200, 55),
    "blue": (45, 80, 235),
    "yellow": (230, 215, 35),
    "magenta": (215, 45, 215),
    "cyan": (35, 210, 220),
}
# Colours the default data never shows: a LoRA stage can teach one to a trained model (docs/lora.md).
# Kept apart from COLOURS, so the default data, prompts and evaluation are unchanged by them.
NEW_COLOURS: dict[str, tuple[int, int, int]] = {"orange": (245, 135, 20)}
ALL_COLOURS = {**COLOURS, **NEW_COLOURS}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SPEEDS: dict[str, float] = dict(ShapesConfig().speeds)  # frame extents per second: slow 0.5, fast 0.9


CAPTION = ShapesConfig().caption  # "a {speed} {colour} {shape} moving {direction}"


def caption_for(colour: str, shape: str, direction: str, speed: str) -> str:
    """The caption the default Shapes data gives these labels (the evaluation's probe prompts)."""
    return CAPTION.format(colour=colour, shape=shape, direction=direction, speed=speed)


def _shape_mask(shape: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = ys - cy, xs - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        half = r * 0.85
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    if shape == "triangle":  # apex up, equilateral-ish, centred on its bounding box
        inside_y = (dy >= -r) & (dy <= r * 0.8)
        half_width = (dy + r) / (1.8 * r) * r
        return inside_y & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def render_frame(
    h: int, w: int, shape: str, colour: tuple[int, int, int], cy: float, cx: float, r: float, bg: int, ss: int = 4
) -> np.ndarray:
    """One anti-aliased frame (ss x ss supersampling) as uint8 [h, w, 3]."""
    ys = (np.arange(h * ss) + 0.5) / ss
    xs = (np.arange(w * ss) + 0.5) / ss
    mask = _shape_mask(shape, ys[:, None], xs[None, :], cy, cx, r).astype(np.float32)
    cover = mask.reshape(h, ss, w, ss).mean(axis=(1, 3))[..., None]
    frame = bg + cover * (np.asarray(colour, np.float32) - bg)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def render_clip(rng: np.random.Generator, cfg: ShapesConfig) -> tuple[np.ndarray, dict]:
    """A random clip and its metadata (content labels, caption, fps, size)."""
    h, w = (int(v) for v in cfg.sizes[rng.integers(len(cfg.sizes))])
    fps = float(cfg.fps[rng.integers(len(cfg.fps))])
    colour = cfg.colours[rng.integers(len(cfg.colours))]  # the default list: the same draws as always
    shape = SHAPES[rng.integers(len(SHAPES))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    speed = list(cfg.speeds)[rng.integers(len(cfg.speeds))]
    diameter = rng.uniform(*cfg.size_range) * min(h, w)
    r = diameter / 2
    dy, dx = DIRECTIONS[direction]
    extent = h if dy else w
    room = extent - 2 * r  # how far the centre can travel along the motion axis
    velocity = cfg.speeds[speed] * extent  # pixels per second
    seconds = min(rng.uniform(cfg.min_seconds, cfg.max_seconds), room / velocity)
    n = max(2, int(round(seconds * fps)))
    travel = velocity * (n - 1) / fps
    start_along = rng.uniform(r, extent - r - travel)
    across_extent = w if dy else h
    across = rng.uniform(r, across_extent - r)
    bg = int(rng.integers(0, cfg.max_background + 1))
    frames = []
    for i in range(n):
        along = start_along + velocity * i / fps
        if dy:  # vertical motion: along is y
            cy = along if dy > 0 else extent - along
            cx = across
        else:
            cx = along if dx > 0 else extent - along
            cy = across
        frames.append(render_frame(h, w, shape, ALL_COLOURS[colour], cy, cx, r, bg))
    meta = {
        "caption": cfg.caption.format(colour=colour, shape=shape, direction=direction, speed=speed),
        "colour": colour,
        "shape": shape,
        "direction": direction,
        "speed": speed,
        "fps": fps,
        "num_frames": n,
        "height": h,
        "width": w,
        "duration": n / fps,
        "background": bg,
    }
    return np.stack(frames), meta


def write_shapes_shards(out_dir: str | Path, cfg: ShapesConfig, progress: bool = True) -> list[Path]:
    """Render cfg.num_clips clips into WebDataset shards out_dir/shapes-NNNNNN.tar (mp4 + json + txt).

    Shards are written to a temporary name and renamed when complete, so an interrupted run never
    leaves a truncated shard under its final name.
    """
    import webdataset as wds
    from tqdm import tqdm

    from opensora_lite.data.video import encode_mp4

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    num_shards = math.ceil(cfg.num_clips / cfg.clips_per_shard)
    paths = []
    bar = tqdm(total=cfg.num_clips, desc="shapes", unit="clip", disable=not (progress and sys.stderr.isatty()))
    for s in range(num_shards):
        final = out / f"shapes-{s:06d}.tar"
        tmp = final.with_suffix(".tar.partial")
        with wds.TarWriter(str(tmp)) as sink:
            for i in range(s * cfg.clips_per_shard, min(cfg.num_clips, (s + 1) * cfg.clips_per_shard)):
                frames, meta = render_clip(rng, cfg)
                sink.write(
                    {
                        "__key__": f"clip{i:07d}",
                        "mp4": encode_mp4(frames, meta["fps"], crf=cfg.crf),
                        "json": json.dumps(meta).encode(),
                        "txt": meta["caption"].encode(),
                    }
                )
                bar.update(1)
        tmp.rename(final)
        paths.append(final)
    bar.close()
    return paths


def write_shapes_folder(out_dir: str | Path, cfg: ShapesConfig, progress: bool = True) -> list[Path]:
    """Render cfg.num_clips clips (the clips `write_shapes_shards` renders for cfg) as plain files:
    out_dir/clipNNNNNNN.mp4 with its caption beside it (.txt) and its labels (.json), the folder layout
    `osl-data kind=videos` ingests. Each file is written under a temporary name and renamed."""
    from tqdm import tqdm

    from opensora_lite.data.video import encode_mp4

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    paths = []
    for i in tqdm(range(cfg.num_clips), desc="shapes", unit="clip", disable=not (progress and sys.stderr.isatty())):
        frames, meta = render_clip(rng, cfg)
        path = out / f"clip{i:07d}.mp4"
        for suffix, data in ((".json", json.dumps(meta).encode()), (".txt", meta["caption"].encode())):
            _publish(path.with_suffix(suffix), data)
        _publish(path, encode_mp4(frames, meta["fps"], crf=cfg.crf))
        paths.append(path)
    return paths


def _publish(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.rename(path)
