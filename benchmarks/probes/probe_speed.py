#!/usr/bin/env python3
"""Does a Shapes model generate the prompted speed at all? Paired slow/fast prompts, same noise.

    python -m benchmarks.probes.probe_speed runs/tiny_cpu/t2v runs/tiny_cpu/hires --samples 2

For each stage checkpoint: the evaluator's 24 colour x direction prompts (with its shape assignment), each
sampled twice, once saying "slow" and once "fast", with the same seeds (osl-sample's `seed + j`: the same
initial noise for both words), 16 Euler steps and CFG 4 unless given (the quickstart's evaluation
settings). The Shapes evaluator reads each clip's speed (frame extents per second along the fitted motion
axis; "slow"/"fast" against the midpoint of the Shapes speeds the code is set to, so set them to the
run's). The clips go to <stage>/probe_speed_cfg<C>_steps<N>_n<S>/. Prints, per stage:

- the mean (and quartiles) of the measured speed for slow and for fast prompts, against the rendered
  speeds of the data (slow/fast of `shapes.speeds`) and the evaluator's threshold (their midpoint);
- the paired difference fast - slow (same prompt otherwise, same noise): > 0 in what share of pairs;
- speed accuracy at the evaluator's threshold and at the best threshold for these clips (how much is
  calibration, how much is no separation);
- the share of clips read as static.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from benchmarks.benchlib import compose


def probe(stage_dir: Path, samples: int, num_steps: int | None, cfg: float | None, threads: int) -> dict:
    import torch

    from opensora_lite.cli.sample import sample
    from opensora_lite.data.synthetic import COLOURS, DIRECTIONS, caption_for
    from opensora_lite.data.video import decode_window, probe
    from opensora_lite.eval import shapes as ev

    torch.set_num_threads(threads)
    targets = ev.eval_prompts(None, 1)  # 24 colour x direction prompts, shapes as the evaluator assigns them
    assert len(targets) == len(COLOURS) * len(DIRECTIONS)
    out = stage_dir / f"probe_speed_cfg{cfg or 4.0:g}_steps{num_steps or 16}_n{samples}"
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for t in targets:
        for speed in (ev.SLOW, ev.FAST):
            rows.append(dict(t, speed=speed, caption=caption_for(t["colour"], t["shape"], t["direction"], speed)))
    prompts = out / "prompts.txt"
    out.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(r["caption"] for r in rows) + "\n")
    args = [f"checkpoint={stage_dir}", f"prompt_file={prompts}", f"num_samples={samples}", "seed=0", f"out={out}/s"]
    args += [f"num_steps={num_steps or 16}", f"cfg_scale={cfg or 4.0}"]
    with contextlib.redirect_stdout(io.StringIO()):
        sample(compose(args, "sample"))
    written = json.loads((out / "s" / "samples.json").read_text())
    _, h, w = written["frames_height_width"]
    by_caption = {r["caption"]: r for r in rows}
    clips = []
    for s in written["samples"]:
        data = Path(s["video"]).read_bytes()
        frames = decode_window(data, 0, probe(data).num_frames, 1, (h, w))
        reading = ev.read_clip(frames, fps=written["fps"])
        r = by_caption[s["prompt"]]
        clips.append(dict(r, seed=s["seed"], value=reading.speed_value, read=reading.speed, dir_read=reading.direction))
    return summarise(clips)


def summarise(clips: list[dict]) -> dict:
    from opensora_lite.eval import shapes as ev

    slow = np.array([c["value"] for c in clips if c["speed"] == ev.SLOW])
    fast = np.array([c["value"] for c in clips if c["speed"] == ev.FAST])
    pairs = {}
    for c in clips:
        pairs.setdefault((c["colour"], c["direction"], c["seed"]), {})[c["speed"]] = c["value"]
    diff = np.array([p[ev.FAST] - p[ev.SLOW] for p in pairs.values()])
    values = np.concatenate([slow, fast])
    labels = np.concatenate([np.zeros(len(slow)), np.ones(len(fast))])
    best = max(((values >= th) == labels).mean() for th in np.unique(values))
    acc = np.mean([c["read"] == c["speed"] for c in clips])
    by_dir = {}
    for d in sorted({c["direction"] for c in clips}):
        s = [c["value"] for c in clips if c["direction"] == d and c["speed"] == ev.SLOW]
        f = [c["value"] for c in clips if c["direction"] == d and c["speed"] == ev.FAST]
        by_dir[d] = (float(np.mean(s)), float(np.mean(f)))
    return {
        "clips": len(clips),
        "slow_mean": float(slow.mean()),
        "slow_quartiles": [float(q) for q in np.percentile(slow, [25, 50, 75])],
        "fast_mean": float(fast.mean()),
        "fast_quartiles": [float(q) for q in np.percentile(fast, [25, 50, 75])],
        "paired_diff_mean": float(diff.mean()),
        "paired_fast_gt_slow": float((diff > 0).mean()),
        "speed_acc": float(acc),
        "speed_acc_best_threshold": float(best),
        "static": float(np.mean([c["dir_read"] == "static" for c in clips])),
        "direction_acc": float(np.mean([c["dir_read"] == c["direction"] for c in clips])),
        "by_direction_slow_fast": by_dir,
        "threshold": ev.SPEED_MIDPOINT,
        "data_speeds": dict(ev.SPEEDS),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="+", type=Path, help="stage folders of a run (runs/<run>/<stage>)")
    p.add_argument("--samples", type=int, default=2, help="seeds per caption")
    p.add_argument("--num-steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    for stage in a.stages:
        result = probe(stage, a.samples, a.num_steps, a.cfg, a.threads)
        print(f"== {stage}")
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
