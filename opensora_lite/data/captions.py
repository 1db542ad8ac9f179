"""The caption the model sees: the stored caption through `data.caption_template`, with the sample's json
metadata and a few fields derived from it. One place, so training, the latent cache, validation and
sampling build captions the same way (presets: configs/caption/)."""

from __future__ import annotations

import math

from opensora_lite.data.video import temporal_stride

# Fields a template may name. From the json ingest writes: fps (the file's), motion_score (ours),
# vmaf_motion (FFmpeg's vmafmotion average), num_frames, duration, width, height. Derived here:
# clip_fps (the frame rate of the frames training reads, after the temporal stride, reported as
# Open-Sora 2.0 did) and vmaf_motion_int (vmaf_motion rounded half up, Open-Sora 2.0's int(score + 0.5)).
CAPTION_FIELDS = (
    "caption",
    "fps",
    "clip_fps",
    "motion_score",
    "vmaf_motion",
    "vmaf_motion_int",
    "num_frames",
    "duration",
    "width",
    "height",
)
MOTION_FIELDS = ("motion_score", "vmaf_motion", "vmaf_motion_int")  # at sampling: sample.motion_score


def clip_fps(fps: float, target_fps: float) -> float:
    """The frame rate of the strided clip as Open-Sora 2.0 wrote it in captions: the file's rate when it
    is below the target, else floor(fps / stride) (30 fps at a 24 fps target: every 2nd frame, 15)."""
    if fps < target_fps:
        return fps
    return math.floor(fps / temporal_stride(fps, target_fps))


def caption_fields(meta: dict, target_fps: float) -> dict:
    """The template's fields for one sample: its metadata plus the derived ones it allows."""
    fields = dict(meta)
    if float(meta.get("fps") or 0) > 0:
        fields["clip_fps"] = clip_fps(float(meta["fps"]), target_fps)
    if meta.get("vmaf_motion") is not None:
        fields["vmaf_motion_int"] = int(float(meta["vmaf_motion"]) + 0.5)
    return fields


def format_caption(template: str, caption: str, meta: dict, target_fps: float) -> str:
    """`template` filled from the caption and the sample's fields; KeyError names a field it lacks."""
    if template == "{caption}":
        return caption
    return template.format_map({**caption_fields(meta, target_fps), "caption": caption})
