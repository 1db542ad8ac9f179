"""The plan as a console table, markdown or json."""

from __future__ import annotations

import json

from opensora_lite.plan import Plan
from opensora_lite.plan.memory import GIB


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _tflop(x: float) -> str:
    return _num(x / 1e12)


STAGE_COLS = [
    "stage", "GPUs", "engine", "steps", "samples/step", "tokens/step", "TFLOP/GPU-step", "HW TFLOP",
    "step s", "GPU-days", "cost $", "clips", "epochs", "MFU", "peak GiB", "fits",
]  # fmt: skip
TIGHT = 0.9  # above this share of the usable memory a bucket is marked tight (the model's tolerance)
BUCKET_COLS = ["bucket", "share", "batch", "tokens/sample", "TFLOP/sample", "step s", "GiB/GPU", "fits / lever"]


def stage_rows(plan: Plan) -> list[list[str]]:
    rows = []
    for s in plan.stages:
        c, big = s.cost, s.largest
        bad = sum(not m.fits for m in s.memory)
        rows.append(
            [
                c.name,
                f"{c.gpus} ({c.dp_size}x{c.sp_size})" if c.sp_size > 1 else str(c.gpus),
                s.engine,
                f"{c.steps:,}",
                f"{c.samples_per_step:,.0f}",
                _si(c.tokens_per_step),
                _tflop(c.model_flops_per_gpu_step),
                _tflop(c.hardware_flops_per_gpu_step),
                f"{c.step_seconds:.3g}",
                _num(c.gpu_days),
                _num(c.cost),
                _si(c.clips_seen),
                f"{c.epochs:.2f}" if c.epochs is not None else "-",
                f"{c.mfu:.1%}",
                f"{big.total / GIB:.0f}/{big.capacity / GIB:.0f}",
                (f"NO: {bad} bucket(s)" if bad else "tight" if big.total > TIGHT * big.capacity else "yes"),
            ]
        )
    rows.append(["total", "", "", "", "", "", "", "", "", _num(plan.gpu_days), _num(plan.cost)] + [""] * 5)
    return rows


def bucket_rows(stage) -> list[list[str]]:
    rows = []
    for b, m in zip(stage.cost.buckets, stage.memory):
        lever = ("tight" if m.total > TIGHT * m.capacity else "yes") if m.fits else "NO -> " + "; ".join(m.levers)
        rows.append(
            [
                b.bucket.key,
                f"{b.share:.1%}",
                str(b.bucket.batch_size),
                f"{b.tokens:,} + {b.text_tokens}" + (f" + {b.audio_tokens} audio" if b.audio_tokens else ""),
                _tflop(b.model_flops),
                f"{b.step_seconds:.3g}",
                f"{m.total / GIB:.1f}",
                lever,
            ]
        )
    return rows


def reference_rows(plan: Plan) -> list[list[str]]:
    rows = []
    for s in plan.stages:
        c = s.cost
        if c.reference_gpu_days:
            clips = f"{_si(c.reference_clips)}" if c.reference_clips else "-"
            rows.append([c.name, f"{c.reference_gpu_days:,.0f}", f"{c.implied_mfu:.1%}", clips, _si(c.clips_seen)])
    return rows


REFERENCE_COLS = ["stage", "published GPU-days", "implied MFU", "published clips", "planned clips"]


def _text_table(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def _md_table(cols: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def header(plan: Plan) -> str:
    g = plan.gpu
    head = f"plan {plan.label}: {g.name} ({g.peak_tflops:g} TFLOP/s, {g.memory_gib:.0f} GiB), MFU {plan.mfu_source}"
    return head + f"; text encoders {plan.text_encoders}"


def render(plans: list[Plan], fmt: str, buckets: bool = True) -> str:
    if fmt == "json":
        return json.dumps([as_dict(p) for p in plans], indent=1)
    table = _md_table if fmt == "markdown" else _text_table
    parts = []
    for k, plan in enumerate(plans):
        parts.append(("### " if fmt == "markdown" else "") + header(plan))
        parts.append(table(STAGE_COLS, stage_rows(plan)))
        if k == 0 and (ref := reference_rows(plan)):  # the published figures belong to the base plan
            parts.append(table(REFERENCE_COLS, ref))
        for s in plan.stages:
            ac = "AC " + (", ".join(f"{n} {group}" for group, n in s.ac.items()) or "off")
            parts.append(f"{s.cost.name}: mix {s.mix_note}; autoencoder {s.autoencoder}; {ac}")
            if buckets:
                parts.append(table(BUCKET_COLS, bucket_rows(s)))
    if len(plans) > 1:
        rows = [[p.label, _num(p.gpu_days), _num(p.cost)] + [_num(s.cost.gpu_days) for s in p.stages] for p in plans]
        cols = ["plan", "GPU-days", "cost $"] + [s.cost.name for s in plans[0].stages]
        parts.append(("### comparison\n" if fmt == "markdown" else "comparison\n") + table(cols, rows))
    return "\n\n".join(parts)


def as_dict(plan: Plan) -> dict:
    stages = []
    for s in plan.stages:
        c = s.cost
        stages.append(
            {
                "stage": c.name, "gpus": c.gpus, "dp_size": c.dp_size, "sp_size": c.sp_size, "engine": s.engine,
                "steps": c.steps, "samples_per_step": c.samples_per_step, "tokens_per_step": c.tokens_per_step,
                "model_flops_per_gpu_step": c.model_flops_per_gpu_step,
                "hardware_flops_per_gpu_step": c.hardware_flops_per_gpu_step, "step_seconds": c.step_seconds,
                "gpu_days": c.gpu_days, "cost": c.cost, "clips_seen": c.clips_seen, "epochs": c.epochs,
                "mfu": c.mfu, "implied_mfu": c.implied_mfu, "reference_gpu_days": c.reference_gpu_days,
                "mix": s.mix_note, "autoencoder": s.autoencoder, "ac": dict(s.ac),
                "buckets": [
                    {
                        "bucket": b.bucket.key, "share": b.share, "batch_size": b.bucket.batch_size,
                        "tokens": b.tokens, "text_tokens": b.text_tokens, "audio_tokens": b.audio_tokens,
                        "model_flops": b.model_flops,
                        "hardware_flops": b.hardware_flops, "step_seconds": b.step_seconds,
                        "memory_gib": {k: getattr(m, k) / GIB for k in (
                            "params", "grads", "optimizer", "working", "activations", "encoders", "reserved", "total",
                            "capacity")},
                        "fits": m.fits, "levers": m.levers,
                    }
                    for b, m in zip(c.buckets, s.memory)
                ],
            }
        )  # fmt: skip
    g = plan.gpu
    return {
        "label": plan.label, "gpu": g.name, "peak_tflops": g.peak_tflops, "memory_gib": g.memory_gib,
        "mfu_source": plan.mfu_source, "gpu_days": plan.gpu_days, "cost": plan.cost, "stages": stages,
    }  # fmt: skip
