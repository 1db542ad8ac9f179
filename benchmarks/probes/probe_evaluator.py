"""Probe: how often does the Shapes evaluator read real clips right? Colour, direction, speed and shape
of real rendered clips (every colour, shape, speed and direction, drawn at random), through H.264 and back
as the evaluation's 5 frames at 8 fps, at 16 and 24 px, as rendered and faded (mixed 40% with grey, then
darkened to 60%: what a generated shape does to its colour). The figures in docs/tiny-curriculum.md
("The evaluator") come from here; tests/test_shapes_data.py pins them on 96 clips.

    python -m benchmarks.probes.probe_evaluator --clips 700
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from opensora_lite.data.synthetic import ALL_COLOURS, SPEEDS, ShapesConfig, render_clip
from opensora_lite.data.video import decode_window, encode_mp4
from opensora_lite.eval.shapes import read_clip

KEYS = ("colour", "direction", "speed", "shape")


def fade(clip: np.ndarray) -> np.ndarray:
    return (0.6 * (0.6 * clip.astype(np.float32) + 0.4 * 110.0)).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=700)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    began = time.perf_counter()
    cfg = ShapesConfig(colours=list(ALL_COLOURS), sizes=[[64, 64]], fps=[8.0])
    rng = np.random.default_rng(a.seed)
    clips, targets = {16: [], 24: []}, []
    while len(targets) < a.clips:
        frames, meta = render_clip(rng, cfg)
        if meta["num_frames"] < 5:  # the evaluation reads 5 frames
            continue
        mp4 = encode_mp4(frames, meta["fps"])
        for px in clips:
            clips[px].append(decode_window(mp4, 0, 5, 1, (px, px)))
        targets.append(meta)
    print(f"{a.clips} clips (seed {a.seed}), {time.perf_counter() - began:.0f} s to render, encode and decode")
    print(f"{'px':>3} {'variant':<9} " + " ".join(f"{k:>9}" for k in KEYS) + "  speed error (median / max)")
    for px, variants in clips.items():
        for name, variant in (("rendered", variants), ("faded", [fade(c) for c in variants])):
            readings = [read_clip(c, list(ALL_COLOURS), fps=8.0) for c in variant]
            acc = [np.mean([getattr(r, k) == t[k] for r, t in zip(readings, targets)]) for k in KEYS]
            error = [abs(r.speed_value / SPEEDS[t["speed"]] - 1) for r, t in zip(readings, targets)]
            figures = " ".join(f"{v:>9.3f}" for v in acc)
            print(f"{px:>3} {name:<9} {figures}  {np.median(error):.3f} / {max(error):.3f}")
    print(f"{time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
