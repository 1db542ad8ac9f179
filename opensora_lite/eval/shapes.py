"""Score generated Shapes clips: does the dominant colour and the motion direction match the prompt?

Foreground = pixels far from the frame's background (the per-frame median colour; the shape covers a
minority of the frame). Colour = the palette entry whose RGB direction is nearest the mean of strongly
foreground pixels.
Direction = the sign of the dominant axis of a least-squares fit of the foreground centroid over
time; a clip whose centroid moves less than `min_travel` of the frame is called "static".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from opensora_lite.data.synthetic import ALL_COLOURS, COLOURS, DIRECTIONS


@dataclass
class ClipReading:
    colour: str  # palette name, or "none" when no foreground was found
    direction: str  # left/right/up/down, or "static"
    travel: float  # centroid travel along the dominant axis, in frame extents


def foreground(frames: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Per-pixel foreground strength in [0, 1] for uint8 frames [T, H, W, 3]."""
    f = frames.astype(np.float32)
    bg = np.median(f.reshape(f.shape[0], -1, 3), axis=1)[:, None, None, :]
    dist = np.linalg.norm(f - bg, axis=-1)
    return np.clip((dist - threshold / 2) / threshold, 0.0, 1.0)


def hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) of RGB rows [..., 3]; unchanged by scaling and by adding grey."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)) % 360.0


def dominant_colour(frames: np.ndarray, weight: np.ndarray, colours: list[str] | None = None) -> str:
    """The name, among `colours` (default: the six of COLOURS), whose hue is nearest that of the strong
    foreground's mean. Hue is unchanged by scaling and by mixing with grey, and both are what a generated
    shape does to its colour: blurred into the dark background it is darker and greyer, not another hue.
    (RGB distance read a dark orange as red; RGB direction read a greyed green as cyan: a 24px model's green
    shapes at mean (62, 133, 101), hue 153, nearer green's 128 than cyan's 183.)"""
    strong = weight > 0.5
    if strong.sum() < 2:
        return "none"
    names = list(colours) if colours else list(COLOURS)
    palette = hue(np.array([ALL_COLOURS[n] for n in names], dtype=np.float32))
    gap = np.abs(palette - hue(frames[strong].astype(np.float32).mean(axis=0)))
    return names[int(np.argmin(np.minimum(gap, 360.0 - gap)))]


def motion_direction(weight: np.ndarray, min_travel: float = 0.08) -> tuple[str, float]:
    t, h, w = weight.shape
    mass = weight.sum(axis=(1, 2))
    valid = mass > 1e-3
    if valid.sum() < 2:
        return "static", 0.0
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    cy = (weight.sum(axis=2) * ys).sum(axis=1)[valid] / mass[valid] / h
    cx = (weight.sum(axis=1) * xs).sum(axis=1)[valid] / mass[valid] / w
    frames = np.arange(t, dtype=np.float32)[valid]
    vy, vx = np.polyfit(frames, cy, 1)[0], np.polyfit(frames, cx, 1)[0]
    travel = float(max(abs(vy), abs(vx)) * (t - 1))
    if travel < min_travel:
        return "static", travel
    if abs(vx) >= abs(vy):
        return ("right" if vx > 0 else "left"), travel
    return ("down" if vy > 0 else "up"), travel


def read_clip(frames: np.ndarray, colours: list[str] | None = None) -> ClipReading:
    """Colour (among `colours`, default the six of COLOURS) and direction of one uint8 clip [T, H, W, 3]."""
    weight = foreground(frames)
    direction, travel = motion_direction(weight)
    return ClipReading(dominant_colour(frames, weight, colours), direction, travel)


def score_t2v(clips: list[np.ndarray], targets: list[dict]) -> dict[str, float]:
    """Colour and direction accuracy of text-to-video samples against their prompt labels."""
    return score_readings([read_clip(c) for c in clips], targets)


def score_readings(readings: list[ClipReading], targets: list[dict]) -> dict[str, float]:
    """score_t2v for clips already read."""
    colour = np.mean([r.colour == t["colour"] for r, t in zip(readings, targets)])
    direction = np.mean([r.direction == t["direction"] for r, t in zip(readings, targets)])
    return {"colour_acc": float(colour), "direction_acc": float(direction), "num_clips": len(readings)}


def colour_acc_by_colour(readings: list[ClipReading], targets: list[dict]) -> dict[str, float]:
    """Colour accuracy per target colour, in the targets' order: where a new colour shows apart."""
    hits: dict[str, list[bool]] = {}
    for r, t in zip(readings, targets):
        hits.setdefault(t["colour"], []).append(r.colour == t["colour"])
    return {c: float(np.mean(v)) for c, v in hits.items()}


def score_i2v(
    clips: list[np.ndarray], references: list[np.ndarray], colours: list[str] | None = None
) -> dict[str, float]:
    """Fraction of image-to-video samples whose later frames keep the reference frame's colour."""
    keep = []
    for clip, ref in zip(clips, references):
        ref_colour = read_clip(ref[None], colours).colour
        later = clip[1:] if len(clip) > 1 else clip
        keep.append(ref_colour != "none" and read_clip(later, colours).colour == ref_colour)
    return {"i2v_colour_keep": float(np.mean(keep)), "i2v_clips": len(clips)}


def confusion(readings: list[ClipReading], targets: list[dict], key: str) -> dict[str, dict[str, int]]:
    """Counts of predicted vs. target labels for `key` in {colour, direction}: for reports."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r, t in zip(readings, targets):
        table[t[key]][getattr(r, key)] += 1
    return {k: dict(v) for k, v in table.items()}


DIRECTION_READS = (*DIRECTIONS, "static")


def direction_confusion(readings: list[ClipReading], targets: list[dict]) -> dict[str, dict[str, int]]:
    """Target direction x read direction counts, every cell present; "static" (no motion found) is its
    own column, apart from the wrong directions."""
    table = {t: dict.fromkeys(DIRECTION_READS, 0) for t in DIRECTIONS}
    for r, t in zip(readings, targets):
        table[t["direction"]][r.direction] += 1
    return table


def format_confusion(table: dict[str, dict[str, int]]) -> str:
    """The confusion table as text: one row per target direction, one column per reading."""
    lines = ["target \\ read " + " ".join(f"{c:>7}" for c in DIRECTION_READS)]
    for target, row in table.items():
        lines.append(f"{target:<14} " + " ".join(f"{row.get(c, 0):>7d}" for c in DIRECTION_READS))
    return "\n".join(lines)


def eval_prompts(directions: bool = True, colours: list[str] | None = None) -> list[dict]:
    """Every colour x direction prompt (with a fixed shape and speed), the standard T2V probe set;
    `colours` (default: the six of COLOURS) may add new ones such as orange."""
    out = []
    for colour in colours or COLOURS:
        for direction in DIRECTIONS if directions else ["right"]:
            out.append({"colour": colour, "direction": direction, "shape": "circle", "speed": "fast"})
    return out
