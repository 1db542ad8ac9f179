"""End-of-stage sampling: generate, save mp4s, and score them when the data has checkable content.

With eval.kind=shapes, text-to-video samples for every colour x direction probe prompt are scored for
colour and motion direction, and (for models with an image condition) image-to-video samples from
rendered reference frames are scored for keeping the reference colour. Otherwise the configured
prompts are sampled and saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from opensora_lite.config.schema import StageConfig
from opensora_lite.config.validate import ConfigError
from opensora_lite.data.buckets import bucket_size, parse_resolution
from opensora_lite.data.synthetic import ALL_COLOURS, COLOURS, DIRECTIONS, SHAPES, caption_for, render_frame
from opensora_lite.data.video import write_video
from opensora_lite.diffusion.pipeline import generate, template_captions, to_uint8  # noqa: F401 (re-exported)
from opensora_lite.eval import shapes as shapes_eval
from opensora_lite.eval.contact_sheet import save_contact_sheet

log = logging.getLogger("opensora_lite")


def sample_shape(rt, stage: StageConfig, prefix: str = "sample.") -> tuple[int, int, int]:
    """(frames, height, width) to sample at: config, else the stage's largest resolution and its
    most likely video length (1 for image-only stages).

    Any resolution the autoencoder and patch take works, in the stage's bucket table or not: sides are
    rounded to multiples of spatial factor x patch (as buckets are), and a resolution without a row in
    the table takes its frames from the largest resolution's row. A resolution that is not "<N>px" or
    is below one such multiple is one ConfigError naming `<prefix>resolution`."""
    s = rt.cfg.sample
    rows = {parse_resolution(r): row for r, row in stage.buckets.items()}  # keys checked at start-up
    largest = max(rows)
    px = largest if s.resolution is None else _resolution_px(s.resolution, prefix)
    sf, patch = rt.cfg.autoencoder.spatial_factor, rt.cfg.model.patch_size[1]
    multiple = sf * patch
    if px < multiple:
        raise ConfigError(
            f"{prefix}resolution",
            f"{s.resolution} is below the smallest size this model samples, {multiple}px "
            f"(autoencoder spatial factor {sf} x patch {patch}; sides are multiples of {multiple})",
        )
    if s.aspect_ratio <= 0:
        raise ConfigError(f"{prefix}aspect_ratio", f"{s.aspect_ratio} must be a positive height / width")
    videos = {n: p for n, (p, _) in rows.get(px, rows[largest]).items() if n > 1}
    frames = s.num_frames or (max(videos, key=lambda n: (videos[n], n)) if videos else 1)
    h, w = bucket_size(px, s.aspect_ratio, multiple)
    return frames, h, w


def _resolution_px(resolution: str, prefix: str) -> int:
    try:
        return parse_resolution(resolution)
    except ValueError as exc:
        raise ConfigError(f"{prefix}resolution", str(exc)) from None


def sample_captions(rt, prompts: list[str], shape: tuple[int, int, int]) -> list[str]:
    """Prompts through the run's caption template, with the sampling values of its fields."""
    cfg = rt.cfg
    fps = cfg.sample.fps or cfg.data.target_fps
    frames = shape[0]
    return template_captions(prompts, caption_template_for(cfg.data, frames), **sampling_fields(cfg, fps, shape))


def caption_template_for(data, frames: int) -> str:
    """The template training applied to clips of `frames` frames (images have their own, when set)."""
    if frames == 1 and data.image_caption_template is not None:
        return data.image_caption_template
    return data.caption_template


def sampling_fields(cfg, fps: float, shape: tuple[int, int, int]) -> dict:
    """The caption template's fields for a sampled clip: its shape, fps (also the clip's frame rate) and
    sample.motion_score standing for whichever motion score the template names."""
    from opensora_lite.data.captions import caption_fields

    frames, h, w = shape
    m = cfg.sample.motion_score
    meta = dict(fps=fps, num_frames=frames, width=w, height=h, duration=frames / fps)
    meta |= dict(motion_score=m, vmaf_motion=m) if m is not None else {}
    return caption_fields(meta, fps) | {"clip_fps": fps}


def save_samples(
    videos: np.ndarray, captions: list[str], folder: Path, prefix: str, limit: int, fps: float
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (video, caption) in enumerate(zip(videos[:limit], captions)):
        path = folder / f"{prefix}_{i:02d}_{caption.replace(' ', '_')[:60]}.mp4"
        write_video(path, video, fps)
        paths.append(path)
    return paths


def evaluate_stage(rt, model: nn.Module, stage: StageConfig, folder: Path) -> tuple[dict, list[Path], dict[str, Path]]:
    """Sample (and score) at the end of a stage. Returns metrics, the mp4 paths written and the contact
    sheets (PNG, one row per prompt, one column per frame) by kind (t2v, i2v), beside `folder`."""
    model.eval()
    try:
        return _evaluate(rt, model, stage, folder)
    finally:
        model.train()


def _evaluate(rt, model: nn.Module, stage: StageConfig, folder: Path) -> tuple[dict, list[Path], dict[str, Path]]:
    cfg = rt.cfg
    shape = sample_shape(rt, stage)
    fps = cfg.sample.fps or cfg.data.target_fps
    seed = cfg.sample.seed
    if cfg.eval.kind != "shapes":
        prompts = list(cfg.sample.prompts)
        videos = generate(rt, model, sample_captions(rt, prompts, shape), shape, seed)
        sheet = save_contact_sheet(folder.parent / "contact_sheet_t2v.png", videos, prompts)
        return {}, save_samples(videos, prompts, folder, "t2v", cfg.sample.save_videos, fps), {"t2v": sheet}

    colours = list(cfg.eval.colours) if cfg.eval.colours else None
    probes = shapes_eval.eval_prompts(colours=colours)
    targets = []
    for _ in range(cfg.eval.repeats):
        for i, t in enumerate(probes):
            targets.append(dict(t, shape=SHAPES[(i + len(targets)) % len(SHAPES)]))
    captions = [caption_for(t["colour"], t["shape"], t["direction"], t["speed"]) for t in targets]
    videos = generate(rt, model, sample_captions(rt, captions, shape), shape, seed)
    readings = [shapes_eval.read_clip(v, colours) for v in videos]
    metrics = shapes_eval.score_readings(readings, targets)
    if colours:  # one figure per listed colour (colour_acc_orange, ...): where a new colour shows apart
        by_colour = shapes_eval.colour_acc_by_colour(readings, targets)
        metrics.update({f"colour_acc_{c}": v for c, v in by_colour.items()})
    if shape[0] == 1:
        metrics.pop("direction_acc")  # a single frame has no motion
    else:
        metrics["direction_confusion"] = shapes_eval.direction_confusion(readings, targets)
    paths = save_samples(videos, captions, folder, "t2v", cfg.sample.save_videos, fps)
    rows = len(probes)  # one row per colour x direction prompt
    sheets = {"t2v": save_contact_sheet(folder.parent / "contact_sheet_t2v.png", videos[:rows], captions[:rows])}

    if getattr(model, "cond_in", None) is not None and shape[0] > 1:
        refs, ref_captions = _i2v_references(cfg.eval.i2v_clips, shape[1], shape[2], seed, colours)
        i2v = generate(rt, model, sample_captions(rt, ref_captions, shape), shape, seed + 10_000, reference=refs)
        metrics.update(shapes_eval.score_i2v(list(i2v), list(refs), colours))
        paths += save_samples(i2v, ref_captions, folder, "i2v", max(2, cfg.sample.save_videos // 2), fps)
        labels = [f"(image) {c}" for c in ref_captions]
        sheets["i2v"] = save_contact_sheet(folder.parent / "contact_sheet_i2v.png", i2v[:rows], labels[:rows])
    return metrics, paths, sheets


def _i2v_references(
    n: int, h: int, w: int, seed: int, colours: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Rendered first frames with known colour (cycling over `colours`, default the six of COLOURS), and
    prompts that agree with them."""
    rng = np.random.default_rng(seed)
    names = colours or list(COLOURS)
    refs, captions = [], []
    for i in range(n):
        colour = names[i % len(names)]
        shape = SHAPES[rng.integers(len(SHAPES))]
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        r = rng.uniform(0.15, 0.2) * min(h, w)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        refs.append(render_frame(h, w, shape, ALL_COLOURS[colour], cy, cx, r, int(rng.integers(0, 31))))
        captions.append(caption_for(colour, shape, direction, "fast"))
    return np.stack(refs), captions
