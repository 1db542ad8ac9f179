"""Shapes: a synthetic video dataset that needs no download and has checkable content.

Each clip shows one coloured shape (circle, square, triangle) moving in a straight line (left, right,
up, down) at one of two speeds over a dark background. The caption is derived from the content, so
generated videos can be scored for colour and direction (see opensora_lite.eval.shapes). Clips vary
in aspect ratio, duration and fps, and are stored as real H.264 mp4 in WebDataset tar shards.

With `bounce` > 0 that share of clips shows the shape bouncing: it moves towards a wall, touches it at
the contact frame (its edge on the frame's edge) and comes back at the same speed, so the reversal
happens exactly at the wall. With `sound` each mp4 also carries an AAC track (`soundtrack`): a tone
whose pitch names the colour (PITCHES) for the whole clip, and a click starting exactly at the contact
frame's time, so sound can be scored against what is seen.
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
SPEEDS: dict[str, float] = dict(ShapesConfig().speeds)  # frame extents per second: slow 0.35, fast 1.0
CAPTION = ShapesConfig().caption  # "a {speed} {colour} {shape} moving {direction}"
WALLS = {"left": "left", "right": "right", "up": "top", "down": "bottom"}  # the edge a motion runs into
# The tone of each colour (Hz): C4 E4 G4 B4 D5 F5, and A5 for orange; no two an octave apart, at least
# 58 Hz from one another (about one bin of a 64-bin mel scale at 16 kHz).
PITCHES: dict[str, float] = {
    "red": 261.63,
    "green": 329.63,
    "blue": 392.0,
    "yellow": 493.88,
    "magenta": 587.33,
    "cyan": 698.46,
    "orange": 880.0,
}
TONE_LEVEL = 0.25  # peak of the tone, full scale 1
CLICK_LEVEL = 0.8  # peak of the click
CLICK_HZ = 3000.0  # the click: a decaying 3 kHz burst, far above every tone
CLICK_DECAY_S = 0.0015  # its amplitude falls by e every 1.5 ms (inaudible after ~10 ms)


def caption_for(
    colour: str, shape: str, direction: str, speed: str, bounce: bool = False, template: str = CAPTION
) -> str:
    """The caption Shapes data gives these labels (the evaluation's probe prompts use the default
    template); a bouncing clip names the edge it bounces off."""
    if bounce:
        return f"a {speed} {colour} {shape} bouncing off the {WALLS[direction]} edge"
    return template.format(colour=colour, shape=shape, direction=direction, speed=speed)


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


def reach(shape: str, direction: str, r: float) -> float:
    """How far the shape extends from its centre towards the wall it moves to (_shape_mask's outlines)."""
    if shape == "square":
        return 0.85 * r
    if shape == "triangle" and direction == "down":  # its base; the apex (up) and the sides reach r
        return 0.8 * r
    return r


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
    bounce = cfg.bounce > 0 and rng.random() < cfg.bounce  # no draw at all when bounce is 0: the old clips
    if bounce:
        wall = extent - reach(shape, direction, r)  # where the centre is when the shape touches the wall
        n, contact = _bounce_frames(rng, cfg, fps, (wall - r) / velocity)
        # along the motion axis: at the wall in the contact frame; before and after it as far back as the time
        # from the contact frame carries it (so the reversal happens at the wall, not between frames)
        path = [wall - velocity * abs(i - contact) / fps for i in range(n)]
    else:
        seconds = min(rng.uniform(cfg.min_seconds, cfg.max_seconds), room / velocity)
        n = max(2, int(round(seconds * fps)))
        travel = velocity * (n - 1) / fps
        start_along = rng.uniform(r, extent - r - travel)
        path = [start_along + velocity * i / fps for i in range(n)]
    across_extent = w if dy else h
    across = rng.uniform(r, across_extent - r)
    bg = int(rng.integers(0, cfg.max_background + 1))
    frames = []
    for along in path:
        if dy:  # vertical motion: along is y
            cy = along if dy > 0 else extent - along
            cx = across
        else:
            cx = along if dx > 0 else extent - along
            cy = across
        frames.append(render_frame(h, w, shape, ALL_COLOURS[colour], cy, cx, r, bg))
    meta = {
        "caption": caption_for(colour, shape, direction, speed, bounce, cfg.caption),
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
    if cfg.bounce > 0:  # only then: the default set's metadata stays byte for byte what it was
        meta.update(motion="bounce" if bounce else "straight", contact_frame=contact if bounce else None)
    return np.stack(frames), meta


def _bounce_frames(rng: np.random.Generator, cfg: ShapesConfig, fps: float, leg_s: float) -> tuple[int, int]:
    """(frames, contact frame) of a bounce: the clip's length drawn as for straight motion, at most two
    legs of `leg_s` seconds (the time to cross the room); the contact frame between 20% and 80% of the
    clip where both legs fit, never the first or last frame (the reversal must be seen)."""
    legs = max(1, int(leg_s * fps))  # frames one leg may take without leaving the frame
    n = min(max(3, int(round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * fps))), 2 * legs + 1)
    n = max(n, 3)
    low, high = max(1, n - 1 - legs), min(n - 2, legs)
    mid_low, mid_high = max(low, round(0.2 * (n - 1))), min(high, round(0.8 * (n - 1)))
    if mid_low <= mid_high:
        low, high = mid_low, mid_high
    return n, int(rng.integers(low, high + 1))


def soundtrack(meta: dict, rate: int) -> np.ndarray:
    """A clip's sound as float32 [2, samples] (both channels alike), as long as the clip: the colour's tone
    throughout (5 ms fades at the ends), plus a click from the contact frame's first sample (the window
    rule of data/audio.py: round(contact * rate / fps)) when the shape bounces."""
    from opensora_lite.data.audio import track_samples, window_samples

    fps, n = float(meta["fps"]), int(meta["num_frames"])
    total = track_samples(n, fps, rate)
    t = np.arange(total) / rate
    wave = TONE_LEVEL * np.sin(2 * np.pi * PITCHES[meta["colour"]] * t)
    fade = min(total // 2, round(0.005 * rate))
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
    wave[:fade] *= ramp
    wave[total - fade :] *= ramp[::-1]
    if meta.get("motion") == "bounce":
        at, _ = window_samples(int(meta["contact_frame"]), 1, 1, fps, rate)
        tail = t[: total - at]
        wave[at:] += CLICK_LEVEL * np.exp(-tail / CLICK_DECAY_S) * np.sin(2 * np.pi * CLICK_HZ * tail)
    mono = np.clip(wave, -1.0, 1.0).astype(np.float32)
    return np.stack([mono, mono])


def write_shapes_shards(out_dir: str | Path, cfg: ShapesConfig, progress: bool = True) -> list[Path]:
    """Render cfg.num_clips clips into WebDataset shards out_dir/shapes-NNNNNN.tar (mp4 + json + txt;
    with sound also wav). With `cfg.files` each clip is also written as out_dir/clips/<key>.mp4 with its
    caption (<key>.txt) and labels (<key>.json) beside it: files to watch and hear, and a folder
    `osl-data kind=videos` ingests like your own videos (experiment=tiny_motion_score does).

    Shards are written to a temporary name and renamed when complete, so an interrupted run never
    leaves a truncated shard under its final name.
    """
    import webdataset as wds
    from tqdm import tqdm

    from opensora_lite.data.video import encode_mp4

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.files:
        (out / "clips").mkdir(exist_ok=True)
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
                sample = {"__key__": f"clip{i:07d}"}
                if cfg.sound:
                    sample.update(shapes_media(frames, meta, cfg))
                else:
                    sample["mp4"] = encode_mp4(frames, meta["fps"], crf=cfg.crf)
                sink.write({**sample, "json": json.dumps(meta).encode(), "txt": meta["caption"].encode()})
                if cfg.files:  # the mp4 last: a folder scan that sees it sees its sidecars too
                    clip = out / "clips" / sample["__key__"]
                    for suffix, data in ((".txt", meta["caption"].encode()), (".json", json.dumps(meta).encode())):
                        _publish(clip.with_suffix(suffix), data)
                    _publish(clip.with_suffix(".mp4"), sample["mp4"])
                bar.update(1)
        tmp.rename(final)
        paths.append(final)
    bar.close()
    return paths


def _publish(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.rename(path)


def shapes_media(frames: np.ndarray, meta: dict, cfg: ShapesConfig) -> dict[str, bytes]:
    """A clip with its soundtrack as shard members: the mp4 (H.264 + AAC) and the track `osl-data` ingest
    would store for it (`wav`: the AAC decoded back, aligned and resampled as data/audio.py does), and
    `meta` gains the track's description, as ingest's json has it."""
    from opensora_lite.data.audio import encode_wav, extract_audio
    from opensora_lite.data.video import encode_mp4

    mp4 = encode_mp4(
        frames, meta["fps"], crf=cfg.crf, audio=soundtrack(meta, cfg.sound_rate), sample_rate=cfg.sound_rate
    )
    pcm = extract_audio(mp4, cfg.sound_rate, "stereo", int(meta["num_frames"]))
    meta["audio"] = {"sample_rate": cfg.sound_rate, "channels": 2, "samples": int(pcm.shape[1])}
    meta["pitch_hz"] = PITCHES[meta["colour"]]
    return {"mp4": mp4, "wav": encode_wav(pcm, cfg.sound_rate)}
