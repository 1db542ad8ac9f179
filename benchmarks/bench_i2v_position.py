#!/usr/bin/env python3
"""Image-to-video: how far the first generated frame lands from the reference's position.

Samples the end-of-stage evaluation's I2V probes from trained stages: eval.i2v_clips rendered Shapes
first frames with prompts that agree with them, the same references, prompts, seeds, steps and guidance
as train/evaluation.py, so the clips are those of the stage's contact_sheet_i2v.png. For each clip the
foreground centroid (eval/shapes.py's foreground weights) of the reference and of every generated frame is
read, in pixels. Reported per stage:

- ref->f1: the distance from the reference's centroid to generated frame 1's (median, mean, 90th percentile);
- expected: how far the prompt's motion ("fast") moves a Shapes clip in one frame (speed x extent / fps);
- off-track: frame 1's distance from where that motion would put it (reference + the expected step);
- later steps: the median distance between consecutive generated frames 1->2, 2->3, ... (a jump shows as
  ref->f1 far above these);
- f0 (model): the same distance for the model's own frame 0 before the sampler writes the reference back
  into it (what frames 1.. were generated beside);
- direction: the fraction of clips whose generated frames 1.. move the prompt's way (eval/shapes.py's
  reading; image guidance trades some of it for position);
- colour keep as the evaluator reads it.

    python -m benchmarks.bench_i2v_position runs/tiny_cpu            # its stages with an image condition
    python -m benchmarks.bench_i2v_position runs/tiny_cpu --stages i2v --no-append
    python -m benchmarks.bench_i2v_position runs/tiny_cpu --set image_cfg_scale=null   # other sample.* values
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.benchlib import heading, publish, table
from opensora_lite.layout import MODEL_FILE, StageDir


def centroids(frames: np.ndarray) -> np.ndarray:
    """(y, x) foreground centroid per uint8 frame [T, H, W, 3], in pixels; NaN where none is found."""
    from opensora_lite.eval.shapes import foreground

    weight = foreground(frames)
    mass = weight.sum(axis=(1, 2))
    ys, xs = np.arange(frames.shape[1]) + 0.5, np.arange(frames.shape[2]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (weight.sum(axis=2) * ys).sum(axis=1) / mass
        cx = (weight.sum(axis=1) * xs).sum(axis=1) / mass
    out = np.stack([cy, cx], axis=1)
    out[mass < 1.0] = np.nan  # less than one pixel's worth of foreground: no shape to place
    return out


def load_stage(stage_dir: Path):
    """(context, model, stage config) for a stage directory of a run, as osl-sample builds them."""
    import torch

    from opensora_lite.autoencoders import build_autoencoder
    from opensora_lite.checkpoint.stage import resolve_weights_path
    from opensora_lite.config.load import load_run_config
    from opensora_lite.config.stages import stage_config
    from opensora_lite.diffusion.sampling import SampleContext
    from opensora_lite.models.loading import load_into
    from opensora_lite.models.spec import spec_for
    from opensora_lite.text.encoders import TextEncoders

    weights = resolve_weights_path(str(stage_dir))
    cfg = stage_config(load_run_config(weights), stage_dir.name)
    spec = spec_for(cfg.model)
    state, _ = spec.read_weights(weights)
    model = spec.build(cfg.model, image_condition=spec.conditioned(state))
    load_into(model, state, str(weights), spec.optional_keys())
    device = torch.device("cpu")
    ctx = SampleContext(cfg, TextEncoders(cfg.text_encoder, device), build_autoencoder(cfg.autoencoder), device)
    return ctx, model.eval(), cfg.curriculum.stages[stage_dir.name]


def own_first_frames(ctx, model, captions: list[str], shape, seed: int, refs: np.ndarray) -> np.ndarray:
    """The model's own frame 0 [N, H, W, 3] of each I2V sample: generate()'s sampling (same noise, condition,
    guidance) without writing the reference back into the given frame."""
    import torch

    from opensora_lite.diffusion import sampler
    from opensora_lite.diffusion.pipeline import generate, to_uint8

    kept = []

    def keep_generated(latents, cond):  # the sampler's last call: keep what it generated, write back after
        kept.append(latents)
        return write_back(latents, cond)

    write_back = sampler.write_back
    sampler.write_back = keep_generated
    try:
        generate(ctx, model, captions, shape, seed, reference=refs)
    finally:
        sampler.write_back = write_back
    latents, frames = torch.cat(kept), shape[0]
    return to_uint8(ctx.ae.decode(latents, frames if ctx.ae.valid_num_frames(frames) else None))[:, 0]


def measure(stage_dir: Path, settings: dict) -> dict:
    from opensora_lite.data.synthetic import DIRECTIONS, ShapesConfig
    from opensora_lite.diffusion.pipeline import generate
    from opensora_lite.diffusion.sampling import sample_captions, sample_shape
    from opensora_lite.eval.shapes import read_clip, score_i2v
    from opensora_lite.train.evaluation import _i2v_references

    ctx, model, stage = load_stage(stage_dir)
    cfg = ctx.cfg
    for key, value in settings.items():  # the run's sample.* settings, with --set's changes
        if not hasattr(cfg.sample, key):
            raise SystemExit(f"--set {key}: not a sample setting")
        setattr(cfg.sample, key, value)
    shape = sample_shape(ctx, stage)
    colours = list(cfg.eval.colours) if cfg.eval.colours else None
    refs, prompts = _i2v_references(cfg.eval.i2v_clips, shape[1], shape[2], cfg.sample.seed, colours)
    captions = sample_captions(ctx, prompts, shape)
    seed = cfg.sample.seed + 10_000  # the evaluation's I2V noise streams
    videos = generate(ctx, model, captions, shape, seed, reference=refs)
    own0 = own_first_frames(ctx, model, captions, shape, seed, refs)

    fps = cfg.sample.fps or cfg.data.target_fps
    speed = ShapesConfig().speeds["fast"]  # the probes' prompts are all "fast"
    rows = []
    for ref, video, f0, prompt in zip(refs, videos, own0, prompts):
        c_ref, c, c_own = centroids(ref[None])[0], centroids(video), centroids(f0[None])[0]
        direction = prompt.rsplit(" ", 1)[1]
        dy, dx = DIRECTIONS[direction]
        step = speed * (shape[1] if dy else shape[2]) / fps  # pixels per frame along the motion
        if np.isnan(c_ref).any() or np.isnan(c[1]).any():
            rows.append(None)
            continue
        later = [np.linalg.norm(c[k + 1] - c[k]) for k in range(1, len(c) - 1) if not np.isnan(c[k : k + 2]).any()]
        rows.append(
            dict(
                room=room(ref, direction) >= step * (shape[0] - 1),
                expected=step,
                ref_to_f1=float(np.linalg.norm(c[1] - c_ref)),
                off_track=float(np.linalg.norm(c[1] - (c_ref + step * np.array([dy, dx])))),
                later=[float(v) for v in later],
                own_f0=float(np.linalg.norm(c_own - c_ref)) if not np.isnan(c_own).any() else None,
            )
        )
    keep = score_i2v(list(videos), list(refs), colours)["i2v_colour_keep"]
    moves = [read_clip(v[1:], colours).direction == p.rsplit(" ", 1)[1] for v, p in zip(videos, prompts)]
    return dict(stage=stage_dir.name, shape=shape, clips=len(refs), rows=rows, keep=keep, direction=np.mean(moves))


def room(ref: np.ndarray, direction: str) -> int:
    """Pixels between the reference's shape and the frame's edge it is asked to move towards."""
    from opensora_lite.eval.shapes import foreground

    ys, xs = np.nonzero(foreground(ref[None])[0] > 0.5)
    h, w = ref.shape[:2]
    return {"right": w - 1 - xs.max(), "left": xs.min(), "down": h - 1 - ys.max(), "up": ys.min()}[direction]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run directory (runs/tiny_cpu)")
    p.add_argument("--stages", nargs="+", help="stage names (default: every stage with an image condition)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="sample.* settings to change")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    import yaml

    settings = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    stages = a.stages or [d.name for d in sorted(a.run.iterdir()) if StageDir(d).done and _has_cond(d)]
    if not stages:
        raise SystemExit(f"no stage with an image condition (cond_in) finished in {a.run}")
    results = [measure(a.run / s, settings) for s in stages]

    def stats(v: list[float]) -> str:
        return f"{np.median(v):.2f} / {np.mean(v):.2f} / {np.percentile(v, 90):.2f}" if len(v) else "-"

    rows = []
    for r in results:
        found = [x for x in r["rows"] if x is not None]
        for name, part in (("all", found), ("room", [x for x in found if x["room"]])):
            part_later = [v for x in part for v in x["later"]]
            rows.append(
                [
                    r["stage"],
                    "{}f {}x{}".format(*r["shape"]),
                    f"{name}: {len(part)} of {r['clips']}",
                    stats([x["ref_to_f1"] for x in part]),
                    f"{np.mean([x['expected'] for x in part]):.2f}" if part else "-",
                    stats([x["off_track"] for x in part]),
                    f"{np.median(part_later):.2f}" if part_later else "-",
                    stats([x["own_f0"] for x in part if x["own_f0"] is not None]),
                    f"{r['direction']:.3f}" if name == "all" else "",
                    f"{r['keep']:.3f}" if name == "all" else "",
                ]
            )
    cmd = "python -m benchmarks.bench_i2v_position " + " ".join(str(x) for x in sys.argv[1:] if x != "--no-append")
    lines = heading("I2V reference-to-frame-1 position error (CPU)", cmd)
    lines += [
        "The end-of-stage evaluation's I2V probes (same references, prompts, seeds and guidance). Distances in "
        "pixels between foreground centroids, as median / mean / 90th percentile over the clips: ref->f1 from the "
        "reference to generated frame 1; expected: one frame of the prompt's motion; off-track: frame 1 from "
        "reference + that step; later steps: median distance between consecutive generated frames from frame 1 "
        "on; f0 (model): the model's own frame 0, before the sampler writes the reference back, from the "
        "reference. Clips: all probes with a shape in the reference and frame 1, and those whose reference leaves "
        "the shape room for the prompt's motion over the clip (as every training clip's first frame does). Sampling: "
        f"the run's sample settings{', with ' + ', '.join(a.set) if a.set else ''}.",
        "",
    ]
    header = ["stage", "size", "clips", "ref->f1 px", "expected px", "off-track px", "later steps px"]
    lines += table([*header, "f0 (model) px", "direction", "colour keep"], rows)
    publish(lines, not a.no_append)


def _has_cond(stage_dir: Path) -> bool:
    """The stage's final weights hold an image condition (read from the file's keys, for its family)."""
    from safetensors import safe_open

    from opensora_lite.config.load import load_run_config
    from opensora_lite.models.spec import spec_for

    weights = StageDir(stage_dir).final / MODEL_FILE
    with safe_open(str(weights), "pt") as f:
        keys = dict.fromkeys(f.keys())
    return spec_for(load_run_config(weights).model).conditioned(keys)


if __name__ == "__main__":
    main()
