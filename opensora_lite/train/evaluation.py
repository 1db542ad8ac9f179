"""End-of-stage sampling: generate, save mp4s, and score them when the data has checkable content.

With eval.kind=shapes, text-to-video samples of the balanced probe set (every colour x direction prompt,
speed and shape varied: eval/shapes.py eval_prompts) are scored for colour, motion direction, speed and
shape, and (for models with an image condition) image-to-video samples from
rendered reference frames are scored for keeping the reference colour. Otherwise the configured
prompts are sampled and saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opensora_lite.config.schema import StageConfig
from opensora_lite.data.cache import bucket_table
from opensora_lite.data.loader import BucketedVideoStream, expand_shards, frames_on_device
from opensora_lite.data.synthetic import ALL_COLOURS, COLOURS, DIRECTIONS, SHAPES, caption_for, render_frame
from opensora_lite.diffusion import flow
from opensora_lite.diffusion.pipeline import generate
from opensora_lite.diffusion.sampling import sample_captions, sample_shape, save_samples
from opensora_lite.eval import shapes as shapes_eval
from opensora_lite.eval.contact_sheet import save_contact_sheet
from opensora_lite.models.spec import spec_for

log = logging.getLogger("opensora_lite")


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
    targets = shapes_eval.eval_prompts(colours, cfg.eval.repeats)
    captions = [caption_for(t["colour"], t["shape"], t["direction"], t["speed"]) for t in targets]
    videos = generate(rt, model, sample_captions(rt, captions, shape), shape, seed)
    readings = [shapes_eval.read_clip(v, colours, fps) for v in videos]
    metrics = shapes_eval.score_readings(readings, targets)
    if colours:  # one figure per listed colour (colour_acc_orange, ...): where a new colour shows apart
        by_colour = shapes_eval.colour_acc_by_colour(readings, targets)
        metrics.update({f"colour_acc_{c}": v for c, v in by_colour.items()})
    if shape[0] == 1:
        metrics.pop("direction_acc")  # a single frame has no motion
        metrics.pop("speed_acc")
    else:
        for key in ("direction", "speed"):
            metrics[f"{key}_confusion"] = shapes_eval.confusion_table(readings, targets, key)
    metrics["shape_confusion"] = shapes_eval.confusion_table(readings, targets, "shape")
    paths = save_samples(videos, captions, folder, "t2v", cfg.sample.save_videos, fps)
    rows = len(targets) // max(1, cfg.eval.repeats)  # one row per colour x direction prompt
    sheets = {"t2v": save_contact_sheet(folder.parent / "contact_sheet_t2v.png", videos[:rows], captions[:rows])}

    if spec_for(cfg.model).has_image_condition(model) and shape[0] > 1:
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


@torch.no_grad()
def held_out_loss(rt, model, stage, seed: int) -> dict[str, float]:
    """The flow loss on `eval.val_batches` batches of the held-out `eval.val_shards` (the stage's buckets,
    read in a fixed order), at each of `eval.val_timesteps` with fixed noise: the same batches, times and
    noise every validation, so the numbers form a curve. Text-to-video (an empty condition)."""
    cfg = rt.cfg
    stream = BucketedVideoStream(
        expand_shards(cfg.eval.val_shards),
        bucket_table(cfg, stage),
        cfg.data.target_fps,
        seed=seed,
        shuffle_buffer=1,
        caption_key=cfg.data.caption_key,
        caption_template=cfg.data.caption_template,
        image_caption_template=cfg.data.image_caption_template,
    )
    batches, noise = iter(stream), torch.Generator().manual_seed(seed)
    times = list(cfg.eval.val_timesteps)
    sums = dict.fromkeys(times, 0.0)
    spec = spec_for(cfg.model)
    model.eval()
    for _ in range(cfg.eval.val_batches):
        batch = next(batches)
        x0 = rt.ae.encode(frames_on_device(batch["video"], rt.device), sample=False)
        t5, clip = rt.text.encode(batch["captions"])
        cond = None
        if spec.has_image_condition(model):
            cond = x0.new_zeros(x0.shape[0], x0.shape[1] + 1, *x0.shape[2:])
        for t in times:
            eps = torch.randn(x0.shape, generator=noise).to(x0.device)
            tt = torch.full((x0.shape[0],), t, device=x0.device)
            with rt.autocast():
                pred = spec.forward(model, flow.add_noise(x0, eps, tt, cfg.flow.sigma_min), tt, t5, clip, cond)
            sums[t] += F.mse_loss(pred.float(), flow.velocity_target(x0, eps, cfg.flow.sigma_min)).item()
    model.train()
    out = {f"loss_t{t:g}": s / cfg.eval.val_batches for t, s in sums.items()}
    out["loss"] = sum(out.values()) / len(times)
    return out
