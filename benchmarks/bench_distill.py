#!/usr/bin/env python3
"""A distilled student against its teacher: the Shapes evaluator's figures and sampling time per clip,
side by side in one run (docs/distillation.md).

The teacher samples as its run does (sample.num_steps with its text and image guidance: two or three
forwards a step), the student on its own schedule (distill.steps, one forward a step): both through the
end-of-stage evaluation of train/evaluation.py (the same T2V probes, I2V references and seeds), so the
figures are those its stage would print. Sampling time: `--rounds` alternating timed generations of the
same `--clips` T2V prompts by each model (the median per clip), then the same for I2V.

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


def _timed(ctx, model, shape, clips: int, task: str) -> float:
    """Seconds per clip of one generation of `clips` probes (T2V, or I2V from rendered references)."""
    import torch

    from opensora_lite.diffusion.pipeline import generate
    from opensora_lite.diffusion.sampling import sample_captions
    from opensora_lite.train.evaluation import _i2v_references

    refs, captions = _i2v_references(clips, shape[1], shape[2], 0)
    captions = sample_captions(ctx, captions, shape)
    began = time.perf_counter()
    with torch.no_grad():
        generate(ctx, model, captions, shape, 0, reference=refs if task == "i2v" else None,
                 task="i2v_head" if task == "i2v" else "t2v")  # fmt: skip
    return (time.perf_counter() - began) / clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher", type=Path, help="the teacher's stage directory (e.g. runs/tiny_cpu/hires)")
    ap.add_argument("student", type=Path, help="the distill stage's directory (e.g. runs/tiny_distill/distill)")
    ap.add_argument("--clips", type=int, default=8, help="clips per timed generation")
    ap.add_argument("--rounds", type=int, default=3, help="timed generations per model and task (median)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to docs/benchmarks.md")
    a = ap.parse_args()

    import torch

    from opensora_lite.diffusion.pipeline import guidance_of
    from opensora_lite.diffusion.sampler import guidance_branches
    from opensora_lite.diffusion.sampling import sample_shape
    from opensora_lite.train.evaluation import evaluate_stage

    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = {name: load_stage(folder) for name, folder in (("teacher", a.teacher), ("student", a.student))}
    figures, times = {}, {name: {"t2v": [], "i2v": []} for name in models}
    for name, (ctx, model, stage) in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{name}: evaluating {ctx.cfg.sample.num_steps} steps ...", flush=True)
            figures[name] = evaluate_stage(ctx, model, stage, Path(tmp) / "samples")[0]
    for _ in range(a.rounds):  # alternating, so a change in the machine's load reaches both alike
        for task in ("t2v", "i2v"):
            for name, (ctx, model, stage) in models.items():
                times[name][task].append(_timed(ctx, model, sample_shape(ctx, stage), a.clips, task))

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
            *(f"{f[k]:.3f}" if k in f else "-" for k in KEYS),
        ])  # fmt: skip
    cmd = f"python -m benchmarks.bench_distill {a.teacher} {a.student}"
    lines = heading("Distilled student against its teacher (CPU)", cmd, note=f"; {a.clips} clips x {a.rounds} rounds")
    header = ["model", "steps", "forwards/clip T2V / I2V", "s/clip T2V (speed-up)", "s/clip I2V (speed-up)", *KEYS]
    lines += table(header, rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
