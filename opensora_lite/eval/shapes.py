"""Score generated Shapes clips: do the colour, the motion direction, the speed and the shape match the prompt?

Foreground = pixels far from the frame's background (the per-frame median colour; the shape covers a
minority of the frame). Colour = the palette entry whose hue is nearest that of the strong foreground's
mean. Direction = the sign of the dominant axis of a least-squares fit of the foreground centroid over
time; a clip whose centroid moves less than `min_travel` of the frame is called "static". Speed = that
fit's travel per second (frame extents along the motion axis, as the Shapes speeds are given), "fast" at
or above the midpoint of the two Shapes speeds, else "slow" ("static" when no motion was found).
Shape = the rotational harmonics of the foreground's coverage (see `read_shape`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from opensora_lite.data.synthetic import ALL_COLOURS, COLOURS, DIRECTIONS, SHAPES, SPEEDS

# the threshold between the two Shapes speeds (0.35 and 1.0 frame extents per second): 0.675
SPEED_MIDPOINT = float(np.mean(list(SPEEDS.values())))
SLOW, FAST = sorted(SPEEDS, key=SPEEDS.get)


@dataclass
class ClipReading:
    colour: str  # palette name, or "none" when no foreground was found
    direction: str  # left/right/up/down, or "static"
    travel: float  # centroid travel along the dominant axis, in frame extents
    speed: str = "static"  # slow/fast, or "static" (no motion found, or a single frame)
    speed_value: float = 0.0  # that travel per second (frame extents / s)
    shape: str = "none"  # circle/square/triangle, or "none" when no foreground was found


def foreground(frames: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Per-pixel foreground strength in [0, 1] for uint8 frames [T, H, W, 3]."""
    return np.clip((_distance(frames) - threshold / 2) / threshold, 0.0, 1.0)


def _distance(frames: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance from the frame's background (its median colour), [T, H, W]."""
    f = frames.astype(np.float32)
    bg = np.median(f.reshape(f.shape[0], -1, 3), axis=1)[:, None, None, :]
    return np.linalg.norm(f - bg, axis=-1)


def coverage(frames: np.ndarray, floor: float = 0.1, least_peak: float = 60.0) -> np.ndarray:
    """How much of each pixel the shape covers, in [0, 1], for uint8 frames [T, H, W, 3]: the distance from
    the background over the frame's near-peak distance (its 99th percentile, at least `least_peak`, so an
    empty frame stays empty), none below `floor` of that peak (nor below 8: coding noise). Linear in the
    anti-aliased edge, unlike `foreground`, and unchanged by darkening or greying (both scale the distance;
    an absolute floor of 15 cut the thin apex of a greyed blue triangle at 16 px)."""
    dist = _distance(frames)
    peak = np.maximum(np.percentile(dist.reshape(len(dist), -1), 99, axis=1), least_peak)[:, None, None]
    return np.where(dist >= np.maximum(floor * peak, 8.0), np.clip(dist / peak, 0.0, 1.0), 0.0)


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


def read_speed(direction: str, travel: float, num_frames: int, fps: float) -> tuple[str, float]:
    """(slow/fast/static, frame extents per second) from the centroid's fitted travel over the clip."""
    if num_frames < 2:
        return "static", 0.0
    value = travel * fps / (num_frames - 1)
    if direction == "static":
        return "static", value
    return (FAST if value >= SPEED_MIDPOINT else SLOW), value


def shape_harmonics(weight: np.ndarray) -> tuple[float, float]:
    """(|c3|, |c4|): the 3- and 4-fold rotational harmonics of a coverage map [T, H, W], each frame's
    sum of w * z^n about its centroid (z = x + iy) over its mass and mean squared radius^(n/2), averaged
    over the frames that have foreground. An equilateral-ish triangle has a strong 3-fold harmonic (about
    0.65 for the Shapes triangle), an axis-aligned square a strong 4-fold one (about 0.5), a disc neither.
    Both are rotation-invariant in magnitude and barely moved by blur (an isotropic blur leaves the sum of
    w * z^n unchanged for n >= 1), which is what shrinking a rendered shape to 16 pixels does to it."""
    t, h, w = weight.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    c3, c4 = [], []
    for frame in weight.astype(np.float64):
        mass = frame.sum()
        if mass < 1.0:  # less than one pixel's worth of shape
            continue
        z = (xs - (frame * xs).sum() / mass) - 1j * (ys - (frame * ys).sum() / mass)  # y up
        r2 = (frame * np.abs(z) ** 2).sum() / mass
        if r2 <= 1e-6:
            continue
        c3.append((frame * z**3).sum() / mass / r2**1.5)
        c4.append((frame * z**4).sum() / mass / r2**2)
    if not c3:
        return 0.0, 0.0
    return float(abs(np.mean(c3))), float(abs(np.mean(c4)))


def read_shape(frames: np.ndarray, triangle: float = 0.3, square: float = 0.25) -> str:
    """circle/square/triangle (or "none") of the shape in uint8 frames [T, H, W, 3], from the rotational
    harmonics of its coverage: a 3-fold one above `triangle` reads as a triangle, else a 4-fold one above
    `square` as a square, else a circle. On real Shapes clips shrunk to 16 px the two sit at 0.64 +- 0.06
    and 0.49 +- 0.05 for their shapes and below 0.15 for the others."""
    weight = coverage(frames)
    if weight.sum() < 2.0:
        return "none"
    c3, c4 = shape_harmonics(weight)
    if c3 > triangle:
        return "triangle"
    return "square" if c4 > square else "circle"


def read_clip(frames: np.ndarray, colours: list[str] | None = None, fps: float = 8.0) -> ClipReading:
    """Colour (among `colours`, default the six of COLOURS), direction, speed (at `fps`: the tiny curriculum
    samples at 8) and shape of one uint8 clip [T, H, W, 3]."""
    weight = foreground(frames)
    direction, travel = motion_direction(weight)
    speed, value = read_speed(direction, travel, len(frames), fps)
    colour = dominant_colour(frames, weight, colours)
    return ClipReading(colour, direction, travel, speed, value, read_shape(frames) if colour != "none" else "none")


def score_t2v(clips: list[np.ndarray], targets: list[dict], fps: float = 8.0) -> dict[str, float]:
    """Colour, direction, speed and shape accuracy of text-to-video samples against their prompt labels."""
    return score_readings([read_clip(c, fps=fps) for c in clips], targets)


def score_readings(readings: list[ClipReading], targets: list[dict]) -> dict[str, float]:
    """score_t2v for clips already read."""
    out = {}
    for key in ("colour", "direction", "speed", "shape"):
        out[f"{key}_acc"] = float(np.mean([getattr(r, key) == t[key] for r, t in zip(readings, targets)]))
    return out | {"num_clips": len(readings)}


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
SPEED_READS = (SLOW, FAST, "static")
SHAPE_READS = (*SHAPES, "none")
_READS = {"direction": (tuple(DIRECTIONS), DIRECTION_READS), "speed": ((SLOW, FAST), SPEED_READS)}
_READS["shape"] = (tuple(SHAPES), SHAPE_READS)


def confusion_table(readings: list[ClipReading], targets: list[dict], key: str) -> dict[str, dict[str, int]]:
    """Target x read counts for `key` (direction, speed or shape), every cell present; "static" (no motion
    found) and "none" (no shape found) are columns of their own, apart from the wrong labels."""
    rows, reads = _READS[key]
    table = {t: dict.fromkeys(reads, 0) for t in rows}
    for r, t in zip(readings, targets):
        table[t[key]][getattr(r, key)] += 1
    return table


def direction_confusion(readings: list[ClipReading], targets: list[dict]) -> dict[str, dict[str, int]]:
    """Target direction x read direction counts (`confusion_table` for direction)."""
    return confusion_table(readings, targets, "direction")


def format_confusion(table: dict[str, dict[str, int]]) -> str:
    """A confusion table as text: one row per target, one column per reading (the first row's keys)."""
    columns = list(next(iter(table.values())))
    lines = ["target \\ read " + " ".join(f"{c:>8}" for c in columns)]
    for target, row in table.items():
        lines.append(f"{target:<14} " + " ".join(f"{row.get(c, 0):>8d}" for c in columns))
    return "\n".join(lines)


def eval_prompts(colours: list[str] | None = None, repeats: int = 1) -> list[dict]:
    """The standard T2V probe set: every colour x direction prompt `repeats` times (`colours`, default the
    six of COLOURS, may add new ones such as orange), with speed and shape assigned so that the set stays
    balanced. Prompt (colour i, direction j) of repeat k is slow or fast by (i + j + k) mod 2 and a
    circle, square or triangle by (i + j + k) mod 3: within each repeat every direction has each speed
    equally often and each shape equally often (6 colours), every colour each speed equally often, and
    each (speed, shape) pair comes equally often over six colours; two repeats sample every colour x
    direction x speed once (the quickstart's 48 clips: 16 per shape)."""
    out = []
    for k in range(repeats):
        for i, colour in enumerate(colours or COLOURS):
            for j, direction in enumerate(DIRECTIONS):
                n = i + j + k
                speed = (SLOW, FAST)[n % 2]
                out.append({"colour": colour, "direction": direction, "shape": SHAPES[n % 3], "speed": speed})
    return out
