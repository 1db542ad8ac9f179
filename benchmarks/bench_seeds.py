#!/usr/bin/env python3
"""Run a curriculum over several seeds and report every stage's evaluator figures: each seed, the mean
and the minimum. This is how the quickstart's figures are stated (one seed says little: direction is
learned at a seed-dependent step).

    python3 -m benchmarks.bench_seeds                                  # the quickstart, seeds 0 1 2
    python3 -m benchmarks.bench_seeds --experiment tiny_cpu_30min --seeds 0 1 2
    python3 -m benchmarks.bench_seeds --jobs 1 -- curriculum.stages.t2v.steps=800   # extra Hydra overrides

Seeds run side by side (`--jobs`, default 2: one per core of a 2-core machine) at `--threads` torch
threads each, from the installed `.venv` and the Shapes shards in data/shapes. Runs go under
`--root` (default runs/seeds). Prints a table and appends it to docs/benchmarks.md (`--no-append`: print).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.benchlib import REPO, heading, publish, run_logged, table

METRICS = ("colour_acc", "direction_acc", "speed_acc", "shape_acc", "i2v_colour_keep")


def run_seed(a: argparse.Namespace, seed: int) -> tuple[int, float, Path]:
    name = f"{a.experiment}_seed{seed}"
    cmd = [
        str(REPO / ".venv" / "bin" / "osl-curriculum"),
        f"experiment={a.experiment}",
        f"run.seed={seed}",
        f"run.name={name}",
        f"run.root={a.root}",
        f"run.threads={a.threads}",
        *a.overrides,
    ]
    wall = run_logged(cmd, Path(a.root) / f"{name}.log", f"seed {seed}")
    return seed, wall, Path(a.root) / name


def stage_metrics(run_dir: Path) -> list[tuple[str, dict]]:
    """(stage, metrics) in curriculum order (the order the summaries were written)."""
    found = [(p.stat().st_mtime, json.loads(p.read_text())) for p in run_dir.glob("*/final/summary.json")]
    return [(s["name"], s.get("metrics", {})) for _, s in sorted(found, key=lambda x: x[0])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="tiny_cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="seeds run at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per seed")
    p.add_argument("--root", default=str(REPO / "runs" / "seeds"))
    p.add_argument("--no-append", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every seed (after --)")
    a = p.parse_args()
    with ThreadPoolExecutor(a.jobs) as pool:
        done = sorted(pool.map(lambda s: run_seed(a, s), a.seeds))
    per_seed = {seed: dict(stage_metrics(folder)) for seed, _, folder in done}
    stages = [name for name, _ in stage_metrics(done[0][2])]
    rows = []
    for stage in stages:
        for key in METRICS:
            vals = [per_seed[s][stage][key] for s in a.seeds if key in per_seed[s].get(stage, {})]
            if not vals:
                continue
            cells = [f"{per_seed[s][stage][key]:.3f}" for s in a.seeds]
            rows.append([stage, key, *cells, f"{statistics.mean(vals):.3f}", f"**{min(vals):.3f}**"])
    command = (
        "python3 -m benchmarks.bench_seeds --experiment " + a.experiment + " --seeds " + " ".join(map(str, a.seeds))
    )
    if a.overrides:
        command += " -- " + " ".join(a.overrides)
    walls = ", ".join(f"{t:.0f}" for _, t, _ in done)
    note = f" ({a.jobs} seeds at a time, {a.threads} thread(s) each; wall {walls} s)"
    lines = heading(f"Seeds: {a.experiment}", command, note=note)
    lines += table(["stage", "metric", *[f"seed {s}" for s in a.seeds], "mean", "min"], rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
