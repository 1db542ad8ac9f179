"""A PNG of a plan, drawn with Pillow (a core dependency): GPU-days per stage for each compared plan,
and memory per GPU of every bucket of the first plan against the GPU's capacity."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from opensora_lite.plan import Plan
from opensora_lite.plan.memory import GIB

COLOURS = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123), (164, 0, 0), (196, 160, 0)]
W, H, PAD = 1400, 620, 60
LEGEND = 22  # pixels per legend row


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _axes(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], top: float, label: str, font) -> None:
    x0, y0, x1, y1 = box
    d.line([(x0, y0), (x0, y1), (x1, y1)], fill="black", width=2)
    for i in range(5):
        v = top * i / 4
        y = y1 - (y1 - y0) * i / 4
        d.line([(x0 - 5, y), (x1, y)], fill=(225, 225, 225))
        d.text((x0 - 8, y), f"{v:,.0f}", fill="black", font=font, anchor="rm")
    d.text((x0, y0 - 22), label, fill="black", font=font)


def write_chart(plans: list[Plan], path: str | Path) -> Path:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    # left: GPU-days per stage, one bar per plan
    box = (PAD + 20, PAD, W // 2 - 30, H - PAD - 30 - LEGEND * len(plans))
    stages = [s.cost.name for s in plans[0].stages]
    top = max(s.cost.gpu_days for p in plans for s in p.stages) * 1.1 or 1.0
    _axes(d, box, top, "GPU-days per stage", font)
    group = (box[2] - box[0]) / max(1, len(stages))
    bar = group * 0.8 / len(plans)
    for j, p in enumerate(plans):
        for i, s in enumerate(p.stages):
            x = box[0] + i * group + group * 0.1 + j * bar
            y = box[3] - (box[3] - box[1]) * s.cost.gpu_days / top
            d.rectangle([x, y, x + bar - 2, box[3]], fill=COLOURS[j % len(COLOURS)])
            d.text((x + bar / 2, y - 3), f"{s.cost.gpu_days:,.0f}", fill="black", font=small, anchor="md")
    for i, name in enumerate(stages):
        d.text((box[0] + (i + 0.5) * group, box[3] + 8), name, fill="black", font=small, anchor="ma")
    for j, p in enumerate(plans):
        y = box[3] + 30 + j * LEGEND
        x = box[0]
        d.rectangle([x, y, x + 14, y + 14], fill=COLOURS[j % len(COLOURS)])
        d.text((x + 20, y), f"{p.label}: {p.gpu_days:,.0f} d, ${p.cost / 1e3:,.0f}k", fill="black", font=small)
    # right: memory per GPU of every bucket (first plan) against capacity
    plan = plans[0]
    box = (W // 2 + 60, PAD, W - 30, H - PAD - 30 - LEGEND * len(plans))
    mems = [(s.cost.name, i, m) for i, s in enumerate(plan.stages) for m in s.memory]
    cap = plan.gpu.memory_gib
    top = max([m.total / GIB for _, _, m in mems] + [cap]) * 1.1
    _axes(d, box, top, f"memory per GPU, GiB ({plan.label}, each bucket)", font)
    width = (box[2] - box[0]) / max(1, len(mems))
    for k, (_, i, m) in enumerate(mems):
        x = box[0] + k * width
        y = box[3] - (box[3] - box[1]) * (m.total / GIB) / top
        colour = ((90, 90, 90) if i % 2 == 0 else (150, 150, 150)) if m.fits else (220, 30, 30)
        d.rectangle([x, y, x + max(1, width - 1), box[3]], fill=colour)
    usable = mems[0][2].capacity / GIB if mems else cap
    for value, text in ((cap, f"{plan.gpu.name} {cap:.0f} GiB"), (usable, f"usable {usable:.0f} GiB (less headroom)")):
        y = box[3] - (box[3] - box[1]) * value / top
        d.line([(box[0], y), (box[2], y)], fill=(220, 30, 30), width=2 if value == cap else 1)
        d.text(
            (box[2], y - 4 if value == cap else y + 4),
            text,
            fill=(220, 30, 30),
            font=small,
            anchor="rd" if value == cap else "ra",
        )
    start = 0
    for s in plan.stages:
        n = len(s.memory)
        d.text((box[0] + (start + n / 2) * width, box[3] + 8), s.cost.name, fill="black", font=small, anchor="ma")
        start += n
    d.text((box[0], box[3] + 30), "grey: fits; red: does not fit", fill=(220, 30, 30), font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
