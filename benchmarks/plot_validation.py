#!/usr/bin/env python3
"""Validation curves from a run's metrics.jsonl (`stage.validate_every`), drawn into a PNG, no plotting
library needed (Pillow). One panel per metric, x = global step, stages in turn with a vertical line
at each stage boundary; also prints the points as a table.

    python3 -m benchmarks.plot_validation runs/tiny_cpu/metrics.jsonl --out validation.png
    python3 -m benchmarks.plot_validation runs/tiny_cpu/metrics.jsonl --metrics colour_acc direction_acc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def read_points(
    path: Path, metrics: list[str]
) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, str]], int]:
    """(metric -> [(global step, value)], [(first global step, stage)], last global step) from metrics.jsonl."""
    points: dict[str, list[tuple[int, float]]] = {m: [] for m in metrics}
    stages: list[tuple[int, str]] = []
    last = 1
    for line in path.read_text().splitlines():
        row = json.loads(line)
        last = max(last, row.get("global_step", 0))
        if row.get("stage") and (not stages or stages[-1][1] != row["stage"]):
            stages.append((row["global_step"], row["stage"]))
        for m in metrics:
            v = row.get(f"val/{m}")
            if isinstance(v, (int, float)) and "event" not in row:
                points[m].append((row["global_step"], float(v)))
    return points, stages, last


def draw(points: dict, stages: list, last: int, out: Path, width: int = 900, panel_h: int = 220) -> None:
    font = ImageFont.load_default()
    names = [m for m, p in points.items() if p]
    img = Image.new("RGB", (width, panel_h * len(names) + 10), "white")
    d = ImageDraw.Draw(img)
    left, right = 60, width - 50
    for i, name in enumerate(names):
        top, bottom = i * panel_h + 25, (i + 1) * panel_h - 25
        d.rectangle([left, top, right, bottom], outline=(120, 120, 120))
        d.text((left, top - 18), f"val/{name}", fill="black", font=font)
        for v in (0.0, 0.5, 1.0):  # the Shapes metrics are fractions
            y = bottom - v * (bottom - top)
            d.line([left - 4, y, left, y], fill="black")
            d.text((left - 30, y - 6), f"{v:.1f}", fill="black", font=font)
        for start, stage in stages:
            x = left + start / last * (right - left)
            d.line([x, top, x, bottom], fill=(200, 200, 200))
            d.text((x + 3, bottom + 3), stage, fill=(100, 100, 100), font=font)
        xy = [(left + s / last * (right - left), bottom - min(max(v, 0), 1) * (bottom - top)) for s, v in points[name]]
        colour = COLOURS[i % len(COLOURS)]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics_jsonl", type=Path)
    ap.add_argument("--out", type=Path, default=Path("validation.png"))
    ap.add_argument("--metrics", nargs="+", default=["colour_acc", "direction_acc", "i2v_colour_keep"])
    args = ap.parse_args()
    points, stages, last = read_points(args.metrics_jsonl, args.metrics)
    if not any(points.values()):
        raise SystemExit(f"error: no val/* metrics in {args.metrics_jsonl} (was stage.validate_every set?)")
    draw(points, stages, last, args.out)
    steps = sorted({s for p in points.values() for s, _ in p})
    print("global_step  " + "  ".join(f"{m:>16}" for m in args.metrics))
    for s in steps:
        vals = [dict(points[m]).get(s) for m in args.metrics]
        print(f"{s:>11}  " + "  ".join(f"{v:>16.3f}" if v is not None else f"{'':>16}" for v in vals))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
