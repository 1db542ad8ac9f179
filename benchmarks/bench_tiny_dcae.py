#!/usr/bin/env python3
"""experiment=tiny_dcae end to end, timed, and its text-to-video step against the pixel autoencoder's.

    python3 -m benchmarks.bench_tiny_dcae                    # the whole run, then the step-time comparison
    python3 -m benchmarks.bench_tiny_dcae --steps 30 --no-append curriculum.stages.ae.steps=200   # + overrides

1. `osl-curriculum experiment=tiny_dcae` under --root (a finished run is reused: its stages skip):
   per stage the train and evaluation seconds and the figures (autoencoder: PSNR, SSIM, latent std;
   diffusion stages: the Shapes evaluator's colour, direction and I2V colour keep).
2. Side by side in this one invocation, alternating (DC-AE, pixel, DC-AE, pixel: --rounds): the t2v
   stage for --steps steps at the same video size (16px, 8 frames) on the trained DC-AE's latents and on the pixel
   autoencoder's (`curriculum.stages.t2v.autoencoder=pixel`), from scratch, without evaluation; the
   median logged `step_time_s` after the first logged interval.
Prints both tables and appends them to docs/benchmarks.md (`--no-append`: print only).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.benchlib import REPO, heading, publish, run_logged, table

BIN = REPO / ".venv" / "bin"
FIGURES = ("psnr", "ssim", "latent_std", "colour_acc", "direction_acc", "i2v_colour_keep")


def step_times(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in rows if "step_time_s" in r and r.get("stage") == "t2v"][1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(REPO / "runs" / "bench_tiny_dcae"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="t2v steps per side of the step-time comparison")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the comparison")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the run")
    a = p.parse_args()
    root = Path(a.root)
    base = ["experiment=tiny_dcae", f"run.root={root}", f"run.threads={a.threads}", *a.overrides]

    wall = run_logged([str(BIN / "osl-curriculum"), *base, "run.name=tiny_dcae"], root / "tiny_dcae.log", "the run")
    rows = []
    for summary in sorted((root / "tiny_dcae").glob("*/final/summary.json"), key=lambda f: f.stat().st_mtime):
        s = json.loads(summary.read_text())
        figures = ", ".join(f"{k} {s['metrics'][k]:.3f}" for k in FIGURES if k in s.get("metrics", {}))
        rows.append([s["name"], s["steps"], f"{s['seconds']:.0f}", f"{s.get('eval_seconds', 0):.0f}", figures])
    lines = heading(
        "experiment=tiny_dcae end to end (CPU)",
        "python3 -m benchmarks.bench_tiny_dcae" + (" " + " ".join(a.overrides) if a.overrides else ""),
        note=f" ({a.threads} threads; curriculum wall {wall:.0f} s, start-up and data reading included)",
    )
    lines += table(["stage", "steps", "train s", "eval s", "figures"], rows)

    # the trained DC-AE's latents (stage:ae of the run above) against the pixel autoencoder's
    t2v = "curriculum.stages.t2v"
    step = [
        str(BIN / "osl-train"),
        *base,
        "run.stage=t2v",
        f"{t2v}.steps={a.steps}",
        f"{t2v}.init=none",
        f"{t2v}.evaluate=false",
        f"{t2v}.log_every=5",
        f"{t2v}.checkpoint_every={a.steps}",
    ]
    trained = root / "tiny_dcae" / "ae" / "final"
    stats = json.loads((trained / "summary.json").read_text())["metrics"]
    # the trained DC-AE as stage:ae resolves it in the run itself (these jobs run under other names)
    scale, shift = 1 / stats["latent_std"], stats["latent_mean"]
    dcae = f"{{path:{trained / 'ema.safetensors'},scaling_factor:{scale},shift_factor:{shift}}}"
    sides = {
        "Shapes DC-AE (4x4x4, 8 ch)": (f"{t2v}.autoencoder={dcae}", "2 x 4 x 4 x 8", 2 * 4 * 4),
        "pixel (1x2x2, 12 ch)": (f"{t2v}.autoencoder=pixel", "8 x 8 x 8 x 12", 8 * 8 * 8),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rnd in range(a.rounds):
        for k, (name, (choice, _, _)) in enumerate(sides.items()):
            job = f"step_{k}_{rnd}"
            run_logged([*step, f"run.name={job}", choice], root / f"{job}.log", job)
            times[name] += step_times(root / job)
    ref = statistics.median(times["pixel (1x2x2, 12 ch)"])
    step_rows = []
    for name, (_, shape, tokens) in sides.items():
        med = statistics.median(times[name])
        step_rows.append([name, shape, tokens, f"{med * 1000:.1f}", f"{ref / med:.1f}x"])
    per = f"{a.steps} steps x {a.rounds} round(s) per side, median"
    lines += ["", f"Text-to-video step at 16px x 8 frames, batch 16 ({per}):", ""]
    lines += table(["autoencoder", "latent (T x H x W x C)", "tokens", "step ms", "speed-up vs pixel"], step_rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
