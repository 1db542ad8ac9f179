#!/usr/bin/env python3
"""Motion-score conditioning, proven small: does a model trained on Open-Sora 2.0's captions move faster
when prompted with a higher motion score?

    python -m benchmarks.bench_motion_score                    # data, training, sweep, table (seed 0)
    python -m benchmarks.bench_motion_score --seeds 0 1 2      # one run per seed, one table
    python -m benchmarks.bench_motion_score --no-append -- curriculum.stages.t2v.steps=900

1. Data, as real data is made: `osl-data shapes=motion` writes Shapes clips at six speeds (0.3-1.05
   frame extents per second), also as mp4 files (<source>/clips) whose caption leaves the speed out, and
   `osl-data kind=videos` ingests those files, measuring each clip's VMAF motion. (Skipped when present.)
2. Training: `osl-curriculum experiment=tiny_motion_score` (image, then 16px text-to-video on captions
   "a red circle moving right 8 FPS, 3 motion score."; caption=opensora2). A finished run is reused.
3. The sweep: `osl-sample` (its function, in this process) at each integer score from the 5th to the
   95th percentile of the data's (rounded) scores, for the same eight prompts and seeds (`--samples` per
   prompt; osl-sample's 20 Euler steps and CFG 4 unless given); the Shapes evaluator reads each clip's
   speed at the size sampled (16 px). `--scores` sets the scores; `--per-colour N` samples each prompt at
   N scores over its own colour's 5th-95th percentile (VMAF motion depends on the shape's contrast).
4. The figures: Spearman's rank correlation of prompted score and measured speed over all clips and per
   prompt, the mean speed per score, the data's own correlation of score and rendered speed; one contact
   sheet per prompt (a row per score, same prompt and seed; named by the prompt's index in PROMPTS), the
   first copied to docs/figures/.

Prints a table and appends it to docs/benchmarks.md (`--no-append`: print only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from benchmarks.benchlib import REPO, compose, heading, publish, run_logged, table

PROMPTS = [
    "a red circle moving right",
    "a green square moving left",
    "a blue triangle moving up",
    "a yellow circle moving down",
    "a magenta square moving right",
    "a cyan triangle moving left",
    "a red triangle moving down",
    "a blue square moving up",
]
FIGURE = REPO / "docs" / "figures" / "motion_score_sweep.png"
BIN = REPO / ".venv" / "bin"


def build_data(source: Path, shards: Path, logs: Path, data_overrides: list[str]) -> None:
    clips = source / "clips"  # shapes=motion writes each clip as files there too (shapes.files)
    if not any(clips.glob("clip*.mp4")):
        cmd = [str(BIN / "osl-data"), "shapes=motion", f"out={source}", *data_overrides]
        print(f"data: {run_logged(cmd, logs / 'shapes.log', 'osl-data shapes=motion'):.0f} s")
    if not any(shards.glob("*.tar")):
        cmd = [str(BIN / "osl-data"), "kind=videos", f"videos.source={clips}", f"out={shards}"]
        print(f"ingest: {run_logged(cmd, logs / 'ingest.log', 'osl-data kind=videos'):.0f} s")


def data_scores(shards: Path, speeds: dict[str, float]) -> list[dict]:
    """Per ingested clip: its VMAF motion, the rounded score the caption carries, the rendered labels (from
    the json beside the source mp4) and its speed in frame extents per second (`speed_value`)."""
    out = []
    for shard in sorted(shards.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    labels = json.loads(Path(meta["source"]).with_suffix(".json").read_text())
                    score = int(float(meta["vmaf_motion"]) + 0.5)  # Open-Sora 2.0's rounding (data/captions.py)
                    speed = speeds[labels["speed"]]
                    out.append(dict(labels, vmaf_motion=meta["vmaf_motion"], score=score, speed_value=speed))
    return out


def sweep(run_dir: Path, plan: dict[str, list[int]], a: argparse.Namespace, logs: Path) -> list[dict]:
    """osl-sample at every score of each prompt's plan (prompt -> scores; same seeds at every score), in
    this process (torch is imported once, not once per score); each clip with its score, prompt and seed."""
    import torch

    from opensora_lite.cli.sample import sample
    from opensora_lite.data.video import decode_window, probe

    torch.set_num_threads(a.threads)
    folder = run_dir / "motion_sweep"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    clips = []
    for score in sorted({s for scores in plan.values() for s in scores}):
        prompts = folder / f"prompts_{score}.txt"  # the prompts whose plan holds this score, in PROMPTS' order
        prompts.write_text("\n".join(p for p in PROMPTS if score in plan[p]) + "\n")
        out = folder / f"score_{score}"
        args = [f"checkpoint={run_dir / 't2v'}", f"prompt_file={prompts}", f"motion_score={score}", "seed=0"]
        args += [f"num_samples={a.samples}", f"out={out}"]
        for key, value in (("num_steps", a.num_steps), ("cfg_scale", a.cfg)):
            if value is not None:
                args.append(f"{key}={value}")
        with open(logs / f"sample_{score}.log", "w") as log, contextlib.redirect_stdout(log):
            print("osl-sample " + shlex.join(args), flush=True)
            sample(compose(args, "sample"))
        written = json.loads((out / "samples.json").read_text())
        _, h, w = written["frames_height_width"]  # the mp4s are enlarged; read them at the size sampled
        for s in written["samples"]:
            data = Path(s["video"]).read_bytes()
            frames = decode_window(data, 0, probe(data).num_frames, 1, (h, w))
            clips.append(dict(score=score, prompt=s["prompt"], seed=s["seed"], fps=written["fps"], frames=frames))
    return clips


def ceiling(data: list[dict], plan: dict[str, list[int]], samples: int, draws: int = 20) -> tuple[float, float]:
    """What the sweep would read from a model that had learned the data exactly: each clip's speed drawn
    from the data's clips of its prompt's colour and its score (the nearest score that colour has), for
    the same prompts, scores (`plan`: prompt -> scores) and samples; the pooled Spearman's mean and spread
    over `draws` sweeps."""
    from opensora_lite.eval.motion_score import spearman

    rng = np.random.default_rng(0)
    out = []
    for _ in range(draws):
        x, y = [], []
        for prompt in PROMPTS:
            rows = [d for d in data if d["colour"] == prompt.split()[1]]
            for score in plan[prompt] if rows else []:  # (a colour the data lacks: a smoke run's)
                nearest = min(abs(d["score"] - score) for d in rows)
                pool = [d["speed_value"] for d in rows if abs(d["score"] - score) == nearest]
                x += [score] * samples
                y += list(rng.choice(pool, samples))
        out.append(spearman(x, y))
    return float(np.mean(out)), float(np.std(out))


def score_plan(data: list[dict], scores: list[int] | None, per_colour: int | None) -> dict[str, list[int]]:
    """The scores each prompt is sampled at. `scores` given: those, for every prompt. `per_colour` N: for
    each prompt, N integer scores evenly spaced over the 5th to 95th percentile of the scores of the data's
    clips of its colour (VMAF motion grows with the shape's contrast: a yellow shape's slowest clips score
    about what a red one's fastest do, so one common range is the fast end for one colour and the slow end
    for another); duplicates dropped. Otherwise every integer from the data's 5th to its 95th percentile,
    for every prompt."""
    if scores:
        return {p: list(scores) for p in PROMPTS}
    if per_colour:
        plan = {}
        for p in PROMPTS:
            rows = [d["score"] for d in data if d["colour"] == p.split()[1]] or [d["score"] for d in data]
            lo, hi = np.percentile(rows, [5, 95])
            plan[p] = sorted({int(round(v)) for v in np.linspace(lo, hi, per_colour)})
        return plan
    lo, hi = np.percentile([d["score"] for d in data], [5, 95])
    return {p: list(range(int(lo), int(hi) + 1)) for p in PROMPTS}


def read_speeds(clips: list[dict]) -> None:
    from opensora_lite.eval.shapes import read_clip

    for c in clips:
        reading = read_clip(c["frames"], fps=c["fps"])
        c["speed"], c["static"] = reading.speed_value, reading.direction == "static"


def contact_sheets(run_dir: Path, clips: list[dict]) -> list[Path]:
    """One sheet per (prompt, seed): a row per score."""
    from opensora_lite.eval.contact_sheet import save_contact_sheet

    paths = []
    for i, prompt in enumerate(PROMPTS):
        rows = sorted((c for c in clips if c["prompt"] == prompt and c["seed"] == 0), key=lambda c: c["score"])
        labels = [f"score {c['score']}: speed {c['speed']:.2f} /s" for c in rows]
        path = run_dir / "motion_sweep" / f"contact_sheet_{i}.png"
        paths.append(save_contact_sheet(path, np.stack([c["frames"] for c in rows]), labels))
    return paths


def run_seed(a: argparse.Namespace, seed: int, logs: Path) -> dict:
    from opensora_lite.eval.motion_score import spearman, sweep_summary

    name = f"tiny_motion_score_seed{seed}"
    run_dir = Path(a.root) / name
    cmd = [str(BIN / "osl-curriculum"), "experiment=tiny_motion_score", f"run.seed={seed}", f"run.name={name}"]
    cmd += [f"run.root={a.root}", f"run.threads={a.threads}", f"data.shards={a.shards}", *a.overrides]
    run_logged(cmd, logs / f"{name}.log", f"training seed {seed}")
    # the stages' own training seconds (a finished run is reused: its time is that of the run that trained it;
    # a stage resumed from a checkpoint counts from there, which the table says)
    stages = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/final/summary.json"))]
    train = f"{sum(s['seconds'] for s in stages):.0f}"
    resumed = [f"{s['name']} from step {s['resumed_from']}" for s in stages if s.get("resumed_from")]
    train += f" ({', '.join(resumed)})" if resumed else ""
    # the speeds the data was rendered at: shapes=motion with the same --shapes overrides
    speeds = compose(["shapes=motion", *[f"shapes.{kv}" for kv in a.shapes]], "build_data").shapes.speeds
    data = data_scores(Path(a.shards), dict(speeds))
    plan = score_plan(data, a.scores, a.per_colour)
    scores = sorted({s for v in plan.values() for s in v})
    began = time.perf_counter()
    clips = sweep(run_dir, plan, a, logs)
    read_speeds(clips)
    summary = sweep_summary([c["score"] for c in clips], [c["speed"] for c in clips], [c["prompt"] for c in clips])
    summary["static"] = float(np.mean([c["static"] for c in clips]))
    summary["sheets"] = contact_sheets(run_dir, clips)
    summary["data_spearman"] = spearman([d["score"] for d in data], [d["speed_value"] for d in data])
    summary["ceiling"] = ceiling(data, plan, a.samples)
    summary["plan"] = plan
    by_colour = {}
    for colour in sorted({d["colour"] for d in data}):
        rows = [d for d in data if d["colour"] == colour]
        by_colour[colour] = spearman([d["score"] for d in rows], [d["speed_value"] for d in rows])
    summary["data_spearman_by_colour"] = by_colour
    summary["data_range"] = (min(d["score"] for d in data), max(d["score"] for d in data))
    summary.update(scores=scores, train=train, sweep=time.perf_counter() - began, run_dir=run_dir)
    (run_dir / "motion_sweep" / "summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k not in ("sheets", "run_dir")}, indent=2, default=str)
    )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--scores", type=int, nargs="+", help="default: every integer from the data's p5 to p95")
    p.add_argument("--per-colour", type=int, metavar="N", help="N scores per prompt over its colour's p5-p95")
    p.add_argument("--samples", type=int, default=2, help="seeds per prompt and score (0, 1, ...)")
    p.add_argument("--num-steps", type=int, help="sampling steps (default: osl-sample's, 20)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: osl-sample's, 4)")
    p.add_argument("--shapes", nargs="+", default=[], metavar="KEY=VALUE", help="shapes.* overrides for the data")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--root", default=str(REPO / "runs" / "motion_score"))
    p.add_argument("--source", default=str(REPO / "data" / "shapes_motion_src"), help="osl-data's out (clips/ in it)")
    p.add_argument("--shards", default=str(REPO / "data" / "shapes_motion"))
    p.add_argument("--no-append", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for training (after --)")
    a = p.parse_args()
    logs = Path(a.root) / "logs"
    build_data(Path(a.source), Path(a.shards), logs, [f"shapes.{kv}" for kv in a.shapes])
    results = {seed: run_seed(a, seed, logs) for seed in a.seeds}

    first = results[a.seeds[0]]
    rows = []
    for seed, r in results.items():
        speeds = " / ".join(f"{m:.2f}" for m, _ in r["speed_by_score"].values())
        rows.append(
            [
                seed,
                " ".join(map(str, r["scores"])),
                r["num_clips"],
                f"**{r['spearman']:.3f}**",
                f"{r['spearman_per_prompt_mean']:.3f}",
                speeds,
                f"{r['static']:.2f}",
                r["train"],
                f"{r['sweep']:.0f}",
            ]
        )
    command = shlex.join(["python", "-m", "benchmarks.bench_motion_score", *sys.argv[1:]])
    lo, hi = first["data_range"]
    by_colour = ", ".join(f"{c} {v:.2f}" for c, v in first["data_spearman_by_colour"].items())
    note = (
        f" ({len(PROMPTS)} prompts x {a.samples} seeds per score; the data: scores {lo}-{hi}, Spearman of score"
        f" and rendered speed {first['data_spearman']:.3f} pooled, per colour {by_colour}; a model that had"
        f" learned the data exactly would read {first['ceiling'][0]:.2f} +- {first['ceiling'][1]:.2f})"
    )
    lines = heading("Motion score: prompted score against measured speed", command, note=note)
    header = ["seed", "scores", "clips", "Spearman", "per prompt (mean)", "mean speed per score", "static"]
    header += ["train s", "sweep s"]
    lines += table(header, rows)
    per_prompt = ", ".join(f"{p}: {v:.2f}" for p, v in first["spearman_per_prompt"].items() if not math.isnan(v))
    sheets = first["run_dir"] / "motion_sweep"
    sheets = sheets.relative_to(REPO) if sheets.is_relative_to(REPO) else sheets
    lines += ["", f"Seed {a.seeds[0]}, per prompt: {per_prompt}. Contact sheets: {sheets}."]
    if a.per_colour:
        plan = "; ".join(f"{p.split()[1]} {' '.join(map(str, v))}" for p, v in first["plan"].items())
        lines.append(f"Scores per prompt (`--per-colour {a.per_colour}`, by the prompt's colour): {plan}.")
    if not a.no_append:
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first["sheets"][0], FIGURE)
        lines.append(f"Picture: {FIGURE.relative_to(REPO)} (one row per score, same prompt and seed).")
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
