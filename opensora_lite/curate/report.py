"""The curation report: per stage the clips in and out (a table, logged and in report/table.md), one PNG of
every thresholded score's histogram with its bounds drawn (report/histograms.png), and a contact sheet of
dropped examples per reason (report/dropped_<reason>.png)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from opensora_lite.eval.contact_sheet import save_contact_sheet

PANEL_W, PANEL_H, PAD, BINS = 520, 260, 40, 30
MOTION = ("flow", "motion_score", "vmaf_motion")  # drawn side by side whichever one the bounds apply to


def stage_table(rows: list[dict], stages: list[str], sources: int) -> list[dict]:
    """[{stage, in, out, dropped}] in pipeline order: `read` counts sources, the rest count clips; a clip
    is counted at the first stage that dropped it."""
    dropped: dict[str, int] = {}
    for r in rows:
        if not r["kept"]:
            dropped[r["stage"]] = dropped.get(r["stage"], 0) + 1
    unreadable = dropped.pop("read", 0)
    clips = sum(1 for r in rows if r["stage"] != "read")
    table = [dict(stage="read+split", **{"in": sources, "out": clips, "dropped": unreadable})]
    left = clips
    for name in stages:
        if name == "split":
            continue
        d = dropped.get(name, 0)
        table.append(dict(stage=name, **{"in": left, "out": left - d, "dropped": d}))
        left -= d
    return table


def table_lines(table: list[dict]) -> list[str]:
    lines = ["| stage | in | out | dropped |", "|---|---|---|---|"]
    return lines + [f"| {t['stage']} | {t['in']} | {t['out']} | {t['dropped']} |" for t in table]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def histograms(rows: list[dict], limits: dict[str, tuple], path: Path) -> Path | None:
    """One panel per thresholded score: a histogram of every clip that has it, bounds in red."""
    panels = []
    for name, (lo, hi) in limits.items():
        if lo is None and hi is None and name not in MOTION:
            continue
        values = np.array([r["scores"][name] for r in rows if isinstance(r.get("scores", {}).get(name), (int, float))])
        if len(values):
            panels.append((name, lo, hi, values.astype(float)))
    if not panels:
        return None
    cols = 2
    rows_n = math.ceil(len(panels) / cols)
    image = Image.new("RGB", (cols * PANEL_W, rows_n * PANEL_H), "white")
    draw, font = ImageDraw.Draw(image), _font(13)
    for i, (name, lo, hi, values) in enumerate(panels):
        x0, y0 = (i % cols) * PANEL_W + PAD, (i // cols) * PANEL_H + PAD
        w, h = PANEL_W - 2 * PAD, PANEL_H - 2 * PAD
        marks = [v for v in (lo, hi) if v is not None]
        a, b = min([values.min(), *marks]), max([values.max(), *marks])
        if b - a < 1e-9:
            a, b = a - 0.5, b + 0.5
        counts, edges = np.histogram(values, bins=BINS, range=(a, b))
        top = max(1, counts.max())
        for c, (e0, e1) in zip(counts, zip(edges[:-1], edges[1:])):
            px0, px1 = x0 + (e0 - a) / (b - a) * w, x0 + (e1 - a) / (b - a) * w
            draw.rectangle([px0, y0 + h - c / top * h, max(px0, px1 - 1), y0 + h], fill=(52, 101, 164))
        draw.line([(x0, y0 + h), (x0 + w, y0 + h)], fill="black")
        for v in marks:
            px = x0 + (v - a) / (b - a) * w
            draw.line([(px, y0 - 6), (px, y0 + h)], fill=(204, 0, 0), width=2)
        bounds = "".join(f"; {k} {v:g}" for k, v in (("min", lo), ("max", hi)) if v is not None)
        draw.text((x0, y0 - 30), f"{name} ({len(values)} clips{bounds})", fill="black", font=font)
        draw.text((x0, y0 + h + 4), f"{a:.3g}", fill="black", font=font)
        draw.text((x0 + w - 40, y0 + h + 4), f"{b:.3g}", fill="black", font=font)
        draw.text((x0 - 30, y0), str(top), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def contact_sheets(examples: dict[str, list[tuple[str, np.ndarray]]], folder: Path) -> list[Path]:
    """report/dropped_<reason>.png: a row per dropped example (its sampled frames), labelled key: detail."""
    out = []
    for reason, items in sorted(examples.items()):
        if not items:
            continue
        t = max(len(v) for _, v in items)
        clips = [np.concatenate([v, np.repeat(v[-1:], t - len(v), 0)]) for _, v in items]
        out.append(save_contact_sheet(folder / f"dropped_{reason}.png", clips, [k for k, _ in items], scale=2))
    return out


def write_report(rows: list[dict], stages, names: list[str], sources: int, examples: dict, folder: Path) -> dict:
    """Every part of the report into `folder`; the summary (also report/summary.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = stage_table(rows, names, sources)
    limits = {k: v for s in stages for k, v in s.limits().items()}
    hist = histograms(rows, limits, folder / "histograms.png")
    sheets = contact_sheets(examples, folder)
    kept = sum(1 for r in rows if r["kept"])
    clips = sum(1 for r in rows if r["stage"] != "read")
    summary = dict(sources=sources, clips=clips, kept=kept, stages=table,
                   histograms=str(hist) if hist else None, sheets=[str(p) for p in sheets])  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "table.md").write_text("\n".join(table_lines(table)) + "\n")
    return summary
