"""Score the sound of Shapes clips (data/synthetic.py, shapes.sound): is the tone the colour's, and is the
click heard when the shape is seen to hit the wall?

- **Pitch -> colour**: the strongest frequency of the waveform between 150 Hz and 1.5 kHz (where every
  tone lies, far below the 3 kHz click), named by the colour whose tone (PITCHES) is nearest in
  semitones. Chance is 1/6.
- **The click's onset**: the first sample where the energy of the waveform's second difference (a
  high-pass: it keeps 3 kHz at x1.2 and takes a tone at 880 Hz down to x0.12), summed over the next
  1 ms, reaches half its peak. No click is heard when that peak is under `CLICK_CONTRAST` times the
  median: a tone alone sits at about 2.
- **The visible bounce**: the frame where the foreground centroid, along the axis it moves most on,
  is at an extreme that is not the first or last frame and lies `min_travel` of the frame beyond both
  ends (straight motion has its extremes at the ends). The wall is the one on that extreme's side; the
  wall gap is how many pixels lie between the shape's far edge and that wall in the reversal frame.
- **Sync error**: |onset - reversal frame / fps| in ms (frame k starts at k / fps, the window rule),
  over the clips that are seen to bounce and heard to click (mean and median); the baseline pairs each
  clip's video with another clip's audio (a roll by one over those clips), which is what a model that
  ignores the pictures would score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opensora_lite.data.synthetic import ALL_COLOURS, COLOURS, DIRECTIONS, PITCHES, reach, render_frame
from opensora_lite.eval.shapes import foreground

TONE_BAND = (150.0, 1500.0)  # Hz: every colour's tone, none of the click
CLICK_CONTRAST = 20.0  # peak / median of the high-passed energy for a click to count as heard


@dataclass
class SoundReading:
    colour: str  # the colour whose tone is nearest the dominant pitch, "none" for silence
    pitch_hz: float
    onset_s: float | None  # the click's onset, None when no click is heard


@dataclass
class BounceReading:
    frame: int | None  # the visible reversal frame, None when the motion does not reverse
    wall: str | None  # left / right / top / bottom
    gap_px: float | None  # pixels between the shape's far edge and the wall in that frame


def mono(wave: np.ndarray) -> np.ndarray:
    """[channels, samples] or [samples] -> float64 [samples] (the channels' mean)."""
    wave = np.asarray(wave, dtype=np.float64)
    return wave.mean(axis=0) if wave.ndim == 2 else wave


def dominant_pitch(wave: np.ndarray, rate: int) -> float:
    """The strongest frequency (Hz) in TONE_BAND of a waveform; 0 for silence."""
    x = mono(wave)
    if len(x) < 16 or not np.any(x):
        return 0.0
    n = 4 * len(x)  # zero padding: bins of rate / n Hz, a few Hz for a clip of a second
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    band = (freqs >= TONE_BAND[0]) & (freqs <= TONE_BAND[1])
    return float(freqs[band][np.argmax(spectrum[band])])


def pitch_colour(pitch_hz: float, colours: list[str] | None = None) -> str:
    """The colour (among `colours`, default the six of COLOURS) whose tone is nearest in semitones."""
    if pitch_hz <= 0:
        return "none"
    names = list(colours) if colours else list(COLOURS)
    return min(names, key=lambda c: abs(np.log2(PITCHES[c] / pitch_hz)))


def click_onset(wave: np.ndarray, rate: int) -> float | None:
    """The click's onset in seconds (module docstring), None when no click stands out."""
    x = mono(wave)
    if len(x) < 8:
        return None
    high = np.diff(x, n=2, prepend=[x[0], x[0]])
    window = max(1, round(rate / 1000))
    energy = np.convolve(high**2, np.ones(window), "full")[window - 1 :]  # sample i: the 1 ms from i on
    peak = energy.max()
    if peak <= 0 or peak < CLICK_CONTRAST * max(float(np.median(energy)), 1e-12):
        return None
    return float(np.argmax(energy >= 0.5 * peak)) / rate


def read_sound(wave: np.ndarray, rate: int, colours: list[str] | None = None) -> SoundReading:
    pitch = dominant_pitch(wave, rate)
    return SoundReading(pitch_colour(pitch, colours), pitch, click_onset(wave, rate))


def read_bounce(frames: np.ndarray, min_travel: float = 0.05) -> BounceReading:
    """The visible reversal of uint8 frames [T, H, W, 3] (module docstring)."""
    t, h, w, _ = frames.shape
    weight = foreground(frames)
    mass = weight.sum(axis=(1, 2))
    if t < 3 or (mass <= 1e-3).any():
        return BounceReading(None, None, None)
    cy = (weight.sum(axis=2) * np.arange(h)).sum(axis=1) / mass / h
    cx = (weight.sum(axis=1) * np.arange(w)).sum(axis=1) / mass / w
    axis, c = (1, cx) if np.ptp(cx) >= np.ptp(cy) else (0, cy)
    for k, sign in ((int(np.argmax(c)), 1.0), (int(np.argmin(c)), -1.0)):
        if 0 < k < t - 1 and sign * (c[k] - c[0]) >= min_travel and sign * (c[k] - c[-1]) >= min_travel:
            walls = {(1, 1.0): "right", (1, -1.0): "left", (0, 1.0): "bottom", (0, -1.0): "top"}
            return BounceReading(k, walls[axis, sign], wall_gap(weight[k], axis, sign))
    return BounceReading(None, None, None)


def wall_gap(weight: np.ndarray, axis: int, sign: float, visible: float = 0.05) -> float:
    """Whole pixels between the shape's far edge (the last row or column with any foreground) and the
    wall on side `sign` of `axis` (1: x, 0: y) of one frame's foreground weight [H, W]."""
    profile = weight.sum(axis=1 - axis)  # along the motion axis
    if sign < 0:
        profile = profile[::-1]
    seen = np.nonzero(profile > visible)[0]
    return float(len(profile) - 1 - seen[-1]) if len(seen) else float(len(profile))


def sync_errors_ms(bounces: list[BounceReading], sounds: list[SoundReading], fps: list[float]) -> list[float]:
    """|onset - reversal time| in ms for each pair with a visible reversal and a heard click (`fps`: each
    video's frame rate)."""
    return [
        abs(s.onset_s - b.frame / f) * 1000.0
        for b, s, f in zip(bounces, sounds, fps)
        if b.frame is not None and s.onset_s is not None
    ]


def score_sound(
    videos: list[np.ndarray],
    waves: list[np.ndarray],
    rate: int,
    fps: float | list[float],
    targets: list[dict],
    colours: list[str] | None = None,
    prefix: str = "audio_",
) -> dict[str, float]:
    """The audio figures of clips with sound: `targets` give each clip's colour and whether it was asked
    to bounce (`bounce`). Keys (under `prefix`): pitch_acc (the tone names the target colour),
    click_rate (clips seen to bounce that are heard to click), click_rate_straight (clips asked to move
    straight that are heard to click), sync_error_ms, sync_error_median_ms and sync_within_frame (over
    those seen to bounce and heard to click), sync_error_shuffled_ms and sync_error_shuffled_median_ms
    (each clip seen to bounce: its video against the next one's audio), bounce_rate (clips asked to
    bounce that are seen to reverse), wall_gap_px (mean over the reversals seen). A figure with no clip
    to average over is left out. `fps`: the clips' frame rate, one or one per clip."""
    rates = [float(fps)] * len(videos) if np.isscalar(fps) else [float(f) for f in fps]
    sounds = [read_sound(w, rate, colours) for w in waves]
    bounces = [read_bounce(v) for v in videos]
    out = {f"{prefix}pitch_acc": float(np.mean([s.colour == t["colour"] for s, t in zip(sounds, targets)]))}
    seen = [i for i, b in enumerate(bounces) if b.frame is not None]
    asked = [i for i, t in enumerate(targets) if t.get("bounce")]
    if asked:
        out[f"{prefix}bounce_rate"] = float(np.mean([bounces[i].frame is not None for i in asked]))
    calm = [i for i, t in enumerate(targets) if not t.get("bounce")]
    if calm:  # clicks where none belongs: a model that clicks on every clip is not in sync
        out[f"{prefix}click_rate_straight"] = float(np.mean([sounds[i].onset_s is not None for i in calm]))
    if seen:
        out[f"{prefix}wall_gap_px"] = float(np.mean([bounces[i].gap_px for i in seen]))
        out[f"{prefix}click_rate"] = float(np.mean([sounds[i].onset_s is not None for i in seen]))
    out.update(_sync(bounces, sounds, seen, rates, prefix))
    return out


def _sync(bounces, sounds, seen: list[int], fps: list[float], prefix: str) -> dict[str, float]:
    heard = [i for i in seen if sounds[i].onset_s is not None]
    errors = sync_errors_ms([bounces[i] for i in heard], [sounds[i] for i in heard], [fps[i] for i in heard])
    out = {}
    if errors:
        out[f"{prefix}sync_error_ms"] = float(np.mean(errors))
        out[f"{prefix}sync_error_median_ms"] = float(np.median(errors))
        frame_ms = 1000.0 / np.asarray([fps[i] for i in heard])
        out[f"{prefix}sync_within_frame"] = float(np.mean(np.asarray(errors) <= frame_ms))
    if len(seen) > 1:
        rolled = [sounds[i] for i in seen[1:] + seen[:1]]
        shuffled = sync_errors_ms([bounces[i] for i in seen], rolled, [fps[i] for i in seen])
        if shuffled:
            out[f"{prefix}sync_error_shuffled_ms"] = float(np.mean(shuffled))
            out[f"{prefix}sync_error_shuffled_median_ms"] = float(np.median(shuffled))
    return out


def bounce_clip(
    colour: str, shape: str, direction: str, frames: int, h: int, w: int, contact: int, bg: int = 16
) -> np.ndarray:
    """A Shapes bounce of a given size and length (uint8 [frames, h, w, 3]): the shape touches the wall in
    its direction at frame `contact` (its far edge on the frame's edge, as the data's bounces) and moves
    away at the same speed, as far per frame as lets both legs start inside the frame."""
    dy, dx = DIRECTIONS[direction]
    extent, across_extent = (h, w) if dy else (w, h)
    r = 0.18 * min(h, w)
    wall = extent - reach(shape, direction, r)  # the centre's position along the motion at contact
    step = (wall - r) / max(contact, frames - 1 - contact, 1)
    out = []
    for i in range(frames):
        along = wall - step * abs(i - contact)
        pos = along if (dy > 0 or dx > 0) else extent - along
        cy, cx = (pos, across_extent / 2) if dy else (across_extent / 2, pos)
        out.append(render_frame(h, w, shape, ALL_COLOURS[colour], cy, cx, r, bg))
    return np.stack(out)
