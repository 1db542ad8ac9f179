"""End-of-stage sampling with sound (a stage of kind audio_video): clips with an AAC track, contact sheets
with a spectrogram row, and with eval.kind=shapes the audio figures beside the video ones.

- t2av: the T2V probe prompts (eval/shapes.py's balanced colour x direction x speed x shape set, over
  `eval.repeats` rounds), about half of them asked to bounce off the wall they move to instead of
  moving straight (by half the sum that alternates the speed, so bounces fall on both speeds and every
  direction). Video: colour and shape over all clips, direction and speed (and their confusion tables)
  over the straight ones (a bounce's net motion is nil). Sound (eval/shapes_audio.py):
  audio_pitch_acc (the tone names the prompt's colour; chance 1/6), audio_sync_error_ms against
  audio_sync_error_shuffled_ms (each clip's video against another's audio), audio_sync_within_frame,
  audio_click_rate, audio_click_rate_straight, and the video's audio_bounce_rate and audio_wall_gap_px.
- v2a: `eval.v2a_clips` rendered Shapes bounces (every colour, contact frames spread over the clip)
  given clean; v2a_pitch_acc, v2a_sync_error_ms (the generated click against the given video's
  reversal), v2a_sync_error_shuffled_ms, v2a_sync_within_frame, v2a_click_rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from opensora_lite.config.schema import StageConfig
from opensora_lite.data.synthetic import COLOURS, DIRECTIONS, SHAPES, caption_for
from opensora_lite.diffusion.pipeline import generate_av
from opensora_lite.diffusion.sampling import sample_captions, sample_shape, save_samples
from opensora_lite.eval import shapes as shapes_eval
from opensora_lite.eval import shapes_audio
from opensora_lite.eval.contact_sheet import save_contact_sheet

V2A_KEYS = ("pitch_acc", "click_rate", "sync_error_ms", "sync_error_median_ms", "sync_within_frame",
            "sync_error_shuffled_ms", "sync_error_shuffled_median_ms")  # fmt: skip


def evaluate_av_stage(rt, model: nn.Module, stage: StageConfig, folder: Path) -> tuple[dict, list[Path], dict]:
    """Sample with sound (and score) at the end of an audio_video stage: (metrics, mp4 paths, contact
    sheets by kind), as train/evaluation.py's evaluate_stage."""
    model.eval()
    try:
        return _evaluate(rt, model, stage, folder)
    finally:
        model.train()


def _evaluate(rt, model: nn.Module, stage: StageConfig, folder: Path) -> tuple[dict, list[Path], dict]:
    cfg = rt.cfg
    shape = sample_shape(rt, stage)
    fps = cfg.sample.fps or cfg.data.target_fps
    seed = cfg.sample.seed
    if cfg.eval.kind != "shapes":
        prompts = list(cfg.sample.prompts)
        out = generate_av(rt, model, sample_captions(rt, prompts, shape), shape, seed)
        return {}, *_save(out, prompts, prompts, folder, "t2av", cfg.sample.save_videos, fps)

    colours = list(cfg.eval.colours) if cfg.eval.colours else None
    names = colours or list(COLOURS)
    targets = []
    for n, t in enumerate(shapes_eval.eval_prompts(colours, cfg.eval.repeats)):
        # the probes' own balance has speed alternate with (colour + direction + round); the bounce goes
        # with half of that sum, so each direction and each speed is asked to bounce about half the time
        k, rest = divmod(n, len(names) * len(DIRECTIONS))
        turn = rest // len(DIRECTIONS) + rest % len(DIRECTIONS) + k
        targets.append(dict(t, bounce=(turn // 2) % 2 == 1))
    captions = [caption_for(t["colour"], t["shape"], t["direction"], t["speed"], t["bounce"]) for t in targets]
    out = generate_av(rt, model, sample_captions(rt, captions, shape), shape, seed)
    readings = [shapes_eval.read_clip(v, colours, fps) for v in out.videos]
    metrics = shapes_eval.score_readings(readings, targets)  # colour and shape: every clip
    straight = [i for i, t in enumerate(targets) if not t["bounce"]]
    moving = [readings[i] for i in straight], [targets[i] for i in straight]
    motion = shapes_eval.score_readings(*moving)  # direction and speed: the straight ones
    metrics.update(direction_acc=motion["direction_acc"], speed_acc=motion["speed_acc"])
    for key in ("direction", "speed"):
        metrics[f"{key}_confusion"] = shapes_eval.confusion_table(*moving, key)
    metrics["shape_confusion"] = shapes_eval.confusion_table(readings, targets, "shape")
    metrics.update(shapes_audio.score_sound(list(out.videos), list(out.audio), out.sample_rate, fps, targets, colours))
    rows = len(targets) // max(cfg.eval.repeats, 1)  # a row per probe prompt
    paths, sheets = _save(out, captions, captions, folder, "t2av", cfg.sample.save_videos, fps, rows)

    if shape[0] >= 3 and cfg.eval.v2a_clips > 0:  # a visible reversal needs a frame on each side of the contact
        refs, ref_targets, ref_captions = v2a_references(cfg.eval.v2a_clips, shape, colours)
        given = generate_av(rt, model, sample_captions(rt, ref_captions, shape), shape, seed + 20_000, "v2a", refs)
        scores = shapes_audio.score_sound(
            list(given.videos), list(given.audio), given.sample_rate, fps, ref_targets, colours, prefix="v2a_"
        )
        metrics.update({f"v2a_{k}": scores[f"v2a_{k}"] for k in V2A_KEYS if f"v2a_{k}" in scores})
        labels = [f"(video) {c}" for c in ref_captions]
        more, v2a_sheet = _save(given, ref_captions, labels, folder, "v2a", max(2, cfg.sample.save_videos // 2), fps)
        paths += more
        sheets["v2a"] = v2a_sheet["v2a"]
    return metrics, paths, sheets


def _save(out, captions, labels, folder: Path, kind: str, limit: int, fps: float, rows: int | None = None):
    """The mp4s (with their sound) and the kind's contact sheet, a spectrogram under each row."""
    paths = save_samples(out.videos, captions, folder, kind, limit, fps, out.audio, out.sample_rate)
    rows = rows or len(labels)
    sheet = save_contact_sheet(
        folder.parent / f"contact_sheet_{kind}.png", out.videos[:rows], labels[:rows], spectrograms=out.logmel[:rows]
    )
    return paths, {kind: sheet}


def v2a_references(
    n: int, shape: tuple[int, int, int], colours: list[str] | None = None
) -> tuple[np.ndarray, list[dict], list[str]]:
    """`n` rendered bounces at the sampling shape (colours, shapes and directions cycling; contact frames
    spread over the frames that have one on each side), their targets and captions."""
    frames, h, w = shape
    names = colours or list(COLOURS)
    clips, targets, captions = [], [], []
    for i in range(n):
        colour, shape_name = names[i % len(names)], SHAPES[i % len(SHAPES)]
        direction = list(DIRECTIONS)[(i // len(names)) % len(DIRECTIONS)]
        contact = 1 + (i * 7) % (frames - 2)
        clips.append(shapes_audio.bounce_clip(colour, shape_name, direction, frames, h, w, contact))
        targets.append({"colour": colour, "bounce": True, "contact_frame": contact})
        captions.append(caption_for(colour, shape_name, direction, "fast", bounce=True))
    return np.stack(clips), targets, captions
