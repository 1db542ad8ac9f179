#!/usr/bin/env python3
"""A distilled student against its teacher: the Shapes evaluator's figures and sampling time per clip,
side by side in one run (docs/distillation.md).

The teacher samples as its run does (sample.num_steps with its text and image guidance: two or three
forwards a step), the student on its own schedule (distill.steps, one forward a step), and the teacher
once more on the student's schedule (what distillation adds over cutting the steps): all through the
end-of-stage evaluation of train/evaluation.py (the same T2V probes, I2V references and seeds), so the
figures are those its stage would print. Sampling time: `--rounds` alternating timed generations by each
model of the evaluation's I2V probes (`--clips` of them: their prompts without the reference for T2V, with
it for I2V), the median per clip; the I2V ones also give the I2V direction accuracy (frames 1.. moving
the prompt's way), which the evaluation does not report.

    python -m benchmarks.bench_distill runs/tiny_cpu/hires runs/tiny_distill/distill
    python -m benchmarks.bench_distill TEACHER STUDENT --no-append
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_i2v_position import load_stage
from benchmarks.benchlib import heading, publish, table

KEYS = ("colour_acc", "direction_acc", "speed_acc", "shape_acc", "i2v_colour_keep")


def _timed(ctx, model, shape, clips: int, task: str) -> tuple[float, float]:
    """(seconds per clip, direction accuracy) of one generation of the evaluation's first `clips` I2V
    probes (its rendered references, prompts and seeds), with their references (I2V) or without (T2V).
    Direction: generated frames 1.. read as moving the prompt's way (eval/shapes.py)."""
    import numpy as np
    import torch

    from opensora_lite.diffusion.pipeline import generate
    from opensora_lite.diffusion.sampling import sample_captions
    from opensora_lite.eval.shapes import read_clip
    from opensora_lite.train.evaluation import _i2v_references

    seed = ctx.cfg.sample.seed
    refs, prompts = _i2v_references(ctx.cfg.eval.i2v_clips, shape[1], shape[2], seed)
    refs, prompts = refs[:clips], prompts[:clips]
    given = dict(reference=refs, task="i2v_head") if task == "i2v" else dict(task="t2v")
    began = time.perf_counter()
    with torch.no_grad():
        videos = generate(ctx, model, sample_captions(ctx, prompts, shape), shape, seed + 10_000, **given)
    seconds = (time.perf_counter() - began) / clips
    moves = [read_clip(v[1:]).direction == p.rsplit(" ", 1)[1] for v, p in zip(videos, prompts)]
    return seconds, float(np.mean(moves))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher", type=Path, help="the teacher's stage directory (e.g. runs/tiny_cpu/hires)")
    ap.add_argument("student", type=Path, help="the distill stage's directory (e.g. runs/tiny_distill/distill)")
    ap.add_argument("--clips", type=int, default=24, help="clips per timed generation (at most eval.i2v_clips)")
    ap.add_argument("--rounds", type=int, default=3, help="timed generations per model and task (median)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to docs/benchmarks.md")
    a = ap.parse_args()

    import torch

    from opensora_lite.diffusion.pipeline import guidance_of
    from opensora_lite.diffusion.sampler import guidance_branches
    from opensora_lite.diffusion.sampling import sample_shape
    from opensora_lite.train.evaluation import evaluate_stage

    torch.set_num_threads(max(1, torch.get_num_threads()))
    import dataclasses

    from opensora_lite.config.stages import student_sampling

    models = {name: load_stage(folder) for name, folder in (("teacher", a.teacher), ("student", a.student))}
    # what distillation adds: the teacher itself on the student's schedule (its steps, no guidance)
    ctx, model, stage = models["teacher"]
    distill = models["student"][2].distill
    fast = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, sample=student_sampling(ctx.cfg.sample, distill)))
    models = {"teacher": models["teacher"], f"teacher, {distill.steps} steps no CFG": (fast, model, stage),
              "student": models["student"]}  # fmt: skip
    figures, times, moves = {}, {name: {"t2v": [], "i2v": []} for name in models}, {}
    for name, (ctx, model, stage) in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{name}: evaluating {ctx.cfg.sample.num_steps} steps ...", flush=True)
            figures[name] = evaluate_stage(ctx, model, stage, Path(tmp) / "samples")[0]
    for _ in range(a.rounds):  # alternating, so a change in the machine's load reaches both alike
        for task in ("t2v", "i2v"):
            for name, (ctx, model, stage) in models.items():
                seconds, moves[name, task] = _timed(ctx, model, sample_shape(ctx, stage), a.clips, task)
                times[name][task].append(seconds)

    rows, base = [], {}
    for name, (ctx, _, _) in models.items():
        g = guidance_of(ctx.cfg.sample)
        steps = ctx.cfg.sample.num_steps
        per = {task: statistics.median(times[name][task]) for task in ("t2v", "i2v")}
        base = base or per
        f = figures[name]
        rows.append([
            name, steps, f"{steps * guidance_branches(g, False)} / {steps * guidance_branches(g, True)}",
            *(f"{per[t]:.3f} ({base[t] / per[t]:.1f}x)" for t in ("t2v", "i2v")),
            *(f"{f[k]:.3f}" if k in f else "-" for k in KEYS), f"{moves[name, 'i2v']:.3f}",
        ])  # fmt: skip
    cmd = f"python -m benchmarks.bench_distill {a.teacher} {a.student}"
    lines = heading("Distilled student against its teacher (CPU)", cmd, note=f"; {a.clips} clips x {a.rounds} rounds")
    header = ["model", "steps", "forwards/clip T2V / I2V", "s/clip T2V (speed-up)", "s/clip I2V (speed-up)", *KEYS,
              "i2v_direction_acc"]  # fmt: skip
    lines += table(header, rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
